"""Inference: restore a batch, tiled deraining of large images, folder evaluation.

Tiling (:func:`derain_image`): tiles of ``tile`` px start every ``tile - overlap`` px (the last
one flush with the image edge). Each tile's output is blended with a separable weight that is 1
in its interior, 0 for the ``overlap // 4`` px next to an edge shared with another tile, and rises
linearly across the rest of the overlap; image borders keep weight 1. The blend is
``sum(w * tile_out) / sum(w)``. So a model whose receptive radius is at most ``overlap // 4``
gives exactly its whole-image output, and larger receptive fields (SD-PSFNet's UNets, channel
attention's global pooling) give smooth seams. Only one tile is on the device at a time.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import Dataset



def _final(outputs) -> Tensor:
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


@torch.no_grad()
def restore(model: nn.Module, x: Tensor, amp_dtype: torch.dtype | None = None) -> Tensor:
    """Final restored image of ``model`` for x (B,3,H,W) in [0,1] -> (B,3,H,W) float, clamped to
    [0,1]. Runs under ``no_grad`` (and autocast with ``amp_dtype`` when given)."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        y = _final(model(x))
    return y.float().clamp_(0, 1)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap``."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _edge_window(length: int, left: bool, right: bool, overlap: int) -> Tensor:
    """1-D blend weight (length,): 1 inside, 0 for ``overlap//4`` px at a shared edge, then a
    linear ramp to 1 over the rest of the overlap (see the module docstring)."""
    margin = overlap // 4
    d = torch.arange(length, dtype=torch.float32)
    ramp = lambda dist: ((dist - margin + 1) / (overlap - 2 * margin + 1)).clamp(0, 1)  # noqa: E731
    w = torch.ones(length)
    if left:
        w = torch.minimum(w, ramp(d))
    if right:
        w = torch.minimum(w, ramp(length - 1 - d))
    return w


def derain_image(model: nn.Module, image: Tensor, tile: int | None = 512, overlap: int = 64,
                 device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None) -> Tensor:
    """Restore one image (3,H,W) in [0,1] -> (3,H,W) float32 on the CPU, clamped to [0,1].

    ``tile=None`` (or an image no larger than ``tile``) runs the whole image at once; otherwise
    overlapping tiles are blended as described in the module docstring. ``0 <= overlap < tile``.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if device is None:
        device = next(model.parameters()).device
    _, H, W = image.shape
    if tile is None or (H <= tile and W <= tile):
        return restore(model, image[None].to(device), amp_dtype)[0].cpu()
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    th, tw = min(tile, H), min(tile, W)
    acc = torch.zeros(3, H, W)
    norm = torch.zeros(1, H, W)
    for top in tile_starts(H, th, overlap):
        wy = _edge_window(th, top > 0, top + th < H, overlap)
        for left in tile_starts(W, tw, overlap):
            wx = _edge_window(tw, left > 0, left + tw < W, overlap)
            patch = image[None, :, top:top + th, left:left + tw].to(device)
            out = restore(model, patch, amp_dtype)[0].cpu()
            w = wy[:, None] * wx[None, :]
            acc[:, top:top + th, left:left + tw] += w * out
            norm[:, top:top + th, left:left + tw] += w
    return acc / norm


def list_images(inputs: Iterable[str]) -> list[str]:
    """Expand files and folders into image paths (folders listed by
    :func:`sdpsfnet.data.image_files`, the rule of every command); ValueError naming a path that
    does not exist or is not a regular file, or a folder without images."""
    from ..data import IMAGE_EXTENSIONS, image_files
    from ..data.images import not_regular

    paths = []
    for p in inputs:
        if os.path.isdir(p):
            found = [os.path.join(p, f.name) for f in image_files(p)]
            if not found:
                raise ValueError(f"input folder {p} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif os.path.isfile(p):
            paths.append(p)
        elif os.path.lexists(p):
            raise not_regular(p)
        else:
            raise ValueError(f"input {p} does not exist")
    return paths


def derain_outputs(inputs: Iterable[str], out_dir: str) -> dict[str, str]:
    """``{output path: input path}`` of :func:`derain_paths`: ``out_dir/<stem>.png`` per input
    image. ValueError naming both if two inputs share a stem, naming the file if an output
    would be one of the inputs (``out_dir`` is an input folder holding a PNG of that stem) or
    cannot be written, or if an input's header is unreadable or refused (frames, pixel count:
    :func:`sdpsfnet.data.image_size`): every problem is found before the first image is derained."""
    from ..data import image_size
    from ..files import refuse_overwrite

    paths = list_images(inputs)
    outputs: dict[str, str] = {}
    for p in paths:
        dst = os.path.join(out_dir, os.path.splitext(os.path.basename(p))[0] + ".png")
        if dst in outputs:
            raise ValueError(f"inputs {outputs[dst]} and {p} would both be written as {dst}")
        outputs[dst] = p
    refuse_overwrite(outputs, paths)
    for p in paths:
        image_size(p)
    return outputs


def derain_paths(model: nn.Module, inputs: Iterable[str], out_dir: str, tile: int | None = 512,
                 overlap: int = 64, progress: bool = True, amp_dtype: torch.dtype | None = None) -> list[str]:
    """Derain image files/folders into ``out_dir`` as ``<stem>.png`` (same size, and the input's
    bit depth and grayscale/colour, see :func:`sdpsfnet.data.save_as`); returns the paths. The
    checks of :func:`derain_outputs` run before any image is processed: inputs are never
    overwritten."""
    from tqdm import tqdm

    from ..data import read_image, save_as

    written = []
    for dst, p in tqdm(derain_outputs(inputs, out_dir).items(), desc="derain", unit="img", disable=not progress):
        img, fmt = read_image(p)
        save_as(derain_image(model, img, tile, overlap, amp_dtype=amp_dtype), dst, fmt)
        written.append(dst)
    return written


def _scored_pairs(data) -> tuple[int, Iterator[tuple[str, Tensor, Tensor]]]:
    """(count, lazy iterator of (name, rainy, clean)) for a paired folder (names: the rainy files'
    names) or a dataset of ``(rainy, clean, name)`` items; ValueError if there is nothing."""
    from ..data import check_pairs, find_pairs, load_image
    from .metrics import MIN_SIDE

    if isinstance(data, (str, os.PathLike)):
        pairs = find_pairs(data)  # raises for a folder without images
        check_pairs(pairs, MIN_SIDE, "SSIM's window needs")  # before the model runs on any image
        return len(pairs), ((r.name, load_image(r), load_image(c)) for r, c in pairs)
    if len(data) == 0:
        raise ValueError("the evaluation dataset is empty")
    items = map(data.__getitem__, range(len(data)))
    return len(data), ((name, rainy, clean) for rainy, clean, name in items)


def evaluate(model: nn.Module, data: str | os.PathLike | Dataset, tile: int | None = 512,
             overlap: int = 64, progress: bool = True, amp_dtype: torch.dtype | None = None,
             on_image: Callable[[int, Tensor, Tensor, Tensor], None] | None = None, desc: str = "eval") -> dict:
    """PSNR/SSIM (Y and RGB) of the model's output on every pair of a paired folder or dataset
    (with ``progress``, a bar named ``desc`` counts the images done).

    ``data``: a paired folder (see :func:`sdpsfnet.data.find_pairs`) or a dataset of
    ``(rainy, clean, name)`` items. Each image is restored by :func:`derain_image` (whole, or in
    tiles); ``on_image(index, rainy, restored, clean)``, if given, sees every image (the trainer
    keeps its before/after samples this way). The model's train/eval mode is left to the caller.
    Returns ``{"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}`` (means), ``"input"`` (the same means
    for the rainy input, as a baseline) and ``"per_image"``: a list of
    ``{"name", "psnr_y", ..., "input_psnr_y"}`` in ``data``'s order.
    """
    from tqdm import tqdm

    from .metrics import image_metrics

    keys = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
    count, pairs = _scored_pairs(data)
    per_image = []
    for i, (name, rainy, clean) in enumerate(tqdm(pairs, total=count, desc=desc, unit="img",
                                                  disable=not progress)):
        pred = derain_image(model, rainy, tile, overlap, amp_dtype=amp_dtype)
        if on_image is not None:
            on_image(i, rainy, pred, clean)
        m, m0 = image_metrics(pred, clean), image_metrics(rainy, clean)
        per_image.append({"name": name, **{k: float(m[k]) for k in keys},
                          **{f"input_{k}": float(m0[k]) for k in keys}})
    mean = lambda k: sum(r[k] for r in per_image) / len(per_image)  # noqa: E731
    return {**{k: mean(k) for k in keys}, "input": {k: mean(f"input_{k}") for k in keys},
            "per_image": per_image}
