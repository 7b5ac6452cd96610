"""Recipes (sdpsfnet/training/config.py): which hyper-parameters each model trains with, the switch
to SD-PSFNet's recipe, the exponential schedule, mixed precision, parameter groups, the recipes
table of docs/training.md against the code, and a short run of MSPFN's recipe through the trainer."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from psfops.nn import DynamicPSF
from sdpsfnet import build_model
from sdpsfnet.training import make_config, train
from sdpsfnet.training.checkpoint import load_checkpoint
from sdpsfnet.training.config import PRESETS, RECIPES
from sdpsfnet.training.optim import OPTIMIZERS, amp_settings, make_scheduler, param_groups
from trainer_scaffold import Pairs, val_pairs

MSPFN_CODE = dict(optimizer="adam", lr=5e-4, weight_decay=0.0, schedule="exponential", lr_decay=0.8,
                  lr_decay_steps=20000, min_lr=1e-6, warmup_epochs=0.0, clip=None, amp="off",
                  crop=96, batch_size=12, epochs=50, loss="mspfn")
SDPSFNET_PAPER = dict(optimizer="adamw", lr=1e-4, schedule="cosine", warmup_epochs=3.0, min_lr=1e-6,
                      clip=2.0, amp="auto", crop=128, epochs=2000, loss="sdpsfnet")


def _sci(x: float) -> str:
    """1e-4 as the docs write it (not 0.0001 or 1e-04)."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.0e}").replace("e+", "e")


def _doc_phrases(r: dict) -> dict[str, list[str]]:
    """What the recipes table of docs/training.md must say in each row for the recipe ``r`` (each
    phrase as whole words: "Adam" does not match "AdamW")."""
    decay = f"weight decay {_sci(r['weight_decay'])}" if r["weight_decay"] else "no weight decay"
    if r["schedule"] == "cosine":
        schedule = [f"{r['warmup_epochs']:g}-epoch linear warmup, cosine to {_sci(r['min_lr'])}"]
    else:
        schedule = [f"{_sci(r['lr'])} · {r['lr_decay']:g}^(step/{r['lr_decay_steps']}) + {_sci(r['min_lr'])}"]
        schedule += ["no warmup"] if not r["warmup_epochs"] else []
    return {"optimizer": [OPTIMIZERS[r["optimizer"]].__name__, f"lr {_sci(r['lr'])}", decay],
            "schedule": schedule,
            "precision": {"auto": ["fp16", "(`--amp auto`)", "float32 on the CPU"], "off": ["float32"]}[r["amp"]],
            "clipping": [f"global norm {r['clip']}" if r["clip"] else "none"],
            "data": [f"{r['crop']}x{r['crop']} crops, batch {r['batch_size']}"],
            "length": [f"{r['epochs']} epochs"]}


def test_recipes_table_in_the_docs_matches_the_code():
    """docs/training.md's recipes table states every recipe's values as RECIPES holds them (one
    column per recipe, named by its model family), and the tiny preset's as PRESETS does."""
    text = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| |")]
    assert len(lines) == 1, "one recipes table, its header row starting with '| |'"
    table = text[text.index(lines[0]):].split("\n\n")[0].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")][1:]
    columns = [re.search(r"`(\w+)\*`", h).group(1) for h in header]
    assert sorted(columns) == sorted(RECIPES)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    for i, recipe in enumerate(columns):
        for row, phrases in _doc_phrases(RECIPES[recipe]).items():
            for phrase in phrases:
                assert re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", rows[row][i]), (recipe, row, phrase)
    tiny = PRESETS["tiny"]
    assert (f"{tiny['crop']}x{tiny['crop']} crops, batch {tiny['batch_size']}, {tiny['steps']} steps, a peak lr "
            f"of {_sci(tiny['lr'])}") in " ".join(text.split())


def _fields(cfg, names):
    return {k: getattr(cfg, k) for k in names}


def test_mspfn_paper_preset_is_the_authors_recipe():
    cfg = make_config("mspfn", "paper")
    assert (cfg.model, cfg.recipe) == ("mspfn", "mspfn")
    assert _fields(cfg, MSPFN_CODE) == MSPFN_CODE
    assert make_config("mspfn", "paper", steps=3).to_dict()["lr"] == 5e-4


def test_sdpsfnet_paper_preset_is_the_papers_recipe():
    for model in ("sdpsfnet", "sdpsfnet-tau0"):
        cfg = make_config(model, "paper")
        assert cfg.recipe == "sdpsfnet" and _fields(cfg, SDPSFNET_PAPER) == SDPSFNET_PAPER


def test_recipe_switch_trains_mspfn_like_sdpsfnet():
    cfg = make_config("mspfn", "paper", recipe="sdpsfnet")
    assert (cfg.model, cfg.recipe) == ("mspfn", "sdpsfnet")
    assert _fields(cfg, SDPSFNET_PAPER) == SDPSFNET_PAPER
    with pytest.raises(ValueError, match="recipe"):
        make_config("mspfn", recipe="nope")


def test_tiny_preset_keeps_each_models_recipe():
    m, s = make_config("mspfn", "tiny"), make_config("sdpsfnet", "tiny")
    assert (m.model, m.optimizer, m.loss, m.schedule) == ("mspfn-tiny", "adam", "mspfn", "exponential")
    assert (s.model, s.optimizer, s.loss, s.schedule) == ("tiny", "adamw", "sdpsfnet", "cosine")
    assert m.steps == s.steps == 200 and m.crop == s.crop == 64 and m.lr == s.lr == 1e-3
    assert make_config("mspfn", "tiny", lr=3e-4, batch_size=2).lr == 3e-4  # options override


def test_bad_recipe_fields_name_the_field():
    from sdpsfnet.training import TrainConfig
    for field in ("optimizer", "schedule", "loss"):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: "sgd?"})


def test_exponential_schedule_is_the_authors_decay():
    """lr * decay**(s / decay_steps) + min_lr, smooth (TensorFlow's staircase=False)."""
    lr, floor, every = 5e-4, 1e-6, 10
    opt = torch.optim.Adam([nn.Parameter(torch.randn(2))], lr=lr)
    sched = make_scheduler(opt, 100, 0, floor, "exponential", 0.8, every)
    lrs = []
    for _ in range(35):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([lr * 0.8 ** (s / every) + floor for s in range(35)], rel=1e-9)


def test_exponential_schedule_after_warmup_and_per_group_lr():
    opt = torch.optim.Adam([{"params": [nn.Parameter(torch.randn(2))]},
                            {"params": [nn.Parameter(torch.randn(2))], "lr": 1e-2}], lr=1e-3)
    sched = make_scheduler(opt, 100, 4, 1e-6, "exponential", 0.5, 2)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for s in range(4, 10):
        for got, base in zip(lrs[s], (1e-3, 1e-2)):
            assert got == pytest.approx(base * 0.5 ** ((s - 4) / 2) + 1e-6, rel=1e-9)
    assert lrs[0][0] == pytest.approx(1e-6)  # warmup starts at 1e-3 x lr


def test_amp_auto_is_the_papers_fp16_on_cuda_and_off_on_cpu():
    assert amp_settings(torch.device("cuda"), "auto") == torch.float16
    assert amp_settings(torch.device("cpu"), "auto") is None
    assert amp_settings(torch.device("cuda"), "bf16") == torch.bfloat16
    assert amp_settings(torch.device("cuda"), "off") is None


def test_param_groups_spare_the_psf_basis_and_1d_parameters():
    model = build_model("tiny")
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    bases = [m.basis for m in model.modules() if isinstance(m, DynamicPSF)]
    assert bases and all(id(b) in ids for b in bases)
    for name, p in model.named_parameters():
        assert (id(p) in ids) == (p.ndim < 2 or name.endswith("dynamic_psf.basis")), name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_mspfn_recipe_runs_through_the_trainer(tmp_path, monkeypatch):
    """The trainer takes the optimizer, schedule, clipping and loss from the config: Adam at
    5e-4 + 1e-6 from the first step, MSPFN's loss, no clipping; the checkpoint's config says so."""
    from sdpsfnet.training.losses import MSPFNLoss

    calls = []
    real = MSPFNLoss.term
    monkeypatch.setattr(MSPFNLoss, "term", lambda self, o, t: calls.append(1) or real(self, o, t))
    cfg = make_config("mspfn-tiny", "paper", steps=2, batch_size=2, crop=16, val_size=1,
                      out=str(tmp_path), progress=False)
    train(cfg, train_set=Pairs(4, 16, 16, seed=0), val_set=val_pairs())
    ck = load_checkpoint(tmp_path / "last.pt")
    assert {k: ck["config"][k] for k in ("optimizer", "lr", "batch_size", "crop", "loss", "clip")} == \
        {"optimizer": "adam", "lr": 5e-4, "batch_size": 2, "crop": 16, "loss": "mspfn", "clip": None}
    assert len(calls) == 2
    assert all(not g.get("decoupled_weight_decay", False) and g["weight_decay"] == 0
               for g in ck["optimizer"]["param_groups"])
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["lr"]]
    assert float(rows[0]["lr"]) == pytest.approx(5e-4 + 1e-6)
    assert float(rows[1]["lr"]) == pytest.approx(5e-4 * 0.8 ** (1 / 20000) + 1e-6)
    assert all(math.isfinite(float(r["grad_norm"])) for r in rows)


def test_cli_dumps_the_resolved_config(monkeypatch, capsys):
    """`sdpsfnet train --model mspfn --preset paper --steps 3` prints the authors' hyper-parameters
    (the training itself is stubbed out here; the real run is minutes of CPU)."""
    import json

    import sdpsfnet.training.loop
    from sdpsfnet.cli import main

    class Stop(Exception):
        pass

    seen = []

    def stub(cfg, **kw):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(sdpsfnet.training.loop, "train", stub)
    with pytest.raises(Stop):
        main(["train", "--model", "mspfn", "--preset", "paper", "--steps", "3", "--no-progress"])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("config: "))
    dumped = json.loads(line[len("config: "):])
    assert dumped == seen[0].to_dict()
    assert {k: dumped[k] for k in MSPFN_CODE if k != "epochs"} == {k: v for k, v in MSPFN_CODE.items() if k != "epochs"}
    assert dumped["steps"] == 3 and dumped["epochs"] is None and dumped["model"] == "mspfn"


def test_exponential_schedule_resumes_on_the_same_curve(tmp_path):
    """A run of MSPFN's recipe (with a warmup step here) stopped after step 5 and resumed ends
    where the straight run ends: the SequentialLR/LambdaLR state round-trips the checkpoint."""
    def cfg(out, **kw):
        return make_config("mspfn-tiny", "paper", steps=10, batch_size=2, crop=16, val_size=1, out=str(out),
                           progress=False, warmup_epochs=1.0, lr_decay_steps=2, **kw)

    train(cfg(tmp_path / "a"), train_set=Pairs(4, 16, 16, seed=0), val_set=val_pairs())
    train(cfg(tmp_path / "b", stop_at=5), train_set=Pairs(4, 16, 16, seed=0), val_set=val_pairs())
    train(cfg(tmp_path / "b"), resume=str(tmp_path / "b" / "last.pt"), train_set=Pairs(4, 16, 16, seed=0), val_set=val_pairs())
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    def lrs(out):
        with open(out / "metrics.csv") as f:
            return [float(r["lr"]) for r in csv.DictReader(f) if r["lr"]]
    assert lrs(tmp_path / "a") == lrs(tmp_path / "b")
    # 2 steps per epoch: warmup min(2, 10 // 10) = 1 step from 1e-3 x lr, then the decay from s = 0
    expect = [5e-4 * 1e-3] + [5e-4 * 0.8 ** (s / 2) + 1e-6 for s in range(9)]
    assert lrs(tmp_path / "a") == pytest.approx(expect, rel=1e-5)  # the csv keeps 6 digits
