"""Gated blending ops: ``gated_blend`` and the fused ``gated_fusion``, one definition each
(``psfops._registry.op``; kernels in ``psfops.kernels.gating``)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import _checks, reference
from ._registry import kernels, op
from ._samples import Sample, pixels, planes, randn

__all__ = ["gated_blend", "gated_fusion"]

_PLANES = ("B", "C", "H")


def _like_cur(cur, *rest):
    return ((cur.shape, cur.dtype),)


def _blend_samples(s, dtype, device, requires_grad=False):
    cur, prev, gate = planes(s, dtype, device, requires_grad, 3)
    shared = randn((s.B, 1, s.H, s.W), dtype, device, requires_grad)
    return [Sample((cur, prev, gate), "gate=(B,C,H,W)"), Sample((cur, prev, shared), "gate=(B,1,H,W)")]


@op(check=_checks.check_gated_blend, reference=reference.gated_blend.unchecked, outputs=_like_cur,
    kernel=lambda cur, prev, gate: kernels.gating.blend_forward(cur, prev, gate),
    backward_kernel=lambda grad, cur, prev, gate, needs: kernels.gating.blend_backward(grad, cur, prev, gate, needs),
    samples=_blend_samples, axes=_PLANES, bench_shape=dict(B=8, C=64, H=128),
    flops=lambda s: 4.0 * pixels(s) * s.C)  # sigmoid, then s*(cur-prev)+prev
def gated_blend(cur: Tensor, prev: Tensor, gate: Tensor) -> Tensor:
    """Sigmoid-gated blend: ``s = sigmoid(gate)``, ``y = s*cur + (1-s)*prev``.

    Args:
        cur, prev: (B, C, H, W).
        gate: (B, C, H, W), or (B, 1, H, W) shared by all channels (its gradient is then summed
            over C, deterministically).
    Returns:
        (B, C, H, W), dtype of ``cur`` (contiguous NCHW on the Triton path).
    """


def _fusion_samples(s, dtype, device, requires_grad=False):
    cur, prev = planes(s, dtype, device, requires_grad, 2)
    weight = randn((s.C, 2 * s.C), dtype, device, requires_grad, scale=max(2 * s.C, 1) ** -0.5)
    bias = randn((s.C,), dtype, device, requires_grad, scale=0.1)
    return [Sample((cur, prev, weight, bias), "bias"), Sample((cur, prev, weight, None), "no bias")]


@op(check=_checks.check_gated_fusion, reference=reference.gated_fusion.unchecked, outputs=_like_cur,
    kernel=lambda cur, prev, weight, bias: kernels.gating.fusion_forward(cur, prev, weight, bias),
    backward_kernel=lambda grad, cur, prev, weight, bias, needs: kernels.gating.fusion_backward(
        grad, cur, prev, weight, bias, needs),
    samples=_fusion_samples, axes=_PLANES, bench_shape=dict(B=8, C=64, H=128),
    # 1x1 conv 2C->C (4C^2 per pixel), bias, sigmoid, blend
    flops=lambda s: pixels(s) * (4.0 * s.C * s.C + 5.0 * s.C))
def gated_fusion(cur: Tensor, prev: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Gated fusion with a 1x1-conv gate, fused: ``g = W @ [cur; prev] + bias`` per pixel,
    ``s = sigmoid(g)``, ``y = s*cur + (1-s)*prev``.

    Equals ``gated_blend(cur, prev, conv2d(cat([cur, prev], 1), weight, bias))``; the Triton path
    uses no concat and never writes the gate in the forward. d(weight) and d(bias) are reduced
    over pixels deterministically (bitwise-reproducible).

    Args:
        cur, prev: (B, C, H, W).
        weight: (C, 2C) or (C, 2C, 1, 1) as in ``nn.Conv2d(2C, C, 1)``; columns [:C] act on cur.
        bias: (C,) or None.
    Returns:
        (B, C, H, W), dtype of ``cur`` (contiguous NCHW on the Triton path).
    """
