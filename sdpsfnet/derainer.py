"""The inference API: a trained checkpoint as a callable that derains tensors, PIL images, arrays
and files.

    from sdpsfnet import Derainer
    derainer = Derainer.from_checkpoint("runs/tiny/best.pt")       # device="auto": cuda if available
    clean = derainer.derain_image("photo.jpg")                      # a PIL image
    y = derainer(x)                                                 # (B,3,H,W) in [0,1] -> (B,3,H,W)

Everything runs under ``torch.inference_mode()`` with the model in eval mode on its device.
Images larger than ``tile`` are restored in overlapping tiles (see :mod:`sdpsfnet.evaluation.inference`),
exactly as ``sdpsfnet derain`` does: the CLI calls this class.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .evaluation import inference

__all__ = ["Derainer"]


class Derainer:
    """A model ready for inference: eval mode, on ``device``, tiled above ``tile`` px.

    ``tile=None`` (or 0) never tiles; otherwise ``0 <= overlap < tile``. ``amp_dtype``
    (e.g. ``torch.bfloat16`` on a GPU) runs the model under autocast; the default is float32.
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "auto", tile: int | None = 512,
                 overlap: int = 64, amp_dtype: torch.dtype | None = None):
        from .device import pick_device

        if tile is not None and tile and not 0 <= overlap < tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
        self.device = pick_device(str(device))
        self.model = model.eval().to(self.device)
        self.tile, self.overlap, self.amp_dtype = tile or None, overlap, amp_dtype

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str = "auto",
                        tile: int | None = 512, overlap: int = 64,
                        amp_dtype: torch.dtype | None = None) -> "Derainer":
        """Rebuild the model of a training checkpoint (``last.pt``/``best.pt``) with its weights.
        ``device``: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        (checked before the checkpoint is read)."""
        from .training.checkpoint import model_from_checkpoint
        from .device import pick_device

        dev = pick_device(str(device))
        return cls(model_from_checkpoint(path), dev, tile, overlap, amp_dtype)

    def __call__(self, x: Tensor) -> Tensor:
        """Restore a batch (B,3,H,W) of RGB images in [0,1], any H, W: (B,3,H,W) float32 in [0,1]
        on ``x``'s device."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be a (B, 3, H, W) tensor, got {_describe(x)}")
        with torch.inference_mode():
            H, W = x.shape[-2:]
            if self.tile is None or (H <= self.tile and W <= self.tile):
                return inference.restore(self.model, x.to(self.device).float(), self.amp_dtype).to(x.device)
            return torch.stack([self._one(img) for img in x]).to(x.device)

    def _one(self, image: Tensor) -> Tensor:
        """(3,H,W) in [0,1] -> (3,H,W) float32 on the CPU (tiled above ``tile``)."""
        with torch.inference_mode():
            return inference.derain_image(self.model, image.float(), self.tile, self.overlap,
                                          device=self.device, amp_dtype=self.amp_dtype)

    def derain_image(self, image):
        """Derain one image and return the same kind:

        * a PIL image or a path (str, ``os.PathLike``) -> a PIL image (paths are read as the CLI
          reads them: 16-bit as 16-bit, EXIF orientation applied; a PIL input gets its EXIF
          orientation applied too). Grayscale inputs give grayscale ("L"; "I;16" for 16-bit
          grayscale); 16-bit colour, which Pillow cannot hold, gives 8-bit "RGB".
        * a (3,H,W) or (H,W,3) tensor or numpy array -> the same layout, dtype and device: floats
          in [0,1], or uint8/uint16 in their full range (rounded as the CLI's PNGs). A (3,H,3)
          shape is read as (3,H,W) for a tensor and (H,W,3) for an array.
        """
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            from .data import read_image

            img, fmt = read_image(image)
            return _to_pil(self._one(img), fmt.bits, fmt.gray)
        if isinstance(image, Image.Image):
            img, bits, gray = _from_pil(image)
            return _to_pil(self._one(img), bits, gray)
        if isinstance(image, (Tensor, np.ndarray)):
            return _derain_array(self, image)
        raise TypeError(f"image must be a PIL image, a path, a tensor or a numpy array, got {_describe(image)}")

    def derain_files(self, inputs: Iterable[str], out_dir: str, progress: bool = True) -> list[str]:
        """Derain image files and folders into ``out_dir/<stem>.png`` (same size, bit depth and
        grayscale/colour; inputs are never overwritten); returns the written paths. This is
        ``sdpsfnet derain``."""
        with torch.inference_mode():
            return inference.derain_paths(self.model, list(inputs), out_dir, tile=self.tile,
                                          overlap=self.overlap, progress=progress, amp_dtype=self.amp_dtype)


def _describe(obj) -> str:
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__} of shape {tuple(shape)}" if shape is not None else type(obj).__name__


def _from_pil(im) -> tuple[Tensor, int, bool]:
    """(3,H,W) float32 in [0,1], bits, gray of a PIL image (EXIF orientation applied)."""
    from PIL import ImageOps

    from .data.images import _GRAY_8BIT

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I"):
        arr, bits, gray = np.asarray(im).astype(np.float64)[..., None] / 65535.0, 16, True
    elif im.mode == "F":
        arr, bits, gray = np.asarray(im).astype(np.float64)[..., None], 16, True
    elif im.mode in _GRAY_8BIT:
        arr, bits, gray = np.asarray(im.convert("L"))[..., None] / 255.0, 8, True
    else:
        arr, bits, gray = np.asarray(im.convert("RGB")) / 255.0, 8, False
    img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    return img.clamp(0, 1).expand(3, -1, -1).contiguous(), bits, gray


def _quantize(img: Tensor, top: int) -> np.ndarray:
    """(C,H,W) in [0,1] -> (H,W,C) float64 of ``round(x * top)``, as :func:`sdpsfnet.data.save_image`."""
    return torch.round(img.detach().double().clamp(0, 1) * top).cpu().permute(1, 2, 0).numpy()


def _to_pil(img: Tensor, bits: int, gray: bool):
    from PIL import Image

    if gray:
        arr = _quantize(img.mean(0, keepdim=True), 2 ** bits - 1)[..., 0]
        return Image.fromarray(arr.astype(np.uint8 if bits == 8 else np.uint16))
    return Image.fromarray(_quantize(img, 255).astype(np.uint8))


def _derain_array(derainer: Derainer, image):
    """A (3,H,W)/(H,W,3) tensor or array in, the same kind out (see :meth:`Derainer.derain_image`)."""
    is_tensor = isinstance(image, Tensor)
    t = image.detach().cpu() if is_tensor else torch.from_numpy(np.array(image))  # a copy: writable
    if t.dim() != 3 or 3 not in (t.shape[0], t.shape[-1]):
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got {_describe(image)}")
    chw = t.shape[0] == 3 and (is_tensor or t.shape[-1] != 3)
    integers = {torch.uint8: (255, np.uint8), getattr(torch, "uint16", torch.uint8): (65535, np.uint16)}
    if t.dtype in integers:
        top, np_dtype = integers[t.dtype]
    elif not t.dtype.is_floating_point:
        raise ValueError(f"image dtype must be float, uint8 or uint16, got {t.dtype}")
    x = t.numpy().astype(np.float64) if t.dtype in integers else t.double()
    x = torch.as_tensor(x)
    x = x if chw else x.permute(2, 0, 1)
    y = derainer._one((x / top if t.dtype in integers else x).float())  # (3,H,W) float32
    if t.dtype in integers:
        out = torch.from_numpy(_quantize(y, top).astype(np_dtype))  # (H,W,3)
        out = out.permute(2, 0, 1) if chw else out
    else:
        out = y.to(t.dtype) if chw else y.to(t.dtype).permute(1, 2, 0)
    return out.contiguous().to(image.device) if is_tensor else out.contiguous().numpy()
