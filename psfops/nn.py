"""``torch.nn`` modules over the psfops ops: :class:`DynamicPSF`, :class:`GatedFusion`,
:class:`SpatialNorm`.

They call the public ops (``psfops.psf_conv`` etc.), so they follow the backend choice of
:mod:`psfops._backend`: fused Triton kernels on CUDA, ``psfops.reference`` on CPU.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .gating import gated_fusion
from .normalize import spatial_normalize
from .psf import psf_conv

__all__ = ["DynamicPSF", "GatedFusion", "SpatialNorm"]


def _narrow_gaussian_logits(num_basis: int, kernel_size: int, sigma: float, jitter: float,
                            floor: float = -9.0) -> Tensor:
    """(J, k, k) logits ``max(-r^2 / (2 sigma^2), floor)`` (+ small noise so the J kernels differ):
    their plane softmax is a Gaussian of width ``sigma`` px, close to a delta for sigma < 0.5. The
    floor keeps far taps trainable (softmax gradients ~exp(floor), not ~exp(-100))."""
    r = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    logits = (-r2 / (2 * sigma ** 2)).clamp_min(floor).expand(num_basis, kernel_size, kernel_size)
    return logits + jitter * torch.randn_like(logits)


class DynamicPSF(nn.Module):
    """Spatially varying PSF filtering with a learned kernel dictionary (SD-PSFNet's dynamic PSF).

    ``K(p) = sum_j w_j(p) k_j`` and ``y = psf_conv(x, w, k, dilation)``, i.e.
    ``y[b,c,p] = sum_j w[b,j,p] sum_{u,v} k[j,u,v] x[b,c,p + ((u-k//2)d, (v-k//2)d)]``, where

    - ``w = softmax_j(conv3x3(x))``: (B, J, H, W) per-pixel mixing weights, summing to 1 over J;
    - ``k = spatial_normalize(basis_gain * basis, basis_norm)`` over each k x k plane: J kernels
      (J, k, k), each summing to 1 (energy conserving; non-negative in both modes).

    So every per-pixel kernel sums to 1. With ``predict_weights=False`` the module has no weight
    head and the caller passes the weights (SD-PSFNet predicts them with its multi-scale PSF head).
    Weights and basis are cast to ``x``'s dtype, so the module runs under ``torch.autocast``.

    Init: the kernels start near a delta, so a fresh module is close to the identity filter. With
    ``"softmax"`` the logits are a narrow Gaussian (``init_sigma`` = 0.3 px) floored at -9, plus
    0.01 noise: centre tap ~0.98 for k=7 (||y - x|| / ||x|| ~ 0.02 on white noise, less on smooth
    images). With ``"l1"`` the normalized raw basis is a delta plus 2e-4 noise.

    Why ``basis_gain`` (default 50): the parameter stored in ``basis`` is those logits (or raw
    values) divided by the gain. A softmax near a delta is saturated: to move visible mass off the
    centre its logits must change by several units, while Adam-type optimizers move every
    parameter by about lr per step, so an ungained basis barely moves in a short run (a 200-step
    run at lr 1e-3 left every kernel within 0.004 L1 of its start). Divided by 50 the stored values
    (|.| <= 0.18) are on the scale of the conv weights around them and, under Adam, the kernels
    learn about 50x faster: like a per-parameter learning-rate multiplier that travels with the
    module. (Under plain SGD the gain scales the basis's effective learning rate by gain**2.)

    Args:
        channels: C of the input x (B, C, H, W); the filter is applied to every channel.
        num_basis: J, number of basis kernels (40 in SD-PSFNet).
        kernel_size: k, odd.
        dilation: spacing of the kernel taps.
        basis_norm: ``"softmax"`` (default) or ``"l1"``, the ``spatial_normalize`` mode of the basis.
        init_sigma: width in px of the softmax init's Gaussian.
        basis_gain: factor applied to ``basis`` before normalizing (see above); > 0.
        predict_weights: whether the module predicts its mixing weights (a 3x3 conv + softmax over J)
            or takes them as the second argument of ``forward``.
    """

    def __init__(self, channels: int, num_basis: int = 40, kernel_size: int = 7, dilation: int = 1,
                 basis_norm: str = "softmax", init_sigma: float = 0.3, basis_gain: float = 50.0,
                 predict_weights: bool = True):
        super().__init__()
        if channels < 1 or num_basis < 1:
            raise ValueError(f"channels and num_basis must be >= 1, got {channels}, {num_basis}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if basis_norm not in ("softmax", "l1"):
            raise ValueError(f"basis_norm must be 'softmax' or 'l1', got {basis_norm!r}")
        if not basis_gain > 0:
            raise ValueError(f"basis_gain must be > 0, got {basis_gain!r}")
        self.channels, self.num_basis, self.kernel_size = channels, num_basis, kernel_size
        self.dilation, self.basis_norm, self.basis_gain = dilation, basis_norm, float(basis_gain)
        self.weight_head = nn.Conv2d(channels, num_basis, 3, padding=1) if predict_weights else None
        if basis_norm == "softmax":
            init = _narrow_gaussian_logits(num_basis, kernel_size, init_sigma, 0.01)
        else:
            init = torch.zeros(num_basis, kernel_size, kernel_size)
            init[:, kernel_size // 2, kernel_size // 2] = 1.0
            init = init + 2e-4 * torch.randn_like(init)
        self.basis = nn.Parameter(init / self.basis_gain)

    def kernels(self) -> Tensor:
        """The normalized basis (J, k, k); each kernel sums to 1."""
        J, k, _ = self.basis.shape
        return spatial_normalize(self.basis_gain * self.basis.view(1, J, k, k), self.basis_norm).view(J, k, k)

    def mixing_weights(self, x: Tensor) -> Tensor:
        """Per-pixel mixing weights (B, J, H, W) for x (B, C, H, W); softmax over J."""
        if self.weight_head is None:
            raise RuntimeError("this DynamicPSF was built with predict_weights=False: its weights are "
                               "an input of forward(x, weights)")
        return torch.softmax(self.weight_head(x), dim=1)

    def forward(self, x: Tensor, weights: Tensor | None = None, return_weights: bool = False):
        """x (B, C, H, W) [, weights (B, J, H, W)] -> y (B, C, H, W), or (y, weights) if
        ``return_weights``. ``weights`` defaults to :meth:`mixing_weights` of ``x``."""
        if weights is None:
            weights = self.mixing_weights(x)
        y = psf_conv(x, weights.to(x.dtype), self.kernels().to(x.dtype), self.dilation)
        return (y, weights) if return_weights else y

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_basis={self.num_basis}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, basis_norm={self.basis_norm!r}, basis_gain={self.basis_gain}")


class GatedFusion(nn.Module):
    """Gated cross-stage fusion ``F = G*cur + (1-G)*prev`` with ``G = sigmoid(W [cur; prev] + b)``.

    ``forward(cur, prev)``: cur, prev (B, C, H, W) -> (B, C, H, W), via ``psfops.gated_fusion``
    (one fused kernel on the Triton path; no concat, no materialized gate). The parameters are
    exactly those of ``nn.Conv2d(2C, C, 1, bias=bias)``: ``weight`` (C, 2C, 1, 1), ``bias`` (C,),
    same names, shapes and default init (so state dicts are interchangeable). ``prev`` and the
    parameters are cast to ``cur``'s dtype, so the module runs under ``torch.autocast``.
    """

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(channels, 2 * channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's default init (same RNG calls in the same order)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(2 * self.channels)  # 1 / sqrt(fan_in), fan_in = 2C * 1 * 1
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, cur: Tensor, prev: Tensor) -> Tensor:
        dt = cur.dtype
        bias = None if self.bias is None else self.bias.to(dt)
        return gated_fusion(cur, prev.to(dt), self.weight.to(dt), bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}"


class SpatialNorm(nn.Module):
    """``spatial_normalize`` as a module: (B, C, H, W) -> (B, C, H, W), each (b, c) plane summing
    to 1 over H*W. ``"softmax"``: ``exp(x - max) / sum exp(x - max)``; ``"l1"``:
    ``|x| / (sum |x| + eps)``. No parameters."""

    def __init__(self, mode: str = "softmax", eps: float = 1e-6):
        super().__init__()
        if mode not in ("softmax", "l1"):
            raise ValueError(f"mode must be 'softmax' or 'l1', got {mode!r}")
        self.mode, self.eps = mode, eps

    def forward(self, x: Tensor) -> Tensor:
        return spatial_normalize(x, self.mode, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps}"
