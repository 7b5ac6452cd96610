"""Trainer and checkpoints: bitwise resume, checkpoint contents, atomic writes, NaN guard, the
learning-rate schedule, presets and 2-process DDP (gloo). Small stand-in model and data: these
test the training machinery, not a model."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from sdpsfnet.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sdpsfnet.training import TrainingDiverged, make_config, train
from trainer_scaffold import Pairs, Standin, config as _cfg, rows as _rows, run as _run, val_pairs


def test_resume_is_bitwise(tmp_path):
    # 5 items, batch 2 -> 2 steps per epoch; stopping at step 5 is mid-epoch and after warmup.
    _run(_cfg(tmp_path / "straight"))
    _run(_cfg(tmp_path / "half", stop_at=5))
    assert load_checkpoint(tmp_path / "half" / "last.pt")["step"] == 5
    summary = _run(_cfg(tmp_path / "half"), resume=str(tmp_path / "half" / "last.pt"))
    assert summary["start_step"] == 5 and summary["step"] == 12
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "half" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    # The logged curve continues: same losses and learning rates, step by step, no duplicate rows.
    ra, rb = _rows(tmp_path / "straight"), _rows(tmp_path / "half")
    assert [r["step"] for r in rb] == [str(i) for i in range(0, 13)]  # 0: validation before training
    assert [(r["loss"], r["lr"]) for r in ra] == [(r["loss"], r["lr"]) for r in rb]
    # A resume that skipped the RNG restore would draw other crops: check the test can tell.
    assert len({r["loss"] for r in ra if r["loss"]}) == 12


def test_checkpoint_contents_and_rebuild(tmp_path):
    _run(_cfg(tmp_path, steps=4))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)  # plain data only, no pickled code
    assert {"model", "optimizer", "scheduler", "scaler", "step", "config", "rng", "build_spec"} <= set(ck)
    assert ck["step"] == 4 and ck["config"]["steps"] == 4 and ck["build_spec"]["name"] == "_standin"
    assert {"torch", "cuda", "numpy", "python"} <= set(ck["rng"][0])
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "before_after.png").stat().st_size > 0
    model = model_from_checkpoint(str(tmp_path / "last.pt"))
    x = torch.rand(1, 3, 10, 14)
    ref = Standin()
    ref.load_state_dict(ck["model"])
    assert torch.equal(model(x)[-1], ref(x)[-1])
    assert not model.training


def test_validation_is_the_evaluation_loop(tmp_path):
    """The logged validation scores are what ``evaluate`` (``sdpsfnet eval``'s loop) gives for the
    saved model on the validation set."""
    from sdpsfnet.evaluation.inference import evaluate

    _run(_cfg(tmp_path, steps=4))
    result = evaluate(model_from_checkpoint(tmp_path / "last.pt"), val_pairs(), tile=None, progress=False)
    row = _rows(tmp_path)[-1]
    assert row["step"] == "4"
    assert row["val_psnr_y"] == f"{result['psnr_y']:.4f}" and row["val_ssim_y"] == f"{result['ssim_y']:.4f}"
    assert row["input_psnr_y"] == f"{result['input']['psnr_y']:.4f}"


def test_before_after_columns_are_labelled(tmp_path):
    _run(_cfg(tmp_path, steps=4))
    img = np.asarray(Image.open(tmp_path / "before_after.png").convert("RGB"))
    height, width, _ = img.shape
    column = width // 3
    k = column // 16  # the two 16 px validation images, enlarged k times so the labels fit
    header = height - 2 * 16 * k
    assert width == 3 * column and column == 16 * k and header > 0
    # Below the header, the rainy column is the validation inputs (8-bit), enlarged k times.
    rainy = torch.cat([val_pairs()[i][0] for i in range(2)], dim=1)
    rainy = torch.round(rainy * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(img[header:, :column], rainy.repeat(k, 0).repeat(k, 1))
    # The header: light text on dark, a different word over each column.
    labels = [img[:header, c * column:(c + 1) * column] for c in range(3)]
    assert all(lab.max() > 200 and lab.min() < 50 for lab in labels)
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    good = {"model": {"w": torch.randn(3)}, "build_spec": {"name": "_standin", "overrides": {}}}
    save_checkpoint(good, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}, "build_spec": {}}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], good["model"]["w"])


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_checkpoint(tmp_path / "other.pt")


class _FaultyLoss:
    """The training loss, corrupted by ``corrupt(value, outputs)`` from call ``n`` (1-based)."""

    def __init__(self, n: int):
        from sdpsfnet.training.losses import DerainLoss
        self.loss, self.n, self.calls = DerainLoss(), n, 0

    def __call__(self, outputs, target):
        self.calls += 1
        value = self.loss(outputs, target)
        return self.corrupt(value, outputs) if self.calls >= self.n else value


class NaNAfter(_FaultyLoss):
    """Loss that turns NaN from call ``n`` on."""

    def corrupt(self, value, outputs):
        return value * float("nan")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 7.*last\.pt"):
        _run(_cfg(tmp_path, ckpt_every=2, val_every=100), criterion=NaNAfter(7))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 6
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert [r["step"] for r in _rows(tmp_path)] == [str(i) for i in range(0, 7)]


class NaNGradientFrom(_FaultyLoss):
    """Loss that stays finite but whose gradient is NaN from call ``n`` on."""

    class _NaNGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.sum() * 0

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("nan"))

    def corrupt(self, value, outputs):
        return value + self._NaNGrad.apply(outputs[-1])


def test_nan_gradient_with_finite_loss_stops_before_the_weights_change(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"gradient norm is nan.*step 3.*last\.pt"):
        _run(_cfg(tmp_path, ckpt_every=2, val_every=100), criterion=NaNGradientFrom(3))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_best_checkpoint_needs_validation_on_checkpoint_steps(tmp_path):
    with pytest.raises(ValueError, match="val_every"):
        _cfg(tmp_path, val_every=3, ckpt_every=2)


def test_lr_schedule_warmup_then_cosine():
    from sdpsfnet.training.optim import make_scheduler

    peak, floor, warm, total = 1e-4, 1e-6, 6, 60
    opt = torch.optim.AdamW([nn.Parameter(torch.randn(2))], lr=peak)
    sched = make_scheduler(opt, total, warm, floor)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])  # the lr the step uses
        opt.step()
        sched.step()
    expect = [peak * (1e-3 + (1 - 1e-3) * s / warm) if s < warm else
              floor + (peak - floor) * (1 + math.cos(math.pi * (s - warm) / (total - warm))) / 2
              for s in range(total)]
    assert lrs == pytest.approx(expect, rel=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(floor)


def test_warmup_is_three_epochs_capped_at_a_tenth(tmp_path):
    s = _run(_cfg(tmp_path, steps=10, warmup_epochs=3, val_every=100, ckpt_every=100))
    assert (s["steps_per_epoch"], s["warmup_steps"]) == (2, 1)  # min(3 * 2, 10 // 10)


def test_presets():
    cfg = make_config("sdpsfnet", "tiny")
    assert cfg.model == "tiny" and cfg.steps is not None and cfg.crop < 128
    assert make_config("mspfn", "tiny").model == "mspfn-tiny"
    paper = make_config()
    assert (paper.model, paper.crop, paper.lr, paper.clip, paper.epochs, paper.warmup_epochs) == \
        ("sdpsfnet", 128, 1e-4, 2.0, 2000, 3.0)
    assert make_config(steps=10).epochs is None and make_config("sdpsfnet", "tiny", epochs=2).steps is None
    with pytest.raises(ValueError, match="preset"):
        make_config(preset="huge")


def _ddp_worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = Standin()
    train(_cfg(out, steps=3, val_every=3, ckpt_every=3), model=model, train_set=Pairs(),
          val_set=val_pairs())
    torch.save([p.detach() for p in model.parameters()], os.path.join(out, f"params{rank}.pt"))


def test_ddp_two_cpu_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 3 and len(ck["rng"]) == 2  # both ranks' RNG states
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank augmentation
    rows = _rows(tmp_path)  # only rank 0 logs
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    p0, p1 = torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt")
    torch.manual_seed(3)
    fresh = Standin()  # the init train() gives with seed 3
    for a, b, c in zip(p0, p1, fresh.parameters()):
        assert torch.equal(a, b)  # DDP kept the replicas identical
    assert any(not torch.equal(a, c) for a, c in zip(p0, fresh.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(p0, ck["model"].values()))
