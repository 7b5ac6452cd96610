"""Nothing lost, nothing corrupted: run folders are never clobbered, bad counts and options are
refused, best.pt is repaired after a crash, killed writers' temporary files are cleaned, bad
checkpoints and devices give one-line errors, and a run killed at random moments and resumed is
bitwise equal to an uninterrupted one."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sdpsfnet.training.datasets
import sdpsfnet.training.loop
import sdpsfnet.training.run_folder
from sdpsfnet.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from sdpsfnet.cli import main
from sdpsfnet.data import save_image
from sdpsfnet.training import TrainingDiverged, train
from sdpsfnet.training.run_folder import RUN_FILES
from trainer_scaffold import Pairs, Standin, config, rows, run, val_pairs


def _weights_equal(a, b) -> bool:
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _nan_loss(outputs, clean):
    return outputs[-1].sum() * float("nan")


# ------------------------------------------------------------------------------ run folders
def test_new_run_into_a_run_folder_is_refused_unless_overwrite(tmp_path):
    run(config(tmp_path, steps=8))
    before = {name: (tmp_path / name).read_bytes() for name in RUN_FILES}
    with pytest.raises(FileExistsError, match=r"already holds a run.*--resume.*--overwrite"):
        run(config(tmp_path, steps=4))
    assert {name: (tmp_path / name).read_bytes() for name in RUN_FILES} == before  # untouched
    (tmp_path / "notes.txt").write_text("mine")
    run(config(tmp_path, steps=4), overwrite=True)
    assert [r["step"] for r in rows(tmp_path)] == [str(i) for i in range(5)]  # the new run only
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a run file: kept


def test_overwrite_leaves_no_file_of_the_old_run(tmp_path):
    run(config(tmp_path, steps=4))
    with pytest.raises(TrainingDiverged):  # the new run dies at its first step
        run(config(tmp_path, steps=4), criterion=_nan_loss, overwrite=True)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert [r["step"] for r in rows(tmp_path)] == ["0"]


@pytest.mark.parametrize("field,value", [("steps", 0), ("steps", -5), ("epochs", 0), ("epochs", -1),
                                         ("stop_at", 0), ("batch_size", 0)])
def test_non_positive_counts_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a positive integer, got {value}"):
        config(tmp_path, **{field: value})


def test_cli_refuses_non_positive_steps_and_keeps_the_log(tmp_path, capsys):
    run(config(tmp_path, steps=4))
    before = (tmp_path / "metrics.csv").read_bytes()
    for steps in ("0", "-5"):
        assert main(["train", "--steps", steps, "--out", str(tmp_path), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err == f"sdpsfnet train: error: steps must be a positive integer, got {steps}\n"
    assert (tmp_path / "metrics.csv").read_bytes() == before


def test_resume_refuses_a_changed_length_or_recipe(tmp_path, capsys):
    run(config(tmp_path, steps=4))
    last = str(tmp_path / "last.pt")
    for flag, value in (("--steps", "20"), ("--epochs", "3"), ("--lr", "0.5"), ("--model", "tiny")):
        assert main(["train", "--resume", last, flag, value, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"sdpsfnet train: error: {flag} {value} differs from the run")
    # Repeating the run's own values is fine (here the run is complete: nothing to do).
    assert main(["train", "--resume", last, "--steps", "4", "--model", "_standin", "--no-progress"]) == 0
    assert "nothing to train" in capsys.readouterr().out


def test_resume_refuses_a_stop_at_already_passed(tmp_path):
    run(config(tmp_path, steps=8, stop_at=3))
    with pytest.raises(ValueError, match=r"stop_at 2 is not after step 3 of .*last\.pt"):
        run(config(tmp_path, stop_at=2), resume=str(tmp_path / "last.pt"))


def test_resume_from_an_older_checkpoint_is_refused_in_its_folder_but_can_branch(tmp_path):
    a, fork = tmp_path / "a", tmp_path / "fork"
    run(config(a, steps=8, ckpt_every=4, stop_at=4))
    shutil.copy(a / "last.pt", a / "step4.pt")
    run(config(a), resume=str(a / "last.pt"))
    with pytest.raises(FileExistsError, match=r"would discard steps 5\.\.8"):
        run(config(a), resume=str(a / "step4.pt"))
    assert load_checkpoint(a / "last.pt")["step"] == 8
    run(config(fork), resume=str(a / "step4.pt"))  # into an empty folder: a branch, with its history
    assert _weights_equal(fork / "last.pt", a / "last.pt")
    assert [r["loss"] for r in rows(fork)] == [r["loss"] for r in rows(a)]
    with pytest.raises(FileExistsError, match="already holds a run"):  # into another run: refused
        run(config(fork), resume=str(a / "step4.pt"))


def test_a_log_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    run(config(tmp_path, stop_at=4))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("1")  # the start of step 13's row ("13,6,...") as a kill left it
    run(config(tmp_path), resume=str(tmp_path / "last.pt"))
    assert [r["step"] for r in rows(tmp_path)] == [str(i) for i in range(13)]


def test_best_pt_is_repaired_after_a_crash_between_the_two_writes(tmp_path, monkeypatch):
    class Crash(Exception):
        pass

    real_save = sdpsfnet.training.loop.save_checkpoint

    def crash_before_best(state, path):
        if os.path.basename(path) == "best.pt":
            raise Crash("killed after last.pt")
        real_save(state, path)

    monkeypatch.setattr(sdpsfnet.training.loop, "save_checkpoint", crash_before_best)
    with pytest.raises(Crash):  # the last step scored best; last.pt is written, best.pt is not
        run(config(tmp_path, steps=4))
    monkeypatch.undo()
    assert not (tmp_path / "best.pt").exists()
    assert load_checkpoint(tmp_path / "last.pt")["metrics"]["best_step"] == 4
    run(config(tmp_path), resume=str(tmp_path / "last.pt"))  # complete: nothing to train, but repairs
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4
    assert _weights_equal(tmp_path / "best.pt", tmp_path / "last.pt")


def test_killed_writers_temporary_files_are_removed_at_start(tmp_path):
    run(config(tmp_path, stop_at=4))
    stale = [tmp_path / ".last.pt.a1b2c3d4.tmp", tmp_path / ".before_after.png.zz_99xyz.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / ".keep.tmp").write_bytes(b"not ours")  # not atomic_write's pattern
    run(config(tmp_path), resume=str(tmp_path / "last.pt"))
    assert not any(p.exists() for p in stale) and (tmp_path / ".keep.tmp").exists()


# ------------------------------------------------------------------- one-line errors
def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    """Files that are not usable checkpoints, by kind."""
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"no checkpoint here\n"}
    for kind, content in files.items():
        (folder / f"{kind}.pt").write_bytes(content)
    torch.save({"model": {}, "build_spec": {}, "x": Standin()}, folder / "objects.pt")  # pickled code
    state = torch.load(good, weights_only=True)
    save_checkpoint({**state, "build_spec": {"name": "tiny", "overrides": {}}}, folder / "other_model.pt")
    save_checkpoint({"model": state["model"], "build_spec": state["build_spec"]}, folder / "weights_only.pt")
    save_checkpoint({"weights": state["model"]}, folder / "foreign.pt")
    return {p.stem: p for p in folder.glob("*.pt")} | {"missing": folder / "missing.pt", "folder": folder}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    good = tmp_path_factory.mktemp("good")
    run(config(good, steps=2, val_every=2, ckpt_every=2))
    return {**_bad_checkpoints(tmp_path_factory.mktemp("bad"), good / "last.pt"), "good": good / "last.pt"}


@pytest.mark.parametrize("kind,cause", [
    ("empty", "empty"), ("truncated", "truncated or corrupt"), ("text", "not a file written by torch.save"),
    ("objects", "Python objects"), ("foreign", "not an sdpsfnet checkpoint"), ("folder", "is a folder"),
    ("other_model", "do not fit"), ("weights_only", "cannot be resumed")])
def test_bad_checkpoints_raise_checkpoint_error_naming_file_and_cause(bad, kind, cause):
    path = bad[kind]
    with pytest.raises(CheckpointError) as info:
        if kind == "other_model":
            model_from_checkpoint(path)
        else:
            load_checkpoint(path, resumable=True)
    message = str(info.value)
    assert str(path) in message and cause in message and "\n" not in message


UNREADABLE = ["empty", "truncated", "text", "objects", "foreign", "folder", "missing"]


# A model-only checkpoint is fine for eval/derain/show-psf but cannot be resumed; a resume builds
# the model from the run's config (another model's weights: the library test below).
@pytest.mark.parametrize("command,kind", [(c, k) for c in ("eval", "derain", "show-psf")
                                          for k in UNREADABLE + ["other_model"]]
                         + [("train", k) for k in UNREADABLE + ["weights_only"]])
def test_cli_gives_one_line_for_a_bad_checkpoint(bad, tmp_path, capsys, command, kind):
    path = str(bad[kind])
    data = tmp_path / "pairs"  # valid images, so the checkpoint is what the error is about
    for sub in ("input", "target"):
        save_image(torch.rand(3, 16, 16), data / sub / "1.png")
    args = {"eval": ["eval", "--ckpt", path, "--data", str(data)],
            "derain": ["derain", "--ckpt", path, str(data / "input"), "--out", str(tmp_path / "o")],
            "show-psf": ["show-psf", "--ckpt", path, "--out", str(tmp_path / "p.png")],
            "train": ["train", "--resume", path, "--out", str(tmp_path / "r")]}[command]
    assert main(args + ["--no-progress"] * (command != "show-psf")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sdpsfnet {command}: error: ") and err.count("\n") == 1 and path in err


@pytest.mark.parametrize("device", ["foo", "cuda", "cuda:7"])
@pytest.mark.parametrize("command", ["eval", "train"])
def test_cli_gives_one_line_for_a_bad_device(bad, tmp_path, capsys, command, device):
    if torch.cuda.device_count() > (7 if device == "cuda:7" else 0) and device != "foo":
        pytest.skip("this CUDA device exists here")
    args = {"eval": ["eval", "--ckpt", str(bad["weights_only"]), "--data", str(tmp_path)],
            "train": ["train", "--out", str(tmp_path / "r")]}[command]
    assert main(args + ["--device", device, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sdpsfnet {command}: error: device {device!r}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_resume_with_weights_of_another_model_names_the_file(tmp_path):
    run(config(tmp_path, steps=2, val_every=2, ckpt_every=2))
    last = str(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt do not fit .* 3 of another shape"):
        run(config(tmp_path), resume=last, model=Standin(width=5))


# ------------------------------------------------------------------------ kill and resume
STEPS = 12


def _pairs(root: Path) -> Path:
    g = torch.Generator().manual_seed(7)
    for i in range(4):
        clean = torch.rand(3, 24, 24, generator=g) * 0.5 + 0.25
        save_image(clean, root / "target" / f"{i}.png")
        streaks = 0.4 * (torch.rand(1, 24, 24, generator=g) > 0.9)
        save_image((clean + streaks).clamp(0, 1), root / "input" / f"{i}.png")
    return root


def _train(*args) -> list[str]:
    return [sys.executable, "-m", "sdpsfnet", "train", *args, "--no-progress"]


def _logged_steps(out: Path) -> int:
    try:
        return len((out / "metrics.csv").read_text().splitlines()) - 2  # header, step 0
    except FileNotFoundError:
        return -1


def test_killed_at_random_moments_and_resumed_equals_an_uninterrupted_run(tmp_path):
    """Three SIGKILLs at random moments (mid-step, mid-validation or mid-write), each followed by
    the resume a user would type; the finished run equals an uninterrupted one bit for bit."""
    data = _pairs(tmp_path / "pairs")
    new_run = lambda out: _train("--preset", "tiny", "--data", str(data), "--steps", str(STEPS),  # noqa: E731
                                 "--crop", "16", "--batch-size", "2", "--ckpt-every", "2",
                                 "--val-every", "4", "--out", str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs: the same threads, the same arithmetic
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = subprocess.Popen(new_run(straight), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)  # alongside the killed run
    seed = os.environ.get("KILL_SEED", str(random.randrange(2 ** 32)))
    rng = random.Random(seed)
    kills, interrupted = 0, 0
    while True:
        last = killed / "last.pt"
        cmd = _train("--resume", str(last)) if last.exists() else new_run(killed) + ["--overwrite"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills == 3:
            assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
            break
        start = _logged_steps(killed)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _logged_steps(killed) <= start and time.monotonic() < deadline:
            time.sleep(0.02)  # wait until this attempt trains, then kill it a random moment later
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        interrupted += proc.wait(timeout=30) == -signal.SIGKILL  # (not an attempt that had already finished)
        proc.stderr.close()
        kills += 1
    assert interrupted >= 1, f"no kill interrupted a run (KILL_SEED={seed})"
    assert reference.wait(timeout=120) == 0, reference.stderr.read()[-2000:]
    reference.stderr.close()
    for name in ("last.pt", "best.pt"):
        assert _weights_equal(straight / name, killed / name), name
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == STEPS
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop_time(rows(killed)) == drop_time(rows(straight))
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------- concurrent runs, run folders, data
def test_a_run_folder_in_use_by_a_live_run_is_refused_and_a_stale_lock_is_not(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sdpsfnet.training.run_folder import run_folder_lock\n"
         f"with run_folder_lock({str(tmp_path)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FileExistsError, match=rf"in use by another train run \(process {holder.pid}\)"):
            run(config(tmp_path, steps=2))
        assert not (tmp_path / "metrics.csv").exists()
    finally:
        holder.kill()  # as a kill -9 would: the lock file stays, its lock goes
        holder.wait()
    assert (tmp_path / sdpsfnet.training.run_folder.LOCK_NAME).exists()
    run(config(tmp_path, steps=2, val_every=2, ckpt_every=2))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


@pytest.mark.parametrize("where", ["target", "", "target/sub"])
def test_out_inside_the_data_folder_is_refused(tmp_path, where):
    data = _pairs(tmp_path / "pairs")
    out = data / where if where else data
    with pytest.raises(ValueError, match=r"lies inside the --data folder"):
        run(config(out, data=str(data)))
    assert sorted(p.name for p in (data / "target").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_again(tmp_path, capsys):
    with pytest.raises(TrainingDiverged):
        run(config(tmp_path, steps=4), criterion=_nan_loss)
    assert (tmp_path / "metrics.csv").exists() and not (tmp_path / "last.pt").exists()
    with pytest.raises(FileExistsError) as info:
        run(config(tmp_path, steps=4))
    assert "no last.pt" in str(info.value) and "--overwrite" in str(info.value)
    assert "--resume" not in str(info.value)


def test_data_paths_are_stored_resolved_and_compared_resolved(tmp_path, monkeypatch, capsys):
    data = _pairs(tmp_path / "pairs")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "_standin", "--data", "pairs", "--steps", "4", "--stop-at", "2",
                 "--crop", "16", "--batch-size", "2", "--ckpt-every", "2", "--val-every", "2",
                 "--out", "r", "--no-progress"]) == 0
    last = tmp_path / "r" / "last.pt"
    assert load_checkpoint(last)["config"]["data"] == str(data.resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same folder, spelled absolute, from elsewhere
    assert main(["train", "--resume", str(last), "--data", str(data), "--no-progress"]) == 0, capsys.readouterr().err
    assert load_checkpoint(last)["step"] == 4


def test_a_resume_after_the_data_changed_size_is_refused(tmp_path):
    cfg = config(tmp_path, steps=None, epochs=4, stop_at=2, ckpt_every=2, val_every=2)
    train(cfg, train_set=Pairs(5), val_set=val_pairs())
    assert load_checkpoint(tmp_path / "last.pt")["total_steps"] == 8
    for n in (9, 13):  # 4 or 6 steps per epoch now (the second once crashed in the scheduler)
        with pytest.raises(ValueError, match=rf"training data changed .*5 items then, {n} now"):
            train(config(tmp_path), resume=str(tmp_path / "last.pt"), train_set=Pairs(n), val_set=val_pairs())
    train(config(tmp_path), resume=str(tmp_path / "last.pt"), train_set=Pairs(5), val_set=val_pairs())
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8


def test_validation_images_under_11_px_are_refused_when_indexed(tmp_path):
    for folder in ("d", "v"):
        for sub in ("input", "target"):
            save_image(torch.rand(3, 16, 16), tmp_path / folder / sub / "a.png")
            save_image(torch.rand(3, 8, 16), tmp_path / folder / sub / "b.png")
    with pytest.raises(ValueError, match=r"b\.png .* at least 11x11"):
        sdpsfnet.training.datasets.default_datasets(config(tmp_path / "o", data=str(tmp_path / "d"),
                                                           val=str(tmp_path / "v")))


def test_ctrl_c_during_train_prints_where_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    data = _pairs(tmp_path / "pairs")
    real_step = sdpsfnet.training.loop.train_step

    def interrupted_at_step_3(run_, batch):
        if run_.step == 2:
            raise KeyboardInterrupt
        return real_step(run_, batch)

    monkeypatch.setattr(sdpsfnet.training.loop, "train_step", interrupted_at_step_3)
    out = tmp_path / "r"
    assert main(["train", "--model", "_standin", "--data", str(data), "--steps", "4", "--crop", "16",
                 "--batch-size", "2", "--ckpt-every", "2", "--val-every", "2", "--out", str(out),
                 "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"sdpsfnet train: interrupted; continue it with --resume {out / 'last.pt'}"
    assert load_checkpoint(out / "last.pt")["step"] == 2


# ----------------------------------------------------------------- edited checkpoints
def _edited(tmp_path, good: Path, name: str, edit) -> Path:
    state = torch.load(good, weights_only=True)
    edit(state)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(state, path)
    return path


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


EDITS = {
    "metrics": (_set("metrics", "x"), "metrics"),
    "rng_type": (_set("rng", "x"), "rng"),
    "rng_state": (lambda s: s["rng"][0].__setitem__("torch", torch.zeros(3, dtype=torch.uint8)), "rng"),
    "rng_numpy": (lambda s: s["rng"][0].__setitem__("numpy", ("MT19937",)), "rng"),
    "optimizer_shape": (lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(2)), "optimizer"),
    "format": (_set("format", "1"), "format"),
    "step_text": (_set("step", "abc"), "step"),
    "step_negative": (_set("step", -5), "step"),
    "step_huge": (_set("step", 10 ** 12), "step"),
    "scheduler": (_set("scheduler", {"bogus": 1}), "scheduler"),
    "scheduler_step": (lambda s: s["scheduler"].__setitem__("last_epoch", 1), "scheduler"),
    "best": (lambda s: s["metrics"].__setitem__("best_step", "x"), "metrics.best_step"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_resume_validates_every_field_naming_file_and_field(bad, tmp_path, kind):
    edit, field = EDITS[kind]
    path = _edited(tmp_path, bad["good"], kind, edit)
    with pytest.raises(CheckpointError) as info:
        run(config(tmp_path / "r"), resume=str(path))
    message = str(info.value)
    assert str(path) in message and f"field {field!r}" in message and "\n" not in message


def test_cli_names_the_file_for_an_edited_format(bad, tmp_path, capsys):
    path = _edited(tmp_path, bad["good"], "fmt", _set("format", "1"))
    assert main(["show-psf", "--ckpt", str(path), "--out", str(tmp_path / "p.png")]) == 1
    assert capsys.readouterr().err.startswith(f"sdpsfnet show-psf: error: {path}: field 'format'")


@pytest.mark.parametrize("kind,cause", [("nan", "holds NaN or Inf"), ("int", "is torch.int64")])
def test_nan_or_integer_weights_are_refused_naming_the_tensor(tmp_path, capsys, kind, cause):
    from sdpsfnet.models.registry import build_model

    model = build_model("tiny")
    weights = model.state_dict()
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone().fill_(float("nan")) if kind == "nan" else weights[key].long()
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": weights, "build_spec": model.build_spec}, path)
    save_image(torch.rand(3, 16, 16), tmp_path / "in" / "a.png")
    assert main(["derain", "--ckpt", str(path), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: tensor {key!r} {cause}" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "a.png").exists()


def test_an_edited_build_spec_is_checked_before_the_model_is_built(tmp_path):
    from sdpsfnet.models.registry import build_model

    model = build_model("tiny")
    path = tmp_path / "ck.pt"
    spec = {"name": "tiny", "overrides": {"n_feat": 5000}}  # ~0.5 TB if built for real
    save_checkpoint({"model": model.state_dict(), "build_spec": spec}, path)
    with pytest.raises(CheckpointError, match=r"do not fit.*in the file, \(5000,"):
        model_from_checkpoint(path)


def test_a_triton_checkpoint_runs_on_the_cpu_with_the_reference_ops(tmp_path, monkeypatch):
    from sdpsfnet.models.registry import build_model

    model = build_model("tiny", backend="triton")
    save_checkpoint({"model": model.state_dict(), "build_spec": model.build_spec}, tmp_path / "ck.pt")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a plain CPU machine: Triton cannot run here
    x = torch.rand(1, 3, 16, 16)
    for env in ("auto", "triton"):
        monkeypatch.setenv("PSFOPS_BACKEND", env)
        loaded = model_from_checkpoint(tmp_path / "ck.pt", device="cpu")
        assert loaded.config.backend == "reference"
        assert torch.isfinite(loaded(x)[-1]).all()
    plain = build_model("tiny")
    save_checkpoint({"model": plain.state_dict(), "build_spec": plain.build_spec}, tmp_path / "auto.pt")
    assert model_from_checkpoint(tmp_path / "auto.pt", device="cpu").config.backend == "reference"  # env triton


def test_a_checkpoint_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match=r"f\.pt is not a regular file"):
        load_checkpoint(tmp_path / "f.pt")


def test_a_run_that_fails_before_writing_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 1
    assert "missing" in capsys.readouterr().err and not out.exists()
