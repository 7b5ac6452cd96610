"""Built-in synthetic rain, rendered with psfops: a training set that needs no download.

What the renderer models (``render_rain``), per image:

- Rain streaks as motion-blurred drops: a sparse random field of drops (density, brightness) is
  filtered with spatially varying line PSFs, ``psf_conv(drops, weights, basis)``. The basis holds
  anti-aliased line kernels (peak 1, so a streak's brightness does not depend on its length) on a
  grid of angles x lengths; smooth random per-pixel ``weights`` (bilinear "hat" weights over the
  grid, a partition of unity) make the streak angle and length drift across the image, as wind
  and perspective do.
- Several layers (2 or 3) at different depths: a near layer has long, wide, bright, sparse
  streaks, a far layer short, thin, dim, dense ones; all share the wind angle (vertical +- 30
  degrees), each with a small jitter. Layers add up; drops are rendered on a padded canvas so
  streaks enter from outside the frame.
- Haze / veiling light from the rain accumulation, with the atmospheric model of Yang et al.
  (CVPR 2017, the Rain100H generator): ``I = t * (J + S) + (1 - t) * A``, with ``J`` the clean
  image, ``S`` the grey streak map, transmission ``t`` smooth in space (0.65..0.95, +-0.05) and
  a near-grey airlight ``A`` (0.7..1.0, tinted by up to 4% per channel). The result is clipped
  to [0, 1].

The default ranges (:class:`RainConfig`) are calibrated to Rain100H's heaviness: rainy-vs-clean
PSNR-Y of about 14 dB on average (9.5..21 dB over 64 training crops), against 13.8 dB (8.3..22)
for the 30 Rain100H dev pairs.

What it does not model: depth-dependent haze (there is no depth map, so ``t`` is only a smooth
random field), refraction through drops on the lens, splashes, fog glow around lights, sensor
noise, defocus of near drops, and colour of streaks beyond the airlight tint. So it is a
stand-in for smoke tests, demos and pre-training, not a substitute for Rain100H/Rain13K.

Randomness comes only from the ``torch.Generator`` passed in (a CPU generator; all draws happen on
the CPU), so a render is a pure function of ``(clean, generator state)``. On CUDA tensors (or inside
``psfops.backend("triton")``) the streaks are filtered by the fused ``psfops.psf_conv``; otherwise by
``psfops.reference.psf_conv_convstack`` (the same operator in conv-stack form, which needs J
instead of k*k planes of memory: the unfold reference would need up to 51*51 = 2601 planes).

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
from psfops import reference

from .data import images_by_key, natural_key, random_crop, random_flip_rot, read_image, save_as

__all__ = [
    "RainConfig", "streak_kernels", "render_rain", "SyntheticRain", "synth_folder",
    "TRAIN_PHOTOS", "VAL_PHOTOS",
]


@dataclass(frozen=True)
class RainConfig:
    """Ranges (low, high) the renderer samples from; the defaults give heavy rain (Rain100H-like).

    ``depth`` in [0, 1] is drawn per layer (0 far, 1 near) and interpolates the per-layer
    parameters: length, width and brightness grow with depth, density falls.
    """

    layers: tuple[int, int] = (2, 3)                 # number of streak layers (inclusive)
    angle: tuple[float, float] = (-30.0, 30.0)       # wind angle from vertical, degrees
    angle_jitter: float = 6.0                        # per-layer angle offset, degrees (+-)
    drift: tuple[float, float] = (2.0, 12.0)         # angle drift across the image, degrees (+-)
    length: tuple[float, float] = (10.0, 36.0)       # streak length far..near, pixels
    length_drift: float = 0.25                       # relative length drift across the image (+-)
    width: tuple[float, float] = (1.0, 2.4)          # streak width far..near, pixels
    brightness: tuple[float, float] = (0.3, 0.7)     # streak brightness far..near
    density: tuple[float, float] = (0.006, 0.0015)   # drops per pixel far..near
    transmission: tuple[float, float] = (0.65, 0.95) # haze transmission t
    airlight: tuple[float, float] = (0.7, 1.0)       # airlight A (grey level)


DEFAULT = RainConfig()
_N_ANGLES, _N_LENGTHS = 4, 2  # basis grid: J = 8 streak kernels per layer


def _uniform(g: torch.Generator, lo: float, hi: float, shape=()) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def streak_kernels(angles_deg: Tensor, lengths: Tensor, width: float, k: int) -> Tensor:
    """Anti-aliased line kernels, (J,) angles and lengths -> (J, k, k) float32, peak 1.

    Angle 0 is a vertical streak, positive angles lean right at the bottom (wind from the left).
    A pixel's value is ``clamp(w/2 + 1/2 - |across|, 0, 1) * clamp(L/2 + 1/2 - |along|, 0, 1)``
    (box profile with a 1-pixel linear ramp at the edges).
    """
    r = torch.arange(k, dtype=torch.float64) - k // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    th = torch.deg2rad(angles_deg.double()).view(-1, 1, 1)
    along = yy * torch.cos(th) + xx * torch.sin(th)
    across = xx * torch.cos(th) - yy * torch.sin(th)
    half_l = lengths.double().view(-1, 1, 1) / 2
    prof_across = (width / 2 + 0.5 - across.abs()).clamp(0, 1)
    prof_along = (half_l + 0.5 - along.abs()).clamp(0, 1)
    return (prof_across * prof_along).float()


def _smooth_field(g: torch.Generator, h: int, w: int, cells: int = 3) -> Tensor:
    """(h, w) smooth random field in [0, 1]: a (cells+1)^2 grid of uniforms, bilinearly upsampled."""
    grid = torch.rand(1, 1, cells + 1, cells + 1, generator=g)
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)[0, 0]


def _hat_weights(pos: Tensor, n: int) -> Tensor:
    """(h, w) positions in [0, n-1] -> (n, h, w) linear-interpolation weights (sum 1 per pixel)."""
    idx = torch.arange(n, dtype=pos.dtype).view(n, 1, 1)
    return (1 - (pos.unsqueeze(0) - idx).abs()).clamp(min=0)


def _streak_layer(g: torch.Generator, h: int, w: int, wind: float, depth: float,
                  cfg: RainConfig, device: torch.device) -> Tensor:
    """One layer's streak map, (h, w) float32 >= 0 on ``device``."""
    lerp = lambda rng: rng[0] + (rng[1] - rng[0]) * depth  # noqa: E731
    length, width, bright, density = lerp(cfg.length), lerp(cfg.width), lerp(cfg.brightness), lerp(cfg.density)
    angle = wind + float(_uniform(g, -cfg.angle_jitter, cfg.angle_jitter))
    drift = float(_uniform(g, *cfg.drift))
    angles = torch.linspace(angle - drift, angle + drift, _N_ANGLES)
    lengths = torch.tensor([length * (1 - cfg.length_drift), length * (1 + cfg.length_drift)])
    grid_a, grid_l = torch.meshgrid(angles, lengths, indexing="ij")  # J = A * L kernels
    k = 2 * math.ceil((lengths[-1].item() + width) / 2 + 1) + 1
    basis = streak_kernels(grid_a.reshape(-1), grid_l.reshape(-1), width, k)
    pad = k // 2
    H, W = h + 2 * pad, w + 2 * pad  # padded canvas: streaks from drops outside the frame
    wa = _hat_weights(_smooth_field(g, H, W) * (_N_ANGLES - 1), _N_ANGLES)
    wl = _hat_weights(_smooth_field(g, H, W) * (_N_LENGTHS - 1), _N_LENGTHS)
    weights = (wa.unsqueeze(1) * wl.unsqueeze(0)).reshape(1, -1, H, W)
    drops = (torch.rand(1, 1, H, W, generator=g) < density).float()
    drops = drops * (bright * (0.6 + 0.4 * torch.rand(1, 1, H, W, generator=g)))
    drops, weights, basis = drops.to(device), weights.to(device), basis.to(device)
    if device.type == "cuda" or psfops.current_backend() == "triton":
        streaks = psfops.psf_conv(drops, weights, basis)  # fused Triton kernel
    else:
        streaks = reference.psf_conv_convstack(drops, weights, basis)
    return streaks[0, 0, pad:pad + h, pad:pad + w]


def render_rain(clean: Tensor, generator: torch.Generator, *, config: RainConfig = DEFAULT,
                haze: bool = True, return_streaks: bool = False):
    """Add synthetic rain (streak layers + haze) to clean images; see the module docstring.

    Args:
        clean: (B, 3, H, W) float in [0, 1], any device.
        generator: a CPU ``torch.Generator``; the only source of randomness (each image in the
            batch gets its own draws, in batch order).
        config: sampling ranges (:class:`RainConfig`).
        haze: apply the atmospheric veil; without it ``rainy = clip(clean + streaks)``, changed
            only where streaks are.
        return_streaks: also return the (B, 1, H, W) streak map ``S`` (before clipping).
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
        streaks = sum(_streak_layer(generator, h, w, wind, d, config, device) for d in depths)
        streaks = streaks.view(1, 1, h, w)
        img = clean[b:b + 1].float()
        if haze:
            t = _uniform(generator, *config.transmission)
            t_map = (t + 0.05 * (2 * _smooth_field(generator, h, w) - 1)).clamp(0, 1).to(device)
            grey = float(_uniform(generator, *config.airlight))
            tint = (1 + 0.04 * (2 * torch.rand(3, generator=generator) - 1)).view(1, 3, 1, 1)
            airlight = (grey * tint).clamp(0, 1).to(device)
            rainy = t_map * (img + streaks) + (1 - t_map) * airlight
        else:
            rainy = img + streaks
        out.append(rainy.clamp(0, 1).to(clean.dtype))
        maps.append(streaks)
    rainy = torch.cat(out) if out else clean.clone()
    if return_streaks:
        return rainy, (torch.cat(maps) if maps else clean.new_zeros(0, 1, h, w))
    return rainy



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

    from .files import refuse_overwrite

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
