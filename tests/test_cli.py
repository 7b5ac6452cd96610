"""The ``sdpsfnet`` command: every subcommand on tiny inputs (tiny model, 16 px crops, 2 steps).

Images: two Rain100H pairs cropped to 48x40 from ../shared/data/rain100h-dev when present, else
synthetic pairs written here. Metric values are checked against scikit-image as the independent
truth."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from sdpsfnet.cli import main
from sdpsfnet.data import load_image, save_image
from sdpsfnet.inference import derain_image

RAIN100H = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "rain100h-dev"
METRIC_KEYS = {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}


def _u8(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A paired folder (input/ + target/) of two small images."""
    root = tmp_path_factory.mktemp("pairs")
    for sub in ("input", "target"):
        (root / sub).mkdir()
    if RAIN100H.is_dir():
        for name in ("1.png", "2.png"):
            for src, sub in (("input", "input"), ("target", "target")):
                Image.open(RAIN100H / src / name).crop((100, 60, 148, 100)).save(root / sub / name)
    else:
        g = torch.Generator().manual_seed(0)
        for name in ("1.png", "2.png"):
            clean = torch.rand(3, 40, 48, generator=g) * 0.5 + 0.25
            streaks = (torch.rand(1, 40, 48, generator=g) > 0.9).float() * 0.5
            save_image(clean, root / "target" / name)
            save_image((clean + streaks).clamp(0, 1), root / "input" / name)
    return root


@pytest.fixture(scope="module")
def run(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "tiny", "--data", str(pairs), "--steps", "2", "--crop", "16",
               "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


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
    save_image(torch.rand(3, 50, 44, generator=g), tmp_path / "more" / "big.jpg")
    ck = str(run / "last.pt")
    assert main(["derain", "--ckpt", ck, str(tmp_path / "in" / "odd.png"), str(tmp_path / "more"),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "out" / "odd.png").size == (37, 29)
    assert Image.open(tmp_path / "out" / "big.png").size == (44, 50)
    # Tiled path (tiles smaller than the image): same size, close to the whole-image result.
    assert main(["derain", "--ckpt", ck, str(tmp_path / "more"), "--out", str(tmp_path / "tiled"),
                 "--tile", "24", "--overlap", "8", "--no-progress"]) == 0
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
    for cmd in ("train", "eval", "metrics", "derain", "synth", "show-psf"):
        assert cmd in r.stdout


def test_torchrun_two_cpu_processes(pairs, tmp_path):
    """The same ``train`` under torchrun: 2 processes, gloo, DistributedSampler, rank 0 writes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "sdpsfnet", "train", "--preset", "tiny", "--data", str(pairs), "--steps", "2",
           "--crop", "16", "--batch-size", "1", "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # own process group: a hang kills workers too
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["rng"]) == 2
    # 2 pairs over 2 ranks with batch 1: one step per epoch, so 2 steps = 2 epochs.
    assert ck["epoch"] == 2
    assert stdout.count("validation PSNR-Y") == 1  # only rank 0 reports


def test_psf_maps_for_a_self_predicting_dynamic_psf():
    """psf_maps finds psfops.nn.DynamicPSF modules in any model and reports the weights they used."""
    from psfops.nn import DynamicPSF

    from sdpsfnet.inference import psf_maps

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
