"""Trainer and checkpoints: bitwise resume, checkpoint contents, atomic writes, NaN guard, the
learning-rate schedule, presets, the held-out validation split, --init, the run's figures and
2-process DDP (gloo). Small stand-in model and data: these test the training machinery, not a model."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import sdpsfnet.training.loop
from sdpsfnet.data import load_image, save_image
from sdpsfnet.training import TrainConfig, TrainingDiverged, make_config, train
from sdpsfnet.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from sdpsfnet.training.datasets import default_datasets, held_out
from sdpsfnet.training.figures import curves_figure
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
    k = column // 16  # the two 16 px validation images, enlarged k times to 128 px rows
    header = height - 2 * 16 * k
    assert width == 3 * column and column == 16 * k and 16 * k >= 128 and header > 0
    # Below the header, the rainy column is the validation inputs (8-bit), enlarged k times.
    rainy = torch.cat([val_pairs()[i][0] for i in range(2)], dim=1)
    rainy = torch.round(rainy * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(img[header:, :column], rainy.repeat(k, 0).repeat(k, 1))
    # The header: light text on dark, a different word over each column.
    labels = [img[:header, c * column:(c + 1) * column] for c in range(3)]
    assert all(lab.max() > 200 and lab.min() < 50 for lab in labels)
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def _folder(root, n: int, size: int = 24):
    """A paired folder of ``n`` random pairs named 0..n-1 (natural order = index)."""
    g = torch.Generator().manual_seed(n)
    for i in range(n):
        clean = torch.rand(3, size, size, generator=g)
        save_image(clean, root / "target" / f"{i}.png")
        save_image((clean + 0.3 * torch.rand(3, size, size, generator=g)).clamp(0, 1), root / "input" / f"{i}.png")
    return root


def _validation_names(out) -> list[str]:
    return [line for line in (out / "validation.txt").read_text().splitlines() if not line.startswith("#")]


def test_default_validation_pairs_never_appear_in_a_training_batch(tmp_path, monkeypatch):
    """--data alone: a fixed tenth of the pairs validates (validation.txt names them) and no
    training batch of three epochs draws from them, while every other pair is drawn."""
    data = _folder(tmp_path / "d", 20)
    drawn = []
    real_step = sdpsfnet.training.loop.train_step

    def recording(run_, batch):
        drawn.extend(batch[2])  # the names of the pairs this batch was cut from
        return real_step(run_, batch)

    monkeypatch.setattr(sdpsfnet.training.loop, "train_step", recording)
    train(_cfg(tmp_path / "r", data=str(data), crop=16, steps=None, epochs=3))
    held = _validation_names(tmp_path / "r")
    assert held == [str(i) for i in held_out(20)] and len(held) == 2
    assert not set(drawn) & set(held)
    assert set(drawn) == {str(i) for i in range(20)} - set(held)  # the recording sees every training pair
    assert "held out" in (tmp_path / "r" / "validation.txt").read_text().splitlines()[0]


def test_held_out_split_is_a_fixed_tenth_and_at_least_one():
    assert [len(held_out(n)) for n in (2, 9, 20, 100)] == [1, 1, 2, 10]
    assert held_out(100) == held_out(100) and held_out(100) != list(range(10))  # seeded, not the first ten
    with pytest.raises(ValueError, match="1 pair"):
        held_out(1)


def test_val_equal_to_data_is_refused_unless_allowed(tmp_path):
    data = _folder(tmp_path / "d", 4)
    (tmp_path / "link").symlink_to(data)
    for same in (data, tmp_path / "link", data / "input" / ".."):
        with pytest.raises(ValueError, match=r"--val .* is the --data folder.*--allow-val-in-data"):
            TrainConfig(model="_standin", data=str(data), val=str(same))
    cfg = TrainConfig(model="_standin", data=str(data), val=str(tmp_path / "link"), allow_val_in_data=True,
                      val_size=2)
    train_set, val_set, about = default_datasets(cfg)
    assert len(train_set) == 4 and len(val_set) == 2 and "also trained on" in about


def test_init_fine_tunes_from_a_checkpoints_weights_only(tmp_path):
    _run(_cfg(tmp_path / "a", steps=4))
    source = tmp_path / "a" / "last.pt"
    summary = _run(_cfg(tmp_path / "b", steps=3, init=str(source), val_every=1, ckpt_every=1))
    assert summary["start_step"] == 0 and summary["step"] == 3
    # Step 0 of the new run validates the source's final weights: the same scores.
    assert _rows(tmp_path / "b")[0]["val_psnr_y"] == _rows(tmp_path / "a")[-1]["val_psnr_y"]
    ck, old = load_checkpoint(tmp_path / "b" / "last.pt"), load_checkpoint(source)
    assert ck["step"] == 3 and ck["scheduler"]["last_epoch"] == 3 and ck["config"]["init"] == str(source.resolve())
    assert all(float(state["step"]) == 3 for state in ck["optimizer"]["state"].values())  # fresh moments
    assert all(not torch.equal(ck["model"][k], old["model"][k]) for k in ("a.weight", "b.weight"))


def test_init_from_a_misfitting_checkpoint_names_each_tensor(tmp_path):
    _run(_cfg(tmp_path / "a", steps=4))
    with pytest.raises(CheckpointError) as info:
        _run(_cfg(tmp_path / "b", init=str(tmp_path / "a" / "last.pt"), overrides={"width": 6}))
    message = str(info.value)
    assert "last.pt" in message and "(3 tensors)" in message  # b.bias (3,) fits
    for name, here, there in (("a.weight", (6, 3, 3, 3), (4, 3, 3, 3)), ("a.bias", (6,), (4,)),
                              ("b.weight", (3, 6, 3, 3), (3, 4, 3, 3))):
        assert f"{name} {here} here, {there} there" in message
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_figures_have_a_title_labelled_axes_and_three_large_rows(tmp_path):
    data = _folder(tmp_path / "d", 30, size=20)
    cfg = _cfg(tmp_path / "r", data=str(data), crop=16, steps=4)
    train(cfg)
    fig = curves_figure(str(tmp_path / "r" / "metrics.csv"), "title of the run")
    assert fig._suptitle.get_text() == "title of the run"
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in fig.axes)
    img = np.asarray(Image.open(tmp_path / "r" / "before_after.png").convert("RGB"))
    column = img.shape[1] // 3
    k = column // 20
    header = img.shape[0] - 3 * 20 * k
    assert 20 * k >= 128 and header > 0  # three rows, each at least 128 px tall
    rainy = [img[header + r * 20 * k: header + (r + 1) * 20 * k, :column] for r in range(3)]
    names = _validation_names(tmp_path / "r")
    assert len(names) == 3 and len(set(names)) == 3
    for r, name in enumerate(names):  # row r is the validation image named on line r
        pair = torch.round(load_image(data / "input" / f"{name}.png") * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(rainy[r], pair.repeat(k, 0).repeat(k, 1))


def test_before_after_rows_are_distinct_clean_images(tmp_path):
    """A validation set that renders two rains on one clean image (as the built-in rain cycles over
    its photos) shows each clean image once: rows from items 0, 2 and 3, not 0, 1 and 2."""
    clean = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    items = [(torch.rand(3, 16, 16), clean[c], f"v{i}") for i, c in enumerate((0, 0, 1, 2))]
    train(_cfg(tmp_path, steps=2, val_every=2, ckpt_every=2), train_set=Pairs(), val_set=items)
    img = np.asarray(Image.open(tmp_path / "before_after.png").convert("RGB"))
    column, header = img.shape[1] // 3, img.shape[0] - 3 * 128
    shown = [img[header + 128 * r: header + 128 * (r + 1), :column][::8, ::8] for r in range(3)]
    for row, i in zip(shown, (0, 2, 3)):
        expected = torch.round(items[i][0] * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(row, expected), i


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


DDP_DEADLINE_S = 90  # the two ranks take about 5 s alone: room for a loaded 2-core machine


def _run_ddp(out) -> bool:
    """Two gloo ranks training into ``out``; False if they are not done by :data:`DDP_DEADLINE_S`
    (then killed). A rank's failure raises."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_ddp_worker, args=(2, port, str(out)), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + DDP_DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
                proc.join()
            return False
    return True


def test_ddp_two_cpu_processes(tmp_path):
    """Two CPU ranks: one checkpoint with both ranks' RNG states, rank 0's log, identical replicas,
    and both ranks done: a rank that never finishes (the process group's teardown deadlocked in 2 of
    5 runs before ``leave_group``) fails the test at the deadline instead of hanging it."""
    assert _run_ddp(tmp_path), f"the DDP ranks did not finish within {DDP_DEADLINE_S} s (a teardown deadlock?)"
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
