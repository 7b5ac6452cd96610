"""Paired rainy/clean image folders: loading, saving, pairing and the training/eval dataset.

Layout (SPEC section 4): ``root/input/`` + ``root/target/`` or ``root/rain/`` + ``root/norain/``
(if both exist, ``input/`` + ``target/`` wins). Images: .png .jpg .jpeg .bmp .tif .tiff .webp (any
case); other files are ignored. Partners are matched by file stem, so ``input/7.png`` pairs with
``target/7.jpg``. One name variant is accepted: a leading ``rain`` / ``norain`` token followed by
``-``, ``_`` or a digit is ignored for matching, so the Rain100H/Rain100L release names
``rain/rain-001.png`` and ``norain/norain-001.png`` pair up. Many-to-one layouts (Rain1400's 14
rainy versions ``1_1.jpg``..``1_14.jpg`` of ``1.jpg``) are not supported: rename first.

Tensors are (3, H, W) float32 RGB in [0, 1]; grayscale, palette and RGBA files are converted to
RGB (alpha dropped). Saving quantizes to 8 bits (``round(x * 255)``), like every PNG writer.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS", "load_image", "save_image", "find_pairs", "images_by_key", "PairedImages",
    "random_crop", "random_flip_rot", "pad_to", "natural_key",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = (("input", "target"), ("rain", "norain"))
_RAIN_PREFIX = re.compile(r"^(?:no)?rain(?=[-_\d])[-_]?", re.IGNORECASE)


def natural_key(name: str):
    """Sort key that orders ``2`` before ``10`` (digit runs compare as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(name)) if t]


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file -> (3, H, W) float32 RGB in [0, 1].

    Raises FileNotFoundError or ValueError naming ``path`` if it is missing or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def save_image(img: Tensor, path: str | os.PathLike) -> None:
    """Write a (3, H, W), (1, H, W) or (H, W) image in [0, 1] as an 8-bit PNG, atomically.

    Values are clamped to [0, 1] and rounded to ``round(x * 255)``. Written with
    :func:`sdpsfnet.files.atomic_write`: a reader never sees a partial file, parent folders are
    created, and the file gets the umask's permissions.
    """
    if not isinstance(img, Tensor):
        raise TypeError(f"img must be a torch.Tensor, got {type(img).__name__}")
    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"img must have shape (3, H, W), (1, H, W) or (H, W), got {tuple(img.shape)}")
    arr = torch.round(img.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).contiguous().numpy()
    with atomic_write(path) as f:
        Image.fromarray(arr).save(f, format="PNG")


def _pair_key(stem: str) -> str:
    return _RAIN_PREFIX.sub("", stem) or stem


def images_by_key(folder: str | os.PathLike, what: str = "folder") -> dict[str, Path]:
    """The image files directly in ``folder``, keyed by their matching name (the file stem, less a
    leading ``rain``/``norain`` token; see the module docstring). Hidden and non-image files are
    skipped. ValueError naming ``what`` and the folder if it is missing or holds no images, or
    naming both files if two share a key (``1.png`` and ``1.jpg``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is not a directory")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            key = _pair_key(p.stem)
            if key in found:
                raise ValueError(f"{p} and {found[key]} in {folder} have the same name {key!r}; keep one")
            found[key] = p
    if not found:
        raise ValueError(f"{what} {str(folder)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def find_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(rainy_path, clean_path) pairs under ``root`` (see the module docstring), in natural name order.

    Raises ValueError naming the file for a rainy image without a clean partner (or the reverse),
    naming the folder if it is missing or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not a directory")
    for rainy_name, clean_name in LAYOUTS:
        rainy_dir, clean_dir = root / rainy_name, root / clean_name
        if rainy_dir.is_dir() and clean_dir.is_dir():
            break
    else:
        expected = " or ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
        half = [f"{a}/ but no {b}/" if (root / a).is_dir() else f"{b}/ but no {a}/"
                for a, b in LAYOUTS if (root / a).is_dir() != (root / b).is_dir()]
        found = f" (it has {half[0]})" if half else ""
        raise ValueError(f"root {str(root)!r} must contain {expected}{found}")
    return match_by_key(images_by_key(rainy_dir, "rainy folder"), images_by_key(clean_dir, "clean folder"),
                        "clean partner", "rainy partner", clean_dir, rainy_dir)


def match_by_key(first: dict, second: dict, first_lacks: str, second_lacks: str,
                 second_dir, first_dir) -> list[tuple[Path, Path]]:
    """Pairs (first[k], second[k]) for the keys of two :func:`images_by_key` listings, in natural
    order; ValueError naming the first file of either side that has no partner on the other."""
    for key, p in first.items():
        if key not in second:
            raise ValueError(f"{p} has no {first_lacks} named {p.stem}.* in {second_dir}")
    for key, p in second.items():
        if key not in first:
            raise ValueError(f"{p} has no {second_lacks} named {p.stem}.* in {first_dir}")
    return [(first[k], second[k]) for k in sorted(first, key=natural_key)]


def pad_to(img: Tensor, height: int, width: int) -> Tensor:
    """Reflect-pad a (C, H, W) image at the bottom/right to at least (height, width).

    Pads larger than the image reflect repeatedly (like ``numpy.pad(mode="reflect")``); a side of
    1 pixel is replicated.
    """
    while img.shape[-2] < height or img.shape[-1] < width:
        H, W = img.shape[-2:]
        ph, pw = max(0, height - H), max(0, width - W)
        if (ph and H == 1) or (pw and W == 1):
            return F.pad(img.unsqueeze(0), (0, pw, 0, ph), mode="replicate")[0]
        img = F.pad(img.unsqueeze(0), (0, min(pw, W - 1), 0, min(ph, H - 1)), mode="reflect")[0]
    return img


def random_crop(images: tuple[Tensor, ...] | list[Tensor], crop: int) -> list[Tensor]:
    """The same random ``crop`` x ``crop`` window of each (C, H, W) image (torch's global RNG).

    Images smaller than ``crop`` are reflect-padded first (see :func:`pad_to`).
    """
    images = [pad_to(im, crop, crop) for im in images]
    H, W = images[0].shape[-2:]
    top = int(torch.randint(H - crop + 1, ()).item())
    left = int(torch.randint(W - crop + 1, ()).item())
    return [im[..., top:top + crop, left:left + crop] for im in images]


def random_flip_rot(images: tuple[Tensor, ...] | list[Tensor]) -> list[Tensor]:
    """The same random horizontal flip, vertical flip and rot90 (k in 0..3) of each (C, H, W) image.

    Draws from torch's global RNG (so DataLoader worker seeding applies). Together these give all
    8 symmetries of the square.
    """
    hflip, vflip = (bool(b) for b in torch.randint(2, (2,)))
    k = int(torch.randint(4, ()).item())
    out = []
    for im in images:
        if hflip:
            im = im.flip(-1)
        if vflip:
            im = im.flip(-2)
        out.append(torch.rot90(im, k, dims=(-2, -1)).contiguous())
    return out


def _check_crop(crop) -> None:
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(f"crop must be a positive int or None, got {crop!r}")


class PairedImages(Dataset):
    """Rainy/clean pairs from a folder (see :func:`find_pairs`).

    ``train=True``: a random ``crop`` x ``crop`` window (the same on both images; images smaller
    than the crop are reflect-padded), random flips and rot90, all drawn from torch's global RNG so
    ``torch.manual_seed`` and DataLoader worker seeding make it reproducible; ``crop=None`` keeps
    the full image (still flipped/rotated). ``train=False``: full images, untouched.

    ``__getitem__(i) -> (rainy (3,h,w), clean (3,h,w), name)``, float32 in [0, 1], name the rainy
    file's stem. Partners of different sizes raise ValueError naming both files (checked when the
    pair is loaded).
    """

    def __init__(self, root: str | os.PathLike, crop: int | None = 128, train: bool = True):
        _check_crop(crop)
        self.root = Path(root)
        self.crop = crop
        self.train = bool(train)
        self.pairs = find_pairs(self.root)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        rainy_path, clean_path = self.pairs[index]
        rainy, clean = load_image(rainy_path), load_image(clean_path)
        if rainy.shape != clean.shape:
            raise ValueError(f"{rainy_path} is {rainy.shape[2]}x{rainy.shape[1]} but its partner "
                             f"{clean_path} is {clean.shape[2]}x{clean.shape[1]} (width x height)")
        if self.train:
            pair = [rainy, clean]
            if self.crop is not None:
                pair = random_crop(pair, self.crop)
            rainy, clean = random_flip_rot(pair)
        return rainy, clean, rainy_path.stem
