"""Training augmentation shared by the paired and the synthetic datasets: the same random crop,
flips and rot90 on every image of a pair, drawn from torch's global RNG."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_to", "random_crop", "random_flip_rot"]


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
