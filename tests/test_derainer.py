"""sdpsfnet.Derainer, the inference API: on a tensor batch, a PIL image, a path and arrays it gives
what ``sdpsfnet derain`` writes for the same checkpoint (tiled and not); eval mode, no grad; and
``sdpsfnet --version``."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import psfops
import sdpsfnet
from sdpsfnet import Derainer
from sdpsfnet.training.checkpoint import save_checkpoint
from sdpsfnet.cli import main
from sdpsfnet.data import load_image
from sdpsfnet.models.registry import build_model

from realdata import VENDORED


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny SD-PSFNet checkpoint with random weights (perturbed, so no layer is an identity)."""
    torch.manual_seed(11)
    model = build_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ck") / "ck.pt"
    save_checkpoint({"model": model.state_dict(), "build_spec": model.build_spec, "step": 3}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two real rainy crops, 90x84 and 89x75 (not multiples of the model's 4; over the CLI's smallest
    tile of 64)."""
    root = tmp_path_factory.mktemp("photos")
    Image.open(VENDORED / "input" / "1.png").crop((0, 0, 90, 84)).save(root / "a.png")
    Image.open(VENDORED / "input" / "7.png").crop((3, 5, 92, 80)).save(root / "b.png")
    return root


def _cli(ckpt, inputs, out, *extra) -> dict[str, np.ndarray]:
    assert main(["derain", "--ckpt", str(ckpt), *map(str, inputs), "--out", str(out), "--device", "cpu",
                 "--no-progress", *extra]) == 0
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}


@pytest.mark.parametrize("tiling", [(512, 64), (64, 16)])  # whole images, and tiles
def test_api_equals_the_cli(ckpt, photos, tmp_path, tiling):
    tile, overlap = tiling
    cli = _cli(ckpt, [photos], tmp_path / "cli", "--tile", str(tile), "--overlap", str(overlap))
    derainer = Derainer.from_checkpoint(ckpt, device="cpu", tile=tile, overlap=overlap)
    for name in ("a.png", "b.png"):
        path = photos / name
        from_path = derainer.derain_image(path)  # a path gives a PIL image
        assert isinstance(from_path, Image.Image) and from_path.mode == "RGB"
        assert np.array_equal(np.asarray(from_path), cli[name])
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(derainer.derain_image(im)), cli[name])
        x = load_image(path)
        y = derainer(x[None])  # a (1,3,H,W) tensor gives (1,3,H,W) floats in [0,1]
        assert y.shape == x[None].shape and y.dtype == torch.float32 and not y.requires_grad
        assert np.array_equal(np.round(y[0].permute(1, 2, 0).double().numpy() * 255), cli[name])
        hwc = np.asarray(Image.open(path).convert("RGB"))  # a uint8 (H,W,3) array: the same kind back
        out = derainer.derain_image(hwc)
        assert out.dtype == np.uint8 and out.shape == hwc.shape and np.array_equal(out, cli[name])
        chw = derainer.derain_image(x)  # a float (3,H,W) tensor: the same layout and dtype
        assert chw.shape == x.shape and torch.equal(chw, y[0])


def test_batch_and_model_state(ckpt, photos):
    derainer = Derainer.from_checkpoint(ckpt, device="cpu")
    assert not derainer.model.training and next(derainer.model.parameters()).device.type == "cpu"
    a = load_image(photos / "a.png")
    batch = torch.stack([a, a.flip(-1)])
    y = derainer(batch)
    assert y.shape == batch.shape and 0 <= y.min() and y.max() <= 1
    for i in range(2):
        torch.testing.assert_close(y[i], derainer.derain_image(batch[i]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        derainer(a)
    with pytest.raises(ValueError, match="cuda|device"):
        Derainer.from_checkpoint(ckpt, device="cuda:99")


def test_grayscale_and_16_bit_files_come_back_as_the_cli_writes_them(ckpt, photos, tmp_path):
    Image.open(photos / "a.png").convert("L").save(tmp_path / "g.png")
    cli = _cli(ckpt, [tmp_path / "g.png"], tmp_path / "out")
    got = Derainer.from_checkpoint(ckpt, device="cpu").derain_image(tmp_path / "g.png")
    assert got.mode == "L" and np.array_equal(np.asarray(got), cli["g.png"])


def test_version_from_one_place(capsys):
    assert sdpsfnet.__version__ == psfops.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"sdpsfnet {psfops.__version__} (psfops {psfops.__version__}, torch {torch.__version__})"
    assert re.fullmatch(r"sdpsfnet \d+\.\d+\.\d+\S* \(psfops \S+, torch \S+\)", out)
