"""Image quality metrics with the deraining conventions: PSNR and SSIM on Y (BT.601) and on RGB.

Conventions (the ones Rain100H/Rain100L/Test1200 tables are computed with):

- Images are quantized to 8-bit levels first (``round(clamp(x, 0, 1) * 255)``), exactly as saving
  a PNG and re-reading it, so scores of a tensor and of its saved file agree.
- Y channel: MATLAB ``rgb2ycbcr`` (ITU-R BT.601, studio swing) ``Y = 16 + 65.481 R + 128.553 G +
  24.966 B`` for R, G, B in [0, 1], i.e. 16..235 on the 0..255 scale. Y is kept as a float (as
  scikit-image and BasicSR do); MATLAB's uint8 path also rounds Y to integers, which moves PSNR by
  under 0.005 dB on the Rain100H dev pairs (see tests/test_metrics.py).
- PSNR: ``10 log10(data_range^2 / MSE)`` with MSE over every pixel and channel; identical images
  give ``inf``.
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid'
  filtering (no padding: the map covers the (H-10)x(W-10) interior), as the authors' MATLAB
  ``ssim_index.m`` used by deraining evaluation scripts; no automatic downsampling. So images
  must be at least 11 pixels on each side (``MIN_SIDE``). For RGB the
  per-channel SSIMs are averaged. This equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, which filters with reflect
  padding but then discards the same 5-pixel border before averaging.
- All arithmetic in float64 (SSIM's separable Gaussian filtering runs on the CPU with
  ``scipy.ndimage``, a dependency of scikit-image).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["rgb_to_y", "psnr", "ssim", "image_metrics", "score_folders", "quantize", "MIN_SIDE"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)
METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
MIN_SIDE = 11  # SSIM's window


def _check_image(name: str, t, ndims=(2, 3)) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {tuple(t.shape)}")


def _check_pair(pred: Tensor, target: Tensor, ndims=(2, 3)) -> None:
    _check_image("pred", pred, ndims)
    _check_image("target", target, ndims)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")


def quantize(img: Tensor) -> Tensor:
    """[0, 1] floats -> float64 8-bit levels ``round(clamp(img, 0, 1) * 255)`` (0..255)."""
    return torch.round(img.detach().double().clamp(0, 1) * 255)


def rgb_to_y(img: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) BT.601 luma on the 0..255 scale (16..235).

    MATLAB ``rgb2ycbcr`` convention; float, not rounded. Computed in float64 (float64 output).
    """
    if not isinstance(img, Tensor):
        raise TypeError(f"img must be a torch.Tensor, got {type(img).__name__}")
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"img must have shape (..., 3, H, W), got {tuple(img.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=img.device).view(3, 1, 1)
    return 16.0 + (img.double() * w).sum(dim=-3, keepdim=True)


def psnr(pred: Tensor, target: Tensor, data_range: float = 255.0) -> float:
    """PSNR in dB of one image, (C,H,W) or (H,W), on the 0..``data_range`` scale; inf if identical."""
    _check_pair(pred, target)
    mse = torch.mean((pred.double() - target.double()) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian; its outer product is MATLAB ``fspecial('gaussian', size, sigma)``."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``g`` x ``g``, 'valid' part only."""
    r = len(g) // 2
    a = ndimage.correlate1d(a, g, axis=-1, mode="constant")[..., r:-r]
    return ndimage.correlate1d(a, g, axis=-2, mode="constant")[..., r:-r, :]


def ssim(pred: Tensor, target: Tensor, data_range: float = 255.0) -> float:
    """SSIM of one image, (C,H,W) or (H,W), on the 0..``data_range`` scale (mean over channels).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid' filtering (separable, float64,
    on the CPU); both sides must be at least 11 pixels.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"ssim needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {tuple(pred.shape)}")
    x = pred.detach().double().cpu().numpy().reshape(-1, *pred.shape[-2:])
    y = target.detach().double().cpu().numpy().reshape(-1, *target.shape[-2:])
    g = _gaussian_1d()
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x ** 2
    syy = _filter_valid(y * y, g) - mu_y ** 2
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean(axis=(-2, -1)).mean())


def image_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Scores of one (3, H, W) image pair in [0, 1]: ``{psnr_y, ssim_y, psnr_rgb, ssim_rgb}``.

    Both images are quantized to 8-bit levels first (as saving a PNG), then scored on the 0..255
    scale; see the module docstring for the conventions.
    """
    _check_pair(pred, target, ndims=(3,))
    if pred.shape[0] != 3:
        raise ValueError(f"pred must have shape (3, H, W), got {tuple(pred.shape)}")
    p, t = quantize(pred), quantize(target)
    py, ty = rgb_to_y(p / 255), rgb_to_y(t / 255)
    return {
        "psnr_y": psnr(py, ty), "ssim_y": ssim(py, ty),
        "psnr_rgb": psnr(p, t), "ssim_rgb": ssim(p, t),
    }


def score_folders(pred_dir: str | os.PathLike, target_dir: str | os.PathLike,
                  progress: bool = True) -> dict:
    """Score every image in ``pred_dir`` against its namesake (same file stem, extension free; the
    ``rain-``/``norain-`` prefixes of the Rain100H release are ignored, as in
    :func:`sdpsfnet.data.find_pairs`) in ``target_dir``.

    Returns ``{psnr_y, ssim_y, psnr_rgb, ssim_rgb}`` (means over images) plus ``per_image``: a list
    of ``{name, psnr_y, ssim_y, psnr_rgb, ssim_rgb}`` in natural name order. A file without a
    partner, two files with one stem, a size mismatch or an image under ``MIN_SIDE`` pixels
    raises ValueError naming the file, before any image is scored. An image identical to its
    target has PSNR inf, and so does the mean.
    """
    from tqdm.auto import tqdm

    from ..data import check_pairs, images_by_key, load_image, match_by_key

    pairs = match_by_key(images_by_key(pred_dir, "pred_dir"), images_by_key(target_dir, "target_dir"),
                         "partner", "partner", f"target_dir {str(target_dir)!r}", f"pred_dir {str(pred_dir)!r}")
    check_pairs(pairs, MIN_SIDE, "SSIM's window needs")
    per_image = []
    for pred_path, target_path in tqdm(pairs, desc="scoring", disable=not progress):
        pred, target = load_image(pred_path), load_image(target_path)
        per_image.append({"name": pred_path.stem, **image_metrics(pred, target)})
    means = {k: sum(r[k] for r in per_image) / len(per_image) for k in METRIC_KEYS}
    return {**means, "per_image": per_image}
