"""sdpsfnet.evaluation.metrics against scikit-image on real Rain100H pairs (tests/data, and the full test
set when $SDPSFNET_RAIN100H names it) and against hand computations;
sdpsfnet.training.losses against NumPy re-implementations on tiny tensors (the losses share this file:
the test files of this area are test_metrics / test_data / test_rain)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sdpsfnet.data import find_pairs, load_image, save_image
from sdpsfnet.training.losses import DerainLoss, charbonnier, edge_loss, frequency_loss
from sdpsfnet.evaluation.metrics import image_metrics, psnr, rgb_to_y, score_folders, ssim

from realdata import VENDORED, full_rain100h

# Our metrics and skimage both run in float64 with the same window: they agree to rounding.
# (The brief allows 0.05 dB / 0.005; anything above 1e-6 would mean a convention differs.)
PSNR_ATOL, SSIM_ATOL = 1e-6, 1e-6


def _uint8(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _skimage_scores(rainy: np.ndarray, clean: np.ndarray) -> dict:
    """The independent truth: skimage's PSNR/SSIM/rgb2ycbcr on uint8 HxWx3 arrays."""
    yr, yc = rgb2ycbcr(rainy)[..., 0], rgb2ycbcr(clean)[..., 0]  # float Y in 16..235
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    r, c = rainy.astype(np.float64), clean.astype(np.float64)
    return {
        "psnr_y": peak_signal_noise_ratio(yc, yr, data_range=255),
        "ssim_y": structural_similarity(yr, yc, **kw),
        "psnr_rgb": peak_signal_noise_ratio(c, r, data_range=255),
        "ssim_rgb": structural_similarity(r, c, channel_axis=-1, **kw),
    }


# ---- against scikit-image on real pairs -------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 19])
def test_image_metrics_match_skimage_on_rain100h(n):
    rainy_path, clean_path = VENDORED / "input" / f"{n}.png", VENDORED / "target" / f"{n}.png"
    ours = image_metrics(load_image(rainy_path), load_image(clean_path))
    truth = _skimage_scores(_uint8(rainy_path), _uint8(clean_path))
    for key in ("psnr_y", "psnr_rgb"):
        assert abs(ours[key] - truth[key]) < PSNR_ATOL, (key, ours[key], truth[key])
    for key in ("ssim_y", "ssim_rgb"):
        assert abs(ours[key] - truth[key]) < SSIM_ATOL, (key, ours[key], truth[key])
    # a real rainy/clean pair is far from identical: the comparison is not vacuous
    assert 5 < ours["psnr_y"] < 30 and 0.1 < ours["ssim_y"] < 0.95


def test_rainy_input_baseline_on_30_rain100h_test_pairs():
    """Do-nothing baseline: rainy input vs target over the first 30 Rain100H test pairs (the
    README's figures): ~13.8 dB PSNR-Y, ~12 dB RGB; skimage computed independently gives
    13.796 / 12.382."""
    pairs = find_pairs(full_rain100h())[:30]
    assert len(pairs) == 30
    ours_y, ours_rgb, truth_y, truth_rgb = [], [], [], []
    for rainy_path, clean_path in pairs:
        ur, uc = _uint8(rainy_path), _uint8(clean_path)
        r, c = (torch.from_numpy(a.copy()).permute(2, 0, 1).double() for a in (ur, uc))
        ours_y.append(psnr(rgb_to_y(r / 255), rgb_to_y(c / 255)))
        ours_rgb.append(psnr(r, c))
        truth_y.append(peak_signal_noise_ratio(rgb2ycbcr(uc)[..., 0], rgb2ycbcr(ur)[..., 0], data_range=255))
        truth_rgb.append(peak_signal_noise_ratio(uc, ur, data_range=255))
    mean_y, mean_rgb = np.mean(ours_y), np.mean(ours_rgb)
    assert abs(mean_y - np.mean(truth_y)) < PSNR_ATOL
    assert abs(mean_rgb - np.mean(truth_rgb)) < PSNR_ATOL
    assert 13.75 < mean_y < 13.85, mean_y       # the published ~13.8 dB
    assert 12.30 < mean_rgb < 12.45, mean_rgb   # the README's ~12 dB (12.38)


def test_matlab_rounded_y_differs_by_under_5_millidb():
    """MATLAB's uint8 rgb2ycbcr rounds Y; we keep it float (as skimage/BasicSR). Documented gap."""
    for n in (1, 7, 19):
        r, c = load_image(VENDORED / "input" / f"{n}.png"), load_image(VENDORED / "target" / f"{n}.png")
        yr, yc = rgb_to_y(r), rgb_to_y(c)
        assert abs(psnr(yr, yc) - psnr(torch.round(yr), torch.round(yc))) < 5e-3


# ---- known values ------------------------------------------------------------------------------

def test_rgb_to_y_bt601_values():
    img = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).T.reshape(3, 1, 5)
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 5)
    expected = torch.tensor([16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0], dtype=torch.float64)
    torch.testing.assert_close(y.flatten(), expected, rtol=0, atol=1e-9)
    assert rgb_to_y(torch.rand(2, 4, 3, 6, 7)).shape == (2, 4, 1, 6, 7)


def test_identical_images_give_inf_psnr_and_ssim_one():
    img = torch.rand(3, 40, 33)
    m = image_metrics(img, img.clone())
    assert m["psnr_y"] == math.inf and m["psnr_rgb"] == math.inf
    assert m["ssim_y"] == pytest.approx(1, abs=1e-12) and m["ssim_rgb"] == pytest.approx(1, abs=1e-12)


def test_psnr_of_a_constant_offset():
    target = torch.randint(0, 200, (3, 20, 30)).double()
    for d in (1.0, 5.0, 37.0):
        assert psnr(target + d, target) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)
        assert psnr(target[0] - d, target[0], data_range=1.0) == pytest.approx(-20 * math.log10(d), abs=1e-9)


def test_ssim_of_one_window_by_hand():
    """An 11x11 image has exactly one 'valid' window: SSIM is the Gaussian-weighted formula."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (11, 11)), rng.uniform(0, 255, (11, 11))
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w = g / g.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-12)
    # RGB: mean of the per-channel values
    xs, ys = rng.uniform(0, 255, (3, 15, 12)), rng.uniform(0, 255, (3, 15, 12))
    per = [ssim(torch.from_numpy(xs[c]), torch.from_numpy(ys[c])) for c in range(3)]
    assert ssim(torch.from_numpy(xs), torch.from_numpy(ys)) == pytest.approx(np.mean(per), abs=1e-12)


def test_image_metrics_quantize_like_a_png():
    """Differences under half an 8-bit level vanish, as they would after saving a PNG."""
    target = torch.randint(0, 256, (3, 16, 16)).float() / 255
    pred = target + (torch.rand_like(target) - 0.5) * (0.9 / 255)
    assert image_metrics(pred, target)["psnr_rgb"] == math.inf
    # out-of-range values are clamped to [0, 1] first, as a PNG writer does
    assert image_metrics(target + 2, target) == image_metrics(torch.ones_like(target), target)


def test_metric_errors_name_the_argument():
    with pytest.raises(ValueError, match="target"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(3, 8, 30), torch.rand(3, 8, 30))
    with pytest.raises(ValueError, match="pred"):
        image_metrics(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="img"):
        rgb_to_y(torch.rand(4, 8, 8))
    with pytest.raises(TypeError, match="pred"):
        psnr(np.zeros((3, 3)), torch.rand(3, 3))


# ---- score_folders -----------------------------------------------------------------------------

def _write(folder: Path, name: str, img: torch.Tensor) -> None:
    save_image(img, folder / name)


def test_score_folders_means_and_matching(tmp_path):
    imgs = {f"{i}": (torch.rand(3, 24, 20), torch.rand(3, 24, 20)) for i in (1, 2, 10)}
    for name, (p, t) in imgs.items():
        _write(tmp_path / "pred", f"{name}.png", p)
        _write(tmp_path / "gt", f"{name}.png", t)
    res = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert [r["name"] for r in res["per_image"]] == ["1", "2", "10"]
    for r in res["per_image"]:
        p, t = imgs[r["name"]]
        expected = image_metrics(p, t)  # the PNG round trip is the same quantization
        for key in expected:
            assert r[key] == pytest.approx(expected[key], abs=1e-9)
    for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert res[key] == pytest.approx(np.mean([r[key] for r in res["per_image"]]), abs=1e-12)


def test_score_folders_errors_name_the_file(tmp_path):
    _write(tmp_path / "pred", "a.png", torch.rand(3, 16, 16))
    _write(tmp_path / "pred", "b.png", torch.rand(3, 16, 16))
    _write(tmp_path / "gt", "a.png", torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"b\.png has no partner"):
        score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    _write(tmp_path / "gt", "b.png", torch.rand(3, 16, 18))
    with pytest.raises(ValueError, match=r"b\.png is 16x16 but its partner .*b\.png is 18x16"):
        score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    _write(tmp_path / "gt", "c.png", torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"c\.png has no partner"):
        score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)


def test_score_folders_names_an_image_too_small_for_ssim(tmp_path):
    """SSIM's 11x11 window: a 10-pixel image is refused naming the file, before any scoring."""
    _write(tmp_path / "pred", "a.png", torch.rand(3, 16, 16))
    _write(tmp_path / "gt", "a.png", torch.rand(3, 16, 16))
    _write(tmp_path / "pred", "small.png", torch.rand(3, 10, 30))
    _write(tmp_path / "gt", "small.png", torch.rand(3, 10, 30))
    with pytest.raises(ValueError, match=r"small\.png and .*small\.png are 30x10: .*11x11"):
        score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)


# ---- losses vs NumPy re-implementations ---------------------------------------------------------

def _np_charbonnier(d: np.ndarray, eps=1e-3) -> float:
    return float(np.mean(np.sqrt(d * d + eps * eps)))


def _np_laplacian(x: np.ndarray) -> np.ndarray:
    """MPRNet's laplacian_kernel with explicit loops: x - G(up(down(G(x)))), (B,C,H,W)."""
    k1 = np.array([0.05, 0.25, 0.4, 0.25, 0.05])
    k = np.outer(k1, k1)

    def blur(a):
        p = np.pad(a, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
        out = np.zeros_like(a)
        for u in range(5):
            for v in range(5):
                out += k[u, v] * p[:, :, u:u + a.shape[2], v:v + a.shape[3]]
        return out

    f = blur(x)
    up = np.zeros_like(f)
    up[:, :, ::2, ::2] = 4 * f[:, :, ::2, ::2]
    return x - blur(up)


def test_losses_match_numpy():
    pred, target = torch.rand(2, 3, 9, 12), torch.rand(2, 3, 9, 12)
    p, t = pred.double().numpy(), target.double().numpy()
    assert charbonnier(pred, target).item() == pytest.approx(_np_charbonnier(p - t), rel=1e-6)
    assert charbonnier(pred, pred).item() == pytest.approx(1e-3, rel=1e-6)  # eps floor, MPRNet's form
    assert edge_loss(pred, target).item() == pytest.approx(
        _np_charbonnier(_np_laplacian(p) - _np_laplacian(t)), rel=1e-5)
    freq = np.mean(np.abs(np.fft.fft2(p) - np.fft.fft2(t)))
    assert frequency_loss(pred, target).item() == pytest.approx(freq, rel=1e-5)


def test_derain_loss_sums_weighted_terms_over_outputs():
    target = torch.rand(2, 3, 16, 16)
    outs = [torch.rand(2, 3, 16, 16, requires_grad=True) for _ in range(3)]
    loss = DerainLoss()(outs, target)
    t = target.double().numpy()
    expected = 0.0
    for o in outs:
        p = o.detach().double().numpy()
        expected += (_np_charbonnier(p - t) + 0.05 * _np_charbonnier(_np_laplacian(p) - _np_laplacian(t))
                     + 0.01 * float(np.mean(np.abs(np.fft.fft2(p) - np.fft.fft2(t)))))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outs)
    assert DerainLoss()(outs[0], target).item() == pytest.approx(DerainLoss()([outs[0]], target).item())


def test_derain_loss_is_float32_under_autocast():
    target = torch.rand(1, 3, 16, 16)
    out = torch.rand(1, 3, 16, 16).bfloat16()
    plain = DerainLoss()([out], target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = DerainLoss()([out], target)
    assert auto.dtype == torch.float32 and auto.item() == plain.item()


def test_loss_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        DerainLoss()([torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4)], torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="edge_weight"):
        DerainLoss(edge_weight=-1)
    with pytest.raises(ValueError, match="pred"):
        charbonnier(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
