"""Folders of images and of rainy/clean pairs for training and evaluation.

Folders are listed by :func:`image_files`, the one rule every command and the trainer use: image
suffixes only, hidden names (``.*``, as macOS's ``._photo.png``) and sub-folders skipped, and an
entry with an image suffix that is not a regular file (or a link to one) refused by name.

Paired folders: ``root/input/`` + ``root/target/`` or ``root/rain/`` + ``root/norain/`` (if both
exist, ``input/`` + ``target/`` wins). Images: .png .jpg .jpeg .bmp .tif .tiff .webp (any case);
other files are ignored. Partners are matched by file stem, so ``input/7.png`` pairs with
``target/7.jpg``. One name variant is accepted: a leading ``rain`` / ``norain`` token followed by
``-``, ``_`` or a digit is ignored for matching, so the Rain100H/Rain100L release names
``rain/rain-001.png`` and ``norain/norain-001.png`` pair up. Many-to-one layouts (Rain1400's 14
rainy versions ``1_1.jpg``..``1_14.jpg`` of ``1.jpg``) are not supported: rename first.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from torch import Tensor
from torch.utils.data import Dataset

from .augment import random_crop, random_flip_rot
from .images import image_size, load_image, not_regular

__all__ = ["IMAGE_EXTENSIONS", "image_files", "natural_key", "check_pairs", "find_pairs", "images_by_key",
           "match_by_key", "PairedImages"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = (("input", "target"), ("rain", "norain"))
_RAIN_PREFIX = re.compile(r"^(?:no)?rain(?=[-_\d])[-_]?", re.IGNORECASE)


def natural_key(name: str):
    """Sort key that orders ``2`` before ``10`` (digit runs compare as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(name)) if t]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted: names with an image suffix
    (:data:`IMAGE_EXTENSIONS`), hidden names (``.*``) and sub-folders skipped. ValueError naming
    an entry with an image suffix that is not a regular file or a link to one (a dangling or
    looping link, a FIFO, a device), before any file is read."""
    found = []
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or p.is_dir():
            continue
        if not p.is_file():
            raise not_regular(p, f"; remove it or move it out of {folder}")
        found.append(p)
    return found


def _size_mismatch(a: Path, a_size: tuple[int, int], b: Path, b_size: tuple[int, int]) -> ValueError:
    return ValueError(f"{a} is {a_size[0]}x{a_size[1]} but its partner {b} is {b_size[0]}x{b_size[1]} "
                      "(width x height)")


def check_pairs(pairs: Iterable[tuple[Path, Path]], min_side: int = 1, why: str = "") -> None:
    """Before any work: ValueError naming both files of a pair whose sizes differ, or a file
    whose width or height is under ``min_side`` (``why`` says what needs it). Reads headers only."""
    for a, b in pairs:
        a_size, b_size = image_size(a), image_size(b)
        if a_size != b_size:
            raise _size_mismatch(a, a_size, b, b_size)
        if min(a_size) < min_side:
            raise ValueError(f"{a} and {b} are {a_size[0]}x{a_size[1]}: {why or 'need'} at least "
                             f"{min_side}x{min_side} pixels")


def _pair_key(stem: str) -> str:
    return _RAIN_PREFIX.sub("", stem) or stem


def images_by_key(folder: str | os.PathLike, what: str = "folder") -> dict[str, Path]:
    """The image files directly in ``folder``, keyed by their matching name (the file stem, less a
    leading ``rain``/``norain`` token; see the module docstring), listed by :func:`image_files`.
    ValueError naming ``what`` and the folder if it is missing or holds no images, or
    naming both files if two share a key (``1.png`` and ``1.jpg``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is not a directory")
    found: dict[str, Path] = {}
    for p in image_files(folder):
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
            raise _size_mismatch(rainy_path, (rainy.shape[2], rainy.shape[1]),
                                 clean_path, (clean.shape[2], clean.shape[1]))
        if self.train:
            pair = [rainy, clean]
            if self.crop is not None:
                pair = random_crop(pair, self.crop)
            rainy, clean = random_flip_rot(pair)
        return rainy, clean, rainy_path.stem
