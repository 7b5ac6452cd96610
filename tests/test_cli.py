"""The ``sdpsfnet`` command: every subcommand on tiny inputs (tiny model, 16 px crops, 2 steps).

Images: two real Rain100H pairs (tests/data/rain100h) cropped to 48x40. Metric values are checked
against scikit-image as the independent truth."""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from sdpsfnet.cli import main
from sdpsfnet.data import load_image, save_image
from sdpsfnet.evaluation.inference import derain_image

from realdata import VENDORED

METRIC_KEYS = {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}


def _u8(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A paired folder (input/ + target/) of two small real pairs."""
    root = tmp_path_factory.mktemp("pairs")
    for sub in ("input", "target"):
        (root / sub).mkdir()
        for name in ("1.png", "7.png"):
            Image.open(VENDORED / sub / name).crop((24, 28, 72, 68)).save(root / sub / name)
    return root


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "tiny", "--data", str(pairs), "--steps", "2", "--crop", "16",
               "--batch-size", "1", "--out", str(out), "--no-progress"])  # one pair trains, one validates
    assert rc == 0
    return out


class _Stamped(io.StringIO):
    """A console stream that records when each piece of text arrives (tqdm's ``\\r`` redraws too)."""

    def __init__(self, stamps: list):
        super().__init__()
        self.stamps = stamps

    def write(self, text: str) -> int:
        if text.strip():
            self.stamps.append((time.monotonic(), text.strip()))
        return super().write(text)


def test_train_reports_progress_at_least_every_2_seconds(tmp_path, monkeypatch):
    """A tiny run through the CLI, stdout and stderr time-stamped as they are written: every phase
    (model build, data indexing, the start line, each validation image, checkpoint writes, steps)
    says so, and no two consecutive outputs are more than 2 s apart."""
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        clean = torch.rand(3, 24, 24, generator=g)
        save_image(clean, tmp_path / "d" / "target" / f"{i}.png")
        save_image((clean + 0.3 * torch.rand(3, 24, 24, generator=g)).clamp(0, 1), tmp_path / "d" / "input" / f"{i}.png")
    args = ["train", "--preset", "tiny", "--data", str(tmp_path / "d"), "--crop", "16", "--batch-size", "2",
            "--val-every", "2", "--ckpt-every", "2"]
    # One untimed step first: this process's first run pays one-off costs that are not a phase of
    # a run (compiling a fresh environment's .pyc files, matplotlib's font cache, torch's first ops).
    assert main(args + ["--steps", "1", "--no-progress", "--out", str(tmp_path / "warm")]) == 0
    stamps: list = []
    monkeypatch.setattr(sys, "stdout", _Stamped(stamps))
    monkeypatch.setattr(sys, "stderr", _Stamped(stamps))
    rc = main(args + ["--steps", "4", "--out", str(tmp_path / "r")])
    monkeypatch.undo()
    assert rc == 0, stamps[-3:]
    texts = "\n".join(text for _, text in stamps)
    for phase in ("building model tiny", "indexing data", "training tiny (", "parameters) on cpu: 11 training items",
                  "1 validation image", "validation: 1 of the 12 pairs", "validate step 0", "1/1",
                  "writing last.pt", "train: 100%", "step 4/4"):
        assert phase in texts, phase
    gaps = [(b - a, before) for (a, before), (b, _) in zip(stamps, stamps[1:])]
    longest, before = max(gaps)
    assert longest <= 2.0, f"{longest:.2f} s without output after {before!r}"


def test_train_writes_checkpoints_logs_and_figures(run):
    assert {"last.pt", "best.pt", "metrics.csv", "curves.png", "before_after.png"} <= set(os.listdir(run))
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["build_spec"]["name"] == "tiny" and ck["config"]["crop"] == 16
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("step,epoch,lr,loss")  # header, step 0 (val), 1, 2


def test_eval_json(run, pairs, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(run / "last.pt"), "--data", str(pairs), "--json", str(out),
                 "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert METRIC_KEYS <= set(res) and len(res["per_image"]) == 2
    for row in res["per_image"]:  # rainy-input baseline against scikit-image
        truth = peak_signal_noise_ratio(_u8(pairs / "target" / row["name"]), _u8(pairs / "input" / row["name"]))
        assert row["input_psnr_rgb"] == pytest.approx(truth, abs=1e-6)
    assert res["psnr_y"] == pytest.approx(np.mean([r["psnr_y"] for r in res["per_image"]]))
    # The same numbers through derain (PNG files) + metrics: the two paths agree.
    assert main(["derain", "--ckpt", str(run / "last.pt"), str(pairs / "input"), "--out",
                 str(tmp_path / "pred"), "--no-progress"]) == 0
    assert main(["metrics", str(tmp_path / "pred"), str(pairs / "target"), "--json",
                 str(tmp_path / "m.json"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    for a, b in zip(res["per_image"], m["per_image"]):  # both quantize to 8 bits: the same numbers
        for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_metrics_json_keys_and_values(tmp_path):
    g = torch.Generator().manual_seed(1)
    for name in ("a.png", "b.png"):
        target = torch.rand(3, 24, 20, generator=g)
        save_image(target, tmp_path / "t" / name)
        save_image((target + 0.1 * torch.randn(3, 24, 20, generator=g)).clamp(0, 1), tmp_path / "p" / name)
    assert main(["metrics", str(tmp_path / "p"), str(tmp_path / "t"), "--json", str(tmp_path / "m.json"),
                 "--no-progress"]) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert set(res) == METRIC_KEYS | {"per_image"}
    truth = [peak_signal_noise_ratio(_u8(tmp_path / "t" / n), _u8(tmp_path / "p" / n)) for n in ("a.png", "b.png")]
    assert [r["psnr_rgb"] for r in res["per_image"]] == pytest.approx(truth, abs=1e-6)
    assert res["psnr_rgb"] == pytest.approx(np.mean(truth), abs=1e-6)


def test_derain_same_size_files_and_folders(run, tmp_path):
    g = torch.Generator().manual_seed(2)
    save_image(torch.rand(3, 29, 37, generator=g), tmp_path / "in" / "odd.png")
    save_image(torch.rand(3, 80, 72, generator=g), tmp_path / "more" / "big.jpg")
    ck = str(run / "last.pt")
    assert main(["derain", "--ckpt", ck, str(tmp_path / "in" / "odd.png"), str(tmp_path / "more"),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "out" / "odd.png").size == (37, 29)
    assert Image.open(tmp_path / "out" / "big.png").size == (72, 80)
    # Tiled path (the smallest tiles, smaller than the image): same size, close to the whole image.
    assert main(["derain", "--ckpt", ck, str(tmp_path / "more"), "--out", str(tmp_path / "tiled"),
                 "--tile", "64", "--overlap", "16", "--no-progress"]) == 0
    a, b = load_image(tmp_path / "out" / "big.png"), load_image(tmp_path / "tiled" / "big.png")
    assert a.shape == b.shape and (a - b).abs().mean() < 0.02


class Local(nn.Module):
    """3x3 conv, ReLU, 3x3 conv: receptive radius 2; returns a list like the real models."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1))

    def forward(self, x):
        return [x, torch.sigmoid(self.net(x))]


def test_tiled_equals_untiled_for_local_model():
    torch.manual_seed(4)
    model, img = Local(), torch.rand(3, 53, 70)
    whole = derain_image(model, img, tile=None)
    tiled = derain_image(model, img, tile=24, overlap=8)  # margin 8 // 4 = 2 >= radius 2
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    seams = derain_image(model, img, tile=24, overlap=4)  # margin 1 < radius: seams show
    assert (seams - whole).abs().max() > 1e-3
    with pytest.raises(ValueError, match="overlap"):
        derain_image(model, img, tile=24, overlap=24)


def test_synth(tmp_path):
    g = torch.Generator().manual_seed(3)
    for name in ("x.png", "y.png"):
        save_image(torch.rand(3, 32, 40, generator=g) * 0.6 + 0.2, tmp_path / "clean" / name)
    assert main(["synth", "--clean", str(tmp_path / "clean"), "--out", str(tmp_path / "syn")]) == 0
    for name in ("x.png", "y.png"):
        rainy, clean = _u8(tmp_path / "syn" / "input" / name), _u8(tmp_path / "syn" / "target" / name)
        assert rainy.shape == clean.shape == (32, 40, 3)
        assert np.array_equal(clean, _u8(tmp_path / "clean" / name))
        assert np.abs(rainy.astype(int) - clean).mean() > 1


def test_show_psf(run, pairs, tmp_path):
    out = tmp_path / "psf.png"
    assert main(["show-psf", "--ckpt", str(run / "last.pt"), "--image", str(pairs / "input" / "1.png"),
                 "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert w > 200 and h > 200
    assert main(["show-psf", "--ckpt", str(run / "last.pt"), "--out", str(tmp_path / "basis.png")]) == 0
    assert (tmp_path / "basis.png").stat().st_size > 0


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tmp_path / "missing.pt"), "--data", str(tmp_path)]) == 1
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--steps", "2", "--epochs", "2"])


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "sdpsfnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("train", "eval", "metrics", "derain", "synth", "show-psf", "models", "export"):
        assert cmd in r.stdout


def test_torchrun_two_cpu_processes(pairs, tmp_path):
    """The same ``train`` under torchrun: 2 processes, gloo, DistributedSampler, rank 0 writes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import shutil

    data = shutil.copytree(pairs, tmp_path / "data")  # trains on both pairs; --val scores the originals
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "sdpsfnet", "train", "--preset", "tiny", "--data", str(data), "--val", str(pairs), "--steps", "2",
           "--crop", "16", "--batch-size", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # own process group: a hang kills workers too
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["rng"]) == 2
    # 2 pairs over 2 ranks with batch 1: one step per epoch, so 2 steps = 2 epochs.
    assert ck["epoch"] == 2
    assert stdout.count("validation PSNR-Y") == 1  # only rank 0 reports


def test_psf_maps_for_a_self_predicting_dynamic_psf():
    """psf_maps finds psfops.nn.DynamicPSF modules in any model and reports the weights they used."""
    from psfops.nn import DynamicPSF

    from sdpsfnet.evaluation.psf_figures import psf_maps

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.psf = DynamicPSF(4, num_basis=5, kernel_size=3)

        def forward(self, x):
            return [self.psf(self.body(x))]

    torch.manual_seed(5)
    model, img = Wrap(), torch.rand(3, 12, 10)
    (info,) = psf_maps(model, img)
    assert info["name"] == "psf" and info["basis"].shape == (5, 3, 3)
    torch.testing.assert_close(info["basis"].sum((1, 2)), torch.ones(5))
    with torch.no_grad():
        truth = torch.softmax(model.psf.weight_head(model.body(img[None])), dim=1)[0]
    torch.testing.assert_close(info["weights"], truth)


# ---- nothing lost, nothing corrupted --------------------------------------------------------------

def test_derain_refuses_to_overwrite_its_inputs(run, tmp_path, capsys):
    d = tmp_path / "d"
    save_image(torch.rand(3, 20, 24), d / "a.png")
    (tmp_path / "link").symlink_to(d)
    before = (d / "a.png").read_bytes()
    ck = str(run / "last.pt")
    for inputs, out in (([d], d), ([d], tmp_path / "d" / ".." / "d"), ([d / "a.png"], tmp_path / "link")):
        assert main(["derain", "--ckpt", ck, *map(str, inputs), "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "refusing to write" in err and "a.png" in err
    assert (d / "a.png").read_bytes() == before and os.listdir(d) == ["a.png"]
    # a JPEG in the same folder is not overwritten by its PNG output: that is allowed
    save_image(torch.rand(3, 20, 24), tmp_path / "e" / "b.jpg")
    assert main(["derain", "--ckpt", ck, str(tmp_path / "e"), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "e")) == ["b.jpg", "b.png"]


def test_eval_metrics_and_show_psf_refuse_to_overwrite_their_inputs(run, pairs, tmp_path, capsys):
    """Each command's output named as one of its inputs, directly or through a hard link."""
    image = pairs / "input" / "1.png"
    before = image.read_bytes()
    os.link(image, tmp_path / "hard.png")
    ck = str(run / "last.pt")
    for out in (image, tmp_path / "hard.png"):
        for argv in (["eval", "--ckpt", ck, "--data", str(pairs), "--json", str(out), "--no-progress"],
                     ["metrics", str(pairs / "input"), str(pairs / "target"), "--json", str(out)],
                     ["show-psf", "--ckpt", ck, "--image", str(image), "--out", str(out), "--no-progress"]):
            assert main(argv) == 1, argv
            assert "refusing to write" in capsys.readouterr().err, argv
    assert image.read_bytes() == before


def test_derain_writes_the_inputs_bit_depth_and_channels(run, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.randint(0, 65536, (20, 24)).astype(np.uint16)).save(tmp_path / "in" / "g16.png")
    Image.fromarray(np.random.randint(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / "in" / "g8.png")
    save_image(torch.rand(3, 20, 24), tmp_path / "in" / "rgb16.png", bits=16)
    save_image(torch.rand(3, 20, 24), tmp_path / "in" / "rgb8.png")
    assert main(["derain", "--ckpt", str(run / "last.pt"), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    modes = {n: Image.open(tmp_path / "out" / n).mode for n in ("g16.png", "g8.png", "rgb8.png")}
    assert modes == {"g16.png": "I;16", "g8.png": "L", "rgb8.png": "RGB"}
    out16 = np.asarray(Image.open(tmp_path / "out" / "g16.png")).astype(np.int64)
    assert out16.shape == (20, 24) and (out16 % 257 != 0).mean() > 0.5  # real 16-bit levels, not 8-bit ones
    rgb16 = load_image(tmp_path / "out" / "rgb16.png")
    assert rgb16.shape == (3, 20, 24) and not torch.equal(torch.round(rgb16 * 255) / 255, rgb16)


def test_metrics_json_is_strict_for_identical_images(tmp_path):
    img = torch.rand(3, 16, 16)
    save_image(img, tmp_path / "p" / "a.png")
    save_image(img, tmp_path / "t" / "a.png")
    save_image(torch.rand(3, 16, 16), tmp_path / "p" / "b.png")
    save_image(torch.rand(3, 16, 16), tmp_path / "t" / "b.png")
    assert main(["metrics", str(tmp_path / "p"), str(tmp_path / "t"), "--json", str(tmp_path / "m.json"),
                 "--no-progress"]) == 0

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    res = json.loads((tmp_path / "m.json").read_text(), parse_constant=reject)
    assert res["per_image"][0]["psnr_y"] is None and res["psnr_y"] is None  # identical: infinite
    assert res["per_image"][0]["ssim_y"] == pytest.approx(1) and res["per_image"][1]["psnr_y"] > 0


class Counting(nn.Module):
    """Identity-ish model that counts its calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return [x * self.scale]


@pytest.mark.parametrize("bad", ["size", "small"])
def test_eval_checks_pairs_before_running_the_model(tmp_path, bad):
    from sdpsfnet.evaluation.inference import evaluate

    save_image(torch.rand(3, 16, 16), tmp_path / "input" / "1.png")
    save_image(torch.rand(3, 16, 16), tmp_path / "target" / "1.png")
    h, w = ((16, 16), (16, 18)) if bad == "size" else ((8, 40), (8, 40))
    save_image(torch.rand(3, *h), tmp_path / "input" / "2.png")
    save_image(torch.rand(3, *w), tmp_path / "target" / "2.png")
    model = Counting()
    msg = r"2\.png is 16x16 but its partner .*2\.png is 18x16" if bad == "size" else r"2\.png .*are 40x8.*11x11"
    with pytest.raises(ValueError, match=msg):
        evaluate(model, tmp_path, progress=False)
    assert model.calls == 0


def test_outputs_replace_files_atomically_with_the_umask(run, pairs, tmp_path):
    """Each output is a new file renamed into place: another name (hard link) of the old file
    keeps its content, and the new file gets 0o666 minus the umask."""
    outs = {"json": tmp_path / "m.json", "psf": tmp_path / "psf.png", "derain": tmp_path / "der" / "1.png"}
    for out in outs.values():
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(b"old")
        os.link(out, out.with_name("other-name-" + out.name))
    old = os.umask(0o027)
    try:
        assert main(["metrics", str(pairs / "input"), str(pairs / "target"), "--json", str(outs["json"]),
                     "--no-progress"]) == 0
        assert main(["show-psf", "--ckpt", str(run / "last.pt"), "--out", str(outs["psf"])]) == 0
        assert main(["derain", "--ckpt", str(run / "last.pt"), str(pairs / "input" / "1.png"),
                     "--out", str(outs["derain"].parent), "--no-progress"]) == 0
    finally:
        os.umask(old)
    for what, out in outs.items():
        assert out.with_name("other-name-" + out.name).read_bytes() == b"old", what
        assert out.read_bytes() != b"old" and (out.stat().st_mode & 0o777) == 0o640, what


def test_show_psf_figure_has_colour_bars_and_a_legend(run, pairs):
    from sdpsfnet.training.checkpoint import model_from_checkpoint
    from sdpsfnet.evaluation.psf_figures import psf_figure, psf_maps

    model, image = model_from_checkpoint(run / "last.pt"), load_image(pairs / "input" / "1.png")
    fig = psf_figure(model, image)
    colourbars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert sorted(colourbars) == ["kernel weight", "mixing weight (1st-99th pct)"]
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    dominant = psf_maps(model, image)[0]["weights"].argmax(0).unique().tolist()
    assert [t.get_text() for t in legend.get_texts()] == [f"k{j}" for j in dominant]
    basis_only = psf_figure(model)
    assert [ax.get_ylabel() for ax in basis_only.axes if ax.get_label() == "<colorbar>"] == ["kernel weight"]


# ---- help and the model zoo -----------------------------------------------------------------------

def test_help_texts_are_complete_and_plain(capsys):
    from sdpsfnet.cli import build_parser

    parser = build_parser()
    top = parser.format_help()
    assert "``" not in top and "export for deployment." in top  # the whole description, not a cut
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == {"train", "eval", "metrics", "derain", "synth", "show-psf", "models", "export"}
    for name, sp in subs.items():
        text = sp.format_help()
        assert "``" not in text, name
        if name not in ("train", "models"):
            assert "Never writes over an input file" in " ".join(text.split()), name


def test_train_choices_come_from_the_tables_that_define_them(monkeypatch):
    """--model, --preset, --recipe and --amp offer exactly the keys of MODELS, PRESETS, RECIPES and
    AMP_MODES, also after an entry is added to one of them (no copied lists)."""
    from sdpsfnet.cli import build_parser
    from sdpsfnet.models import MODELS
    from sdpsfnet.training import config

    monkeypatch.setitem(config.PRESETS, "extra-preset", {})
    monkeypatch.setitem(config.RECIPES, "extra-recipe", {})
    monkeypatch.setattr(config, "AMP_MODES", (*config.AMP_MODES, "extra-amp"))
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    choices = {a.dest: a.choices for a in subs["train"]._actions if a.choices is not None}
    assert choices == {"model": list(MODELS), "preset": list(config.PRESETS), "recipe": list(config.RECIPES),
                       "amp": list(config.AMP_MODES)}
    assert {"extra-preset", "extra-recipe", "extra-amp"} <= {c for v in choices.values() for c in v}


def test_models_command_and_zoo_repr(capsys):
    import sdpsfnet

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "params", "what"]
    public = [n for n in sdpsfnet.MODELS if not n.startswith("_")]
    assert [line.split()[0] for line in lines[1:]] == public
    for line, name in zip(lines[1:], public):
        params = sum(p.numel() for p in sdpsfnet.build_model(name).parameters())
        assert line.split()[1] == f"{params:,}" and line.endswith(sdpsfnet.MODELS.describe(name))
    text = repr(sdpsfnet.MODELS)
    assert "<function" not in text and "'sdpsfnet': \"SD-PSFNet, tau=3 (the paper's model)\"" in text
