"""Built-in synthetic rain, rendered with psfops: a training set that needs no download.

What the renderer models (``render_rain``), per image:

- Rain streaks in the physical scatter form: each drop spreads its light along its streak,
  ``psfops.psf_conv_transpose(drops, weights, basis)`` (the exact adjoint of ``psf_conv``: every
  source pixel spreads its value by the PSF of where *it* sits, where the gather ``psf_conv``
  would collect each output pixel through the PSF of the output position). So a drop's streak is
  exactly the kernel its own weights pick, and per-pixel random weights give per-drop random
  streaks (the gather form would cut such streaks into pieces of different kernels).
- Streak kernels (``streak_kernels``) are thin and anti-aliased: a Gaussian cross-section of FWHM
  ``width`` (sub-pixel to ~2 px) integrated over the pixel footprint, with peak 1 for a wide
  streak, so a sub-pixel streak covers only part of a pixel and is translucent (peak about
  ``1.06 * width``); along the streak a flat middle with cosine-faded ends (``taper``). The basis
  of a layer is a grid of angles x lengths x widths (J = 3 x 2 x 2 = 12): the angle weights are
  smooth in space (bilinear "hat" weights over smooth random fields: wind and perspective make
  the angle drift across the image), the length and width weights are random per pixel, so every
  drop gets its own length and width; its brightness is random too.
- Several depth layers (2 to 4): a near layer has long, wider, brighter, sparse streaks, a far
  layer short, thin, dim, dense ones; a wind angle per image (vertical +- 8 degrees) and per
  layer an offset (+- 14 degrees), so layers can cross as Rain100H's streak directions do.
  Layers are rendered on a padded canvas so streaks enter from outside the frame.
- Blending: the layers' light accumulates as ``S = 1 - exp(-sum of layers)`` (overlapping streaks
  saturate smoothly), and the streaks add their light to the image, cut at white:
  ``min(J + S, 1)``. Additive light is what the rain layer of Rain100H shows: ``R = rainy - clean``
  is the same on dark and mid-grey backgrounds (``mid_dark`` of :func:`rain_layer_stats`: 0.98)
  up to the clip at ``1 - J``; a screen blend ``J + S(1 - J)`` would dim the rain on bright
  backgrounds (0.6).
- A faint veil from the rain accumulation, with the atmospheric model of Yang et al. (CVPR 2017,
  the Rain100H generator): ``I = t * min(J + S, 1) + (1 - t) * A`` (clipped to [0, 1]), with
  ``J`` the clean image, transmission ``t`` smooth in space (0.98..1.0, +-0.05; clipped to 1) and
  a near-white airlight ``A`` (0.9..1.0, tinted by up to 4% per channel). Rain100H's rain layer
  hardly darkens anything and its 5% quantile is about 0.005, so the veil is weak.

The default ranges (:class:`RainConfig`) were set by matching the statistics of the rain layer
(rainy - clean, luma) of Rain100H: streak width (autocorrelation FWHM across the streaks),
orientation spread (structure tensor), additivity (``mid_dark``), intensity quantiles (a low
floor: most of the brightening is distinct streaks, little is veil) and rainy-vs-clean PSNR-Y
(run ``python -m sdpsfnet.data.rain DIR`` on a paired folder to print them next to this renderer's).

What it does not model: depth-dependent haze (there is no depth map, so ``t`` is only a smooth
random field), refraction through drops on the lens, splashes, fog glow around lights, sensor
noise, defocus of near drops, and colour of streaks beyond the airlight tint. So it is a
stand-in for smoke tests, demos and pre-training, not a substitute for Rain100H/Rain13K.

Randomness comes only from the ``torch.Generator`` passed in (a CPU generator; all draws happen on
the CPU), so a render is a pure function of ``(clean, generator state)``. The scatter runs where
``clean`` lives, through the public ``psfops.psf_conv_transpose`` (the fused Triton kernel on
CUDA, the fast CPU path or the reference on the CPU).

``SyntheticRain`` pairs this renderer with clean photographs that ship inside scikit-image
(``skimage.data``), and ``synth_folder`` renders a folder of clean images into a paired folder.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

import psfops

from . import images_by_key, natural_key, random_crop, random_flip_rot, read_image, save_as

__all__ = [
    "RainConfig", "streak_kernels", "streak_basis", "layer_inputs", "render_rain", "rain_layer_stats",
    "SyntheticRain", "synth_folder", "TRAIN_PHOTOS", "VAL_PHOTOS",
]


@dataclass(frozen=True)
class RainConfig:
    """Ranges the renderer samples from; the defaults give heavy rain (Rain100H-like).

    ``depth`` in [0, 1] is drawn per layer (0 far, 1 near) and interpolates the per-layer
    parameters given as (far, near): length, width and brightness grow with depth, density
    falls. Within a layer every drop draws its own length (``length`` of the layer times
    1 +- ``length_spread``), width (``width`` times 1 +- ``width_spread``) and brightness (the
    layer's times 0.5..1). All widths are FWHM of the Gaussian cross-section, in pixels.

    Fields:
        layers: (min, max) number of depth layers, inclusive.
        angle: (low, high) wind angle from vertical in degrees, one per image; positive leans
            right at the bottom.
        angle_jitter: per-layer angle offset, degrees (+-).
        drift: (low, high) angle drift across the image, degrees (+-), one per layer.
        length: streak length (far, near), pixels.
        length_spread: per-drop relative length spread (+-).
        width: streak FWHM (far, near), pixels.
        width_spread: per-drop relative width spread (+-).
        taper: fraction of each half-streak that fades out (cosine) at the ends.
        brightness: streak light (far, near): the peak a streak of width >= ~1.5 px adds before
            the soft saturation; thinner streaks add less (partial pixel coverage).
        density: drops per pixel (far, near).
        transmission: (low, high) haze transmission t.
        airlight: (low, high) airlight A (grey level).
    """

    layers: tuple[int, int] = (2, 4)
    angle: tuple[float, float] = (-8.0, 8.0)
    angle_jitter: float = 14.0
    drift: tuple[float, float] = (2.0, 8.0)
    length: tuple[float, float] = (25.0, 90.0)
    length_spread: float = 0.35
    width: tuple[float, float] = (0.6, 1.8)
    width_spread: float = 0.35
    taper: float = 0.1
    brightness: tuple[float, float] = (0.39, 0.87)
    density: tuple[float, float] = (0.0054, 0.0016)
    transmission: tuple[float, float] = (0.98, 1.0)
    airlight: tuple[float, float] = (0.9, 1.0)


DEFAULT = RainConfig()
_N_ANGLES, _N_LENGTHS, _N_WIDTHS = 3, 2, 2  # basis grid: J = 12 streak kernels per layer


def _uniform(g: torch.Generator, lo: float, hi: float, shape=()) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _gauss_pixel(across: Tensor, sigma: Tensor) -> Tensor:
    """Pixel-integrated Gaussian of peak 1: the mean of exp(-a^2/2 sigma^2) over [across-1/2, across+1/2]."""
    s = sigma * math.sqrt(2)
    return sigma * math.sqrt(math.pi / 2) * (torch.erf((across + 0.5) / s) - torch.erf((across - 0.5) / s))


def streak_kernels(angles_deg: Tensor, lengths: Tensor, widths: Tensor | float, k: int,
                   taper: float = 0.3) -> Tensor:
    """Thin anti-aliased streak kernels, (J,) angles, lengths, widths -> (J, k, k) float32.

    Angle 0 is a vertical streak, positive angles lean right at the bottom (wind from the left).
    A pixel's value is ``across(a) * along(l)`` with ``a``, ``l`` its offsets across and along the
    streak: ``across`` the Gaussian of FWHM ``width`` and peak 1 averaged over the pixel (so a
    sub-pixel streak is translucent: its peak is about ``1.06 * width``, and its light across is
    ``1.06 * width`` for any width), ``along`` 1 on the middle of the streak and fading to 0 by a
    half cosine over the last ``taper`` of each half length (a linear 1-pixel ramp if that is
    shorter). Values under 1e-4 are set to 0. Kernels are centrally symmetric (a drop's light
goes both ways along its streak).
    """
    r = torch.arange(k, dtype=torch.float64) - k // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    th = torch.deg2rad(angles_deg.double()).view(-1, 1, 1)
    along = yy * torch.cos(th) + xx * torch.sin(th)
    across = xx * torch.cos(th) - yy * torch.sin(th)
    widths = torch.as_tensor(widths, dtype=torch.float64).expand(th.shape[0]).reshape(-1, 1, 1)
    sigma = widths / (2 * math.sqrt(2 * math.log(2)))
    prof_across = _gauss_pixel(across, sigma)
    half_l = lengths.double().view(-1, 1, 1) / 2
    fade = (taper * half_l).clamp(min=1.0)
    u = ((half_l + 0.5 - along.abs()) / fade).clamp(0, 1)  # 0 past the end .. 1 inside the flat part
    prof_along = 0.5 - 0.5 * torch.cos(math.pi * u)
    kern = prof_across * prof_along
    return torch.where(kern < 1e-4, 0.0, kern).float()  # exact zeros off the streak (no 1e-30 tails)


def _smooth_field(g: torch.Generator, h: int, w: int, cells: int = 3) -> Tensor:
    """(h, w) smooth random field in [0, 1]: a (cells+1)^2 grid of uniforms, bilinearly upsampled."""
    grid = torch.rand(1, 1, cells + 1, cells + 1, generator=g)
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)[0, 0]


def _hat_weights(pos: Tensor, n: int) -> Tensor:
    """(h, w) positions in [0, n-1] -> (n, h, w) linear-interpolation weights (sum 1 per pixel)."""
    idx = torch.arange(n, dtype=pos.dtype).view(n, 1, 1)
    return (1 - (pos.unsqueeze(0) - idx).abs()).clamp(min=0)


def streak_basis(g: torch.Generator, wind: float, depth: float,
                 cfg: RainConfig = DEFAULT) -> tuple[Tensor, tuple[float, float, float]]:
    """One layer's (J, k, k) basis (angles x lengths x widths, angle-major) and its
    (length, width, brightness) at ``depth``; draws the layer's angle jitter and drift from ``g``."""
    lerp = lambda rng: rng[0] + (rng[1] - rng[0]) * depth  # noqa: E731
    length, width, bright = lerp(cfg.length), lerp(cfg.width), lerp(cfg.brightness)
    angle = wind + float(_uniform(g, -cfg.angle_jitter, cfg.angle_jitter))
    drift = float(_uniform(g, *cfg.drift))
    angles = torch.linspace(angle - drift, angle + drift, _N_ANGLES)
    lengths = torch.tensor([length * (1 - cfg.length_spread), length * (1 + cfg.length_spread)])
    widths = torch.tensor([width * (1 - cfg.width_spread), width * (1 + cfg.width_spread)])
    ga, gl, gw = torch.meshgrid(angles, lengths, widths, indexing="ij")
    k = 2 * math.ceil((lengths[-1].item() + 3 * widths[-1].item()) / 2 + 1) + 1
    basis = streak_kernels(ga.reshape(-1), gl.reshape(-1), gw.reshape(-1), k, cfg.taper)
    return basis, (length, width, bright)


def layer_inputs(g: torch.Generator, h: int, w: int, wind: float, depth: float,
                 cfg: RainConfig = DEFAULT) -> tuple[Tensor, Tensor, Tensor, int]:
    """One layer's scatter inputs on the CPU: ``(drops (1,1,H,W), weights (1,J,H,W), basis (J,k,k),
    pad)`` for the canvas padded by ``pad = k // 2`` on each side (``H = h + 2 pad``); the layer's
    streak light is ``psf_conv_transpose(drops, weights, basis)`` cropped by ``pad``."""
    basis, (_, _, bright) = streak_basis(g, wind, depth, cfg)
    density = cfg.density[0] + (cfg.density[1] - cfg.density[0]) * depth
    pad = basis.shape[-1] // 2
    H, W = h + 2 * pad, w + 2 * pad  # padded canvas: streaks from drops outside the frame
    wa = _hat_weights(_smooth_field(g, H, W) * (_N_ANGLES - 1), _N_ANGLES)         # smooth: wind drift
    wl = _hat_weights(torch.rand(H, W, generator=g) * (_N_LENGTHS - 1), _N_LENGTHS)  # per drop
    ww = _hat_weights(torch.rand(H, W, generator=g) * (_N_WIDTHS - 1), _N_WIDTHS)    # per drop
    weights = (wa[:, None, None] * wl[None, :, None] * ww[None, None, :]).reshape(1, -1, H, W)
    drops = (torch.rand(1, 1, H, W, generator=g) < density).float()
    drops = drops * (bright * (0.5 + 0.5 * torch.rand(1, 1, H, W, generator=g)))
    return drops, weights, basis, pad


def _streak_layer(g: torch.Generator, h: int, w: int, wind: float, depth: float,
                  cfg: RainConfig, device: torch.device) -> Tensor:
    """One layer's streak light, (h, w) float32 >= 0 on ``device``: drops scattered by their PSFs."""
    drops, weights, basis, pad = layer_inputs(g, h, w, wind, depth, cfg)
    streaks = psfops.psf_conv_transpose(drops.to(device), weights.to(device), basis.to(device))
    streaks = streaks[0, 0, pad:pad + h, pad:pad + w]
    return torch.where(streaks < 1e-6, 0.0, streaks)  # FFT-based CPU paths leave ~1e-8 round-off everywhere


def render_rain(clean: Tensor, generator: torch.Generator, *, config: RainConfig = DEFAULT,
                haze: bool = True, return_streaks: bool = False):
    """Add synthetic rain (streak layers + haze) to clean images; see the module docstring.

    Args:
        clean: (B, 3, H, W) float in [0, 1], any device.
        generator: a CPU ``torch.Generator``; the only source of randomness (each image in the
            batch gets its own draws, in batch order).
        config: sampling ranges (:class:`RainConfig`).
        haze: apply the atmospheric veil; without it ``rainy = min(clean + S, 1)`` (additive
            light), changed only where streaks are.
        return_streaks: also return the (B, 1, H, W) streak opacity ``S`` in [0, 1).
    Returns:
        rainy (B, 3, H, W) in [0, 1], dtype and device of ``clean`` (and ``S`` if asked).
    """
    if not isinstance(clean, Tensor) or not clean.is_floating_point():
        raise TypeError(f"clean must be a floating torch.Tensor, got {getattr(clean, 'dtype', type(clean))}")
    if clean.dim() != 4 or clean.shape[1] != 3:
        raise ValueError(f"clean must have shape (B, 3, H, W), got {tuple(clean.shape)}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("generator must be a CPU torch.Generator")
    B, _, h, w = clean.shape
    device = clean.device
    out, maps = [], []
    for b in range(B):
        n_layers = int(torch.randint(config.layers[0], config.layers[1] + 1, (), generator=generator))
        wind = float(_uniform(generator, *config.angle))
        depths = sorted(float(d) for d in torch.rand(n_layers, generator=generator, dtype=torch.float64))
        light = sum(_streak_layer(generator, h, w, wind, d, config, device) for d in depths)
        streaks = (-light.view(1, 1, h, w)).exp().neg().add(1)  # 1 - exp(-light): soft saturation
        rainy = clean[b:b + 1].float() + streaks  # additive light, clipped at white below
        if haze:
            t = _uniform(generator, *config.transmission)
            t_map = (t + 0.05 * (2 * _smooth_field(generator, h, w) - 1)).clamp(0, 1).to(device)
            grey = float(_uniform(generator, *config.airlight))
            tint = (1 + 0.04 * (2 * torch.rand(3, generator=generator) - 1)).view(1, 3, 1, 1)
            airlight = (grey * tint).clamp(0, 1).to(device)
            rainy = t_map * rainy + (1 - t_map) * airlight
        out.append(rainy.clamp(0, 1).to(clean.dtype))
        maps.append(streaks)
    rainy = torch.cat(out) if out else clean.clone()
    if return_streaks:
        return rainy, (torch.cat(maps) if maps else clean.new_zeros(0, 1, h, w))
    return rainy


# ---- rain-layer statistics: compare rendered pairs with real ones ------------------------------

def _luma(img: Tensor) -> Tensor:
    """(3, H, W) in [0, 1] -> (H, W) BT.601 luma in [0, 1] (the Y that PSNR-Y uses)."""
    return (65.481 * img[0] + 128.553 * img[1] + 24.966 * img[2] + 16) / 255


def _gblur(x: Tensor, s: float) -> Tensor:
    r = max(1, int(3 * s))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * s * s))
    k = k / k.sum()
    x = F.conv2d(F.pad(x[None, None], (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))[0, 0]


def rain_layer_stats(rainy: Tensor, clean: Tensor) -> dict[str, float]:
    """Statistics of the rain layer ``R = Y(rainy) - Y(clean)`` of one (3, H, W) pair in [0, 1].

    - ``psnr_y``: rainy vs clean (8-bit luma, as ``sdpsfnet eval``).
    - ``width``: streak FWHM in px, from the autocorrelation of the streak layer (``R`` minus its
      Gaussian blur of sigma 4 px, which removes the haze) across the dominant orientation: its
      FWHM divided by sqrt(2) (exact for a Gaussian cross-section).
    - ``angle``: dominant streak angle from vertical in degrees (positive leans right at the
      bottom), from the structure tensor; ``spread``: the energy-weighted circular standard
      deviation of the local orientations around it, degrees.
    - ``mean``, ``q05``, ``q50``, ``q90``, ``q99``: mean and quantiles of ``R``; ``neg``: the
      fraction of pixels darkened by more than 0.02; ``streak_std``: std of the streak layer.
    - ``mid_dark``: mean ``R`` where ``Y(clean)`` is in [0.4, 0.6) over mean ``R`` where it is
      under 0.2: about 1 when the rain adds the same light on any background (additive light),
      about 0.6 for a screen blend ``J + S(1 - J)``; NaN if either range is empty.
    """
    yr, yc = _luma(rainy.double()), _luma(clean.double())
    R = yr - yc
    mse = float(((torch.round(yr * 255) - torch.round(yc * 255)) ** 2).mean())
    hp = R - _gblur(R, 4.0)
    gy, gx = torch.gradient(hp)
    jxx, jyy, jxy = _gblur(gx * gx, 1.5), _gblur(gy * gy, 1.5), _gblur(gx * gy, 1.5)
    z = torch.complex(jxx - jyy, 2 * jxy)  # doubled angle of the gradient orientation
    zm = z.sum() / z.abs().sum().clamp_min(1e-12)
    streak = 0.5 * math.atan2(zm.imag.item(), zm.real.item()) + math.pi / 2  # streaks are across the gradients
    dx, dy = math.cos(streak), math.sin(streak)  # (x right, y down)
    if dy < 0:
        dx, dy = -dx, -dy
    spread = math.degrees(0.5 * math.sqrt(max(-2 * math.log(max(float(zm.abs()), 1e-9)), 0.0)))
    a = hp - hp.mean()
    H, W = a.shape
    fa = torch.fft.rfft2(a, s=(2 * H, 2 * W))
    ac = torch.fft.fftshift(torch.fft.irfft2(fa * fa.conj(), s=(2 * H, 2 * W)))
    ac = ac / ac[H, W]
    ts = torch.arange(0, 8.01, 0.05, dtype=torch.float64)  # along the normal (dy, -dx)
    grid = torch.stack([(W + ts * dy) / (2 * W - 1) * 2 - 1, (H - ts * dx) / (2 * H - 1) * 2 - 1], -1)
    prof = F.grid_sample(ac[None, None], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)[0, 0, 0]
    below = (prof < 0.5).nonzero()
    width = 2 * float(ts[below[0, 0]]) / math.sqrt(2) if len(below) else float("nan")
    yc_dark, yc_mid = yc < 0.2, (yc >= 0.4) & (yc < 0.6)
    mid_dark = float(R[yc_mid].mean() / R[yc_dark].mean()) if yc_dark.any() and yc_mid.any() else float("nan")
    q = torch.quantile(R.flatten().float(), torch.tensor([0.05, 0.5, 0.9, 0.99])).tolist()
    return dict(psnr_y=10 * math.log10(255 ** 2 / max(mse, 1e-10)), width=width,
                angle=math.degrees(math.atan2(dx, dy)), spread=spread, mid_dark=mid_dark, mean=float(R.mean()),
                q05=q[0], q50=q[1], q90=q[2], q99=q[3], neg=float((R < -0.02).double().mean()),
                streak_std=float(hp.std()))


# ---- built-in dataset: clean photographs shipped inside scikit-image ---------------------------

# skimage.data names (all ship with scikit-image, no download). "cat" is the same photo as
# "chelsea", so it is in neither list; non-photographs (text, microscopy, logos) are left out.
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle", "camera")
VAL_PHOTOS = ("coffee", "chelsea")
VAL_SEED = 20240601  # fixed: validation pairs are identical every run


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Tensor | None:
    """(3, H, W) float32 in [0, 1] for a skimage.data photo, or None if it cannot be loaded here."""
    import numpy as np
    import skimage.data

    try:
        if name == "motorcycle":
            arr = skimage.data.stereo_motorcycle()[0]  # left view
        else:
            arr = getattr(skimage.data, name)()
    except Exception as e:  # a future scikit-image may need a download (pooch) for some images
        warnings.warn(f"skimage.data.{name} is unavailable ({type(e).__name__}: {e}); skipping it")
        return None
    arr = np.asarray(arr, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float().div_(255)


def _photos(names) -> list[tuple[str, Tensor]]:
    loaded = [(n, _photo(n)) for n in names]
    return [(n, p) for n, p in loaded if p is not None]


class SyntheticRain(Dataset):
    """Rainy/clean pairs rendered on the fly from photographs inside scikit-image.

    ``split="train"``: ``size`` items (default 256) per epoch; item ``i`` is a random ``crop`` x
    ``crop`` window of training photo ``i % 4`` (astronaut, rocket, motorcycle, camera), randomly
    flipped/rotated, with freshly rendered rain (rendered after the flip/rotation, so streaks stay
    near vertical as in real photographs). All randomness (crop, flips, rain) comes from
    torch's global RNG, so ``torch.manual_seed`` and DataLoader worker seeding apply; ``crop=None``
    gives whole photos.

    ``split="val"``: the held-out photos coffee and chelsea, whole (center-cropped to multiples of 8
    so 3-scale U-Nets need no padding; ``crop`` is ignored), rain rendered with fixed seeds, so
    the pairs are identical every run. ``size`` (default 2) items cycle over the photos, each with
    its own seed. Items are cached after the first render.

    ``__getitem__(i) -> (rainy (3,h,w), clean (3,h,w), name)`` like :class:`PairedImages`.
    """

    def __init__(self, split: str = "train", crop: int | None = 128, size: int | None = None,
                 config: RainConfig = DEFAULT):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be a positive int or None, got {crop!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        self.split, self.crop, self.config = split, crop, config
        self.photos = _photos(TRAIN_PHOTOS if split == "train" else VAL_PHOTOS)
        if not self.photos:
            raise RuntimeError(f"no skimage.data photo of the {split} split could be loaded")
        self.size = size if size is not None else (256 if split == "train" else len(self.photos))
        self._cache: dict[int, tuple[Tensor, Tensor, str]] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} items")
        name, photo = self.photos[index % len(self.photos)]
        if self.split == "val":
            if index not in self._cache:
                h, w = photo.shape[1] // 8 * 8, photo.shape[2] // 8 * 8
                top, left = (photo.shape[1] - h) // 2, (photo.shape[2] - w) // 2
                clean = photo[:, top:top + h, left:left + w].contiguous()
                g = torch.Generator().manual_seed(VAL_SEED + index)
                rainy = render_rain(clean[None], g, config=self.config)[0]
                self._cache[index] = (rainy, clean, f"{name}_{index}")
            return self._cache[index]
        clean = photo if self.crop is None else random_crop([photo], self.crop)[0]
        (clean,) = random_flip_rot([clean])
        g = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ()).item()))
        return render_rain(clean[None], g, config=self.config)[0], clean, f"{name}_{index}"


def synth_folder(clean_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0,
                 config: RainConfig = DEFAULT, progress: bool = True) -> list[tuple[Path, Path]]:
    """Render rain on every image of ``clean_dir``: writes ``out_dir/input/<stem>.png`` (rainy) and
    ``out_dir/target/<stem>.png`` (the clean image as PNG), a folder :class:`PairedImages` reads.
    Both are written in the clean file's bit depth and grayscale/colour
    (:func:`sdpsfnet.data.save_as`), so a 16-bit photo gives a 16-bit pair.

    Image ``i`` in natural name order is rendered with ``torch.Generator().manual_seed(seed + i)``,
    so the output is reproducible. Returns the written (input, target) paths. Before anything is
    rendered, ValueError naming the file if an output would be one of the clean images (e.g.
    ``clean_dir`` is ``out_dir/input``): the originals are never overwritten.
    """
    from tqdm.auto import tqdm

    from ..files import refuse_overwrite

    found = images_by_key(clean_dir, "clean_dir")  # one image per name, else outputs would collide
    files = [found[k] for k in sorted(found, key=natural_key)]
    out_dir = Path(out_dir)
    pairs = [(out_dir / "input" / f"{p.stem}.png", out_dir / "target" / f"{p.stem}.png") for p in files]
    refuse_overwrite([q for pair in pairs for q in pair], files)
    for i, (path, pair) in enumerate(tqdm(list(zip(files, pairs)), desc="synth", disable=not progress)):
        clean, fmt = read_image(path)
        rainy = render_rain(clean[None], torch.Generator().manual_seed(seed + i), config=config)[0]
        save_as(rainy, pair[0], fmt)
        save_as(clean, pair[1], fmt)
    return pairs


def _nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN (NaN if none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _main(argv=None) -> None:
    """``python -m sdpsfnet.data.rain DIR [--n N] [--seed S]``: the rain-layer statistics
    (:func:`rain_layer_stats`, means over the pairs where they are defined) of a real paired folder DIR (input/ + target/
    or rain/ + norain/) next to those of this renderer's rain on the same clean targets."""
    import argparse

    from . import PairedImages

    p = argparse.ArgumentParser(prog="python -m sdpsfnet.data.rain", description=_main.__doc__)
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=None, help="use the first N pairs only")
    p.add_argument("--seed", type=int, default=1000)
    a = p.parse_args(argv)
    ds = PairedImages(a.dir, train=False)
    rows: dict[str, list[dict[str, float]]] = {"real": [], "rendered": []}
    for i in range(len(ds) if a.n is None else min(a.n, len(ds))):
        rainy, clean, _ = ds[i]
        rows["real"].append(rain_layer_stats(rainy, clean))
        ours = render_rain(clean[None], torch.Generator().manual_seed(a.seed + i))[0]
        rows["rendered"].append(rain_layer_stats(torch.round(ours * 255) / 255, clean))  # 8 bits, as saved
    keys = ["psnr_y", "width", "|angle|", "spread", "mid_dark", "mean", "q05", "q50", "q90", "q99", "neg", "streak_std"]
    print(f"{'':10s}" + "".join(f"{k:>11s}" for k in keys))
    for name, rs in rows.items():
        for r in rs:
            r["|angle|"] = abs(r["angle"])
        print(f"{name:10s}" + "".join(f"{_nanmean([r[k] for r in rs]):11.3f}" for k in keys))


if __name__ == "__main__":
    _main()
