"""Training losses, each summed over a model's supervised outputs: SD-PSFNet's (Charbonnier +
0.05 * edge + 0.01 * frequency, the paper's) and MSPFN's (Charbonnier + 0.05 * 3x3-Laplacian edge,
the authors' code). ``LOSSES`` maps a recipe's ``loss`` name to its class.

All losses take (B, C, H, W) tensors and return a scalar (mean over every element). They are
computed in float32 whatever the input dtype and even inside ``torch.autocast`` (half-precision
FFTs and squared differences lose too much), and the result is a float32 scalar.

Conventions (from MPRNet / MIMO-UNet, which the paper's loss follows):

- ``charbonnier``: ``mean(sqrt((pred - target)^2 + eps^2))`` with eps inside the square root (so a
  perfect prediction scores ``eps``, not 0), as MPRNet's ``CharbonnierLoss``.
- ``edge_loss``: Charbonnier of the difference of Laplacian-pyramid edges, as MPRNet's ``EdgeLoss``:
  ``lap(x) = x - G(up(down(G(x))))`` with G the separable 5x5 Gaussian ``[.05, .25, .4, .25, .05]``
  (replicate padding), ``down`` keeping even pixels and ``up`` zero-insertion times 4.
- ``laplacian_edge_loss`` (MSPFN): Charbonnier of the difference of 3x3 Laplacian edge maps,
  kernel ``[[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]`` per channel with zero padding, as the MSPFN
  authors' ``Laplacian`` (a 'SAME' ``tf.nn.conv2d``).
- ``frequency_loss``: mean over all elements of the modulus ``|fft2(pred) - fft2(target)|``
  (complex L1, unnormalized ``norm="backward"`` FFT over H and W, as the FFT losses of
  MIMO-UNet/MPRNet-style deraining code; its scale therefore grows like sqrt(H*W)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["charbonnier", "edge_loss", "laplacian_edge_loss", "frequency_loss", "DerainLoss", "MSPFNLoss",
           "LOSSES"]

_GAUSS_1D = (0.05, 0.25, 0.4, 0.25, 0.05)


def _check_pair(pred: Tensor, target: Tensor, pred_name: str = "pred") -> None:
    for name, t in ((pred_name, pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{pred_name} has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """``mean(sqrt((pred - target)^2 + eps^2))`` in float32. (B,C,H,W), (B,C,H,W) -> scalar."""
    _check_pair(pred, target)
    with _no_autocast(pred.device):
        d = pred.float() - target.float()
        return torch.sqrt(d * d + eps * eps).mean()


def _gauss_blur(x: Tensor) -> Tensor:
    """Depthwise 5x5 Gaussian blur with replicate padding (float32 x)."""
    g = torch.tensor(_GAUSS_1D, dtype=x.dtype, device=x.device)
    kernel = torch.outer(g, g).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=x.shape[1])


def _laplacian(x: Tensor) -> Tensor:
    """One Laplacian-pyramid level: ``x - G(up(down(G(x))))`` (MPRNet's ``laplacian_kernel``)."""
    blurred = _gauss_blur(x)
    up = torch.zeros_like(blurred)
    up[:, :, ::2, ::2] = blurred[:, :, ::2, ::2] * 4
    return x - _gauss_blur(up)


def edge_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier of the Laplacian-pyramid edge maps (MPRNet ``EdgeLoss``). -> float32 scalar."""
    _check_pair(pred, target)
    with _no_autocast(pred.device):
        return charbonnier(_laplacian(pred.float()), _laplacian(target.float()), eps)


def laplacian_edge_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier of the 3x3 Laplacian edge maps (zero padding; MSPFN's). -> float32 scalar."""
    _check_pair(pred, target)
    with _no_autocast(pred.device):
        c = pred.shape[1]
        kernel = torch.full((3, 3), -1.0, device=pred.device)
        kernel[1, 1] = 8.0
        kernel = kernel.expand(c, 1, 3, 3)
        lap = lambda x: F.conv2d(x.float(), kernel, padding=1, groups=c)  # noqa: E731
        return charbonnier(lap(pred), lap(target), eps)


def frequency_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``mean(|fft2(pred) - fft2(target)|)`` over (B,C,H,W) in float32 (complex modulus). -> scalar."""
    _check_pair(pred, target)
    with _no_autocast(pred.device):
        # fft2 is linear: one transform of the difference equals the difference of the transforms.
        return torch.fft.fft2(pred.float() - target.float()).abs().mean()


class _SummedLoss(nn.Module):
    """``forward(outputs, target)``: the sum of :meth:`term` over the model's outputs. ``outputs``
    is a list/tuple of (B,C,H,W) restored images (every supervised output) or one tensor;
    ``target`` (B,C,H,W). Returns a float32 scalar."""

    def term(self, out: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, outputs: Sequence[Tensor] | Tensor, target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        if not isinstance(outputs, (list, tuple)) or len(outputs) == 0:
            raise ValueError("outputs must be a non-empty list of (B, C, H, W) tensors")
        total = None
        for i, out in enumerate(outputs):
            _check_pair(out, target, pred_name=f"outputs[{i}]")
            term = self.term(out, target)
            total = term if total is None else total + term
        return total


def _check_weights(**weights) -> None:
    for name, v in weights.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")


class DerainLoss(_SummedLoss):
    """SD-PSFNet's loss (the paper): sum over the model's outputs of
    ``charbonnier + edge_weight*edge + freq_weight*frequency`` on [0, 1] images."""

    def __init__(self, edge_weight: float = 0.05, freq_weight: float = 0.01, eps: float = 1e-3):
        super().__init__()
        _check_weights(edge_weight=edge_weight, freq_weight=freq_weight, eps=eps)
        self.edge_weight = float(edge_weight)
        self.freq_weight = float(freq_weight)
        self.eps = float(eps)

    def term(self, out: Tensor, target: Tensor) -> Tensor:
        term = charbonnier(out, target, self.eps)
        if self.edge_weight:
            term = term + self.edge_weight * edge_loss(out, target, self.eps)
        if self.freq_weight:
            term = term + self.freq_weight * frequency_loss(out, target)
        return term

    def extra_repr(self) -> str:
        return f"edge_weight={self.edge_weight}, freq_weight={self.freq_weight}, eps={self.eps}"


class MSPFNLoss(_SummedLoss):
    """MSPFN's loss as the authors' code computes it (``inference_losses`` in ``model/MSPFN.py``):
    ``charbonnier(s(out), s(target)) + edge_weight * laplacian_edge_loss(s(out), s(target))``
    with ``s(x) = 2x - 1``, because their images are in [-1, 1] (``image / 127.5 - 1``); eps 1e-3
    in those units. Summed over outputs (MSPFN has one)."""

    def __init__(self, edge_weight: float = 0.05, eps: float = 1e-3):
        super().__init__()
        _check_weights(edge_weight=edge_weight, eps=eps)
        self.edge_weight, self.eps = float(edge_weight), float(eps)

    def term(self, out: Tensor, target: Tensor) -> Tensor:
        out, target = 2 * out.float() - 1, 2 * target.float() - 1
        term = charbonnier(out, target, self.eps)
        if self.edge_weight:
            term = term + self.edge_weight * laplacian_edge_loss(out, target, self.eps)
        return term

    def extra_repr(self) -> str:
        return f"edge_weight={self.edge_weight}, eps={self.eps}"


# A recipe's ``loss`` name -> the loss class (built with its defaults).
LOSSES: dict[str, type[_SummedLoss]] = {"sdpsfnet": DerainLoss, "mspfn": MSPFNLoss}
