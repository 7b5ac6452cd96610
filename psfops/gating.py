"""Gated blending ops: ``gated_blend`` and the fused ``gated_fusion``.

Each public function checks its arguments once, then runs either the Triton op
(``torch.ops.psfops.<name>``, a ``torch.library`` custom op with a fake implementation and
registered autograd; the backward is its own custom op ``psfops::<name>_backward``) or the
unchecked core of ``psfops.reference`` (see :mod:`psfops._backend` for the choice). The custom
ops check their own arguments too (real and fake implementations share the check), since
``torch.ops.psfops.*`` can be called directly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _checks, reference
from ._backend import use_triton
from ._grads import differentiable_through_reference, for_autograd, gradient_buffers, needs_of

__all__ = ["gated_blend", "gated_fusion"]


try:  # the fused kernels; without triton, the reference serves every call
    from .kernels import gating as kernels
except ImportError:
    kernels = None


def _like(t: Tensor) -> Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# ---- gated_blend ----------------------------------------------------------------------------

@torch.library.custom_op("psfops::gated_blend", mutates_args=())
def _gated_blend_op(cur: Tensor, prev: Tensor, gate: Tensor) -> Tensor:
    _checks.check_gated_blend(cur, prev, gate)
    return kernels.blend_forward(cur, prev, gate)


@_gated_blend_op.register_fake
def _(cur, prev, gate):
    _checks.check_gated_blend(cur, prev, gate)
    return _like(cur)


@torch.library.custom_op("psfops::gated_blend_backward", mutates_args=())
def _gated_blend_backward_op(grad: Tensor, cur: Tensor, prev: Tensor, gate: Tensor,
                             needs: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_gated_blend_backward(grad, cur, prev, gate, needs)
    return kernels.blend_backward(grad, cur, prev, gate, needs)


@_gated_blend_backward_op.register_fake
def _(grad, cur, prev, gate, needs):
    _checks.check_gated_blend_backward(grad, cur, prev, gate, needs)
    return gradient_buffers(needs, cur, prev, gate)


def _blend_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _blend_backward(ctx, grad):
    needs = needs_of(ctx, 3)
    return for_autograd(_gated_blend_backward_op(grad, *ctx.saved_tensors, needs), needs)


_gated_blend_op.register_autograd(_blend_backward, setup_context=_blend_setup)
differentiable_through_reference(_gated_blend_backward_op, lambda grad, cur, prev, gate, needs: (
    [0], [1, 2, 3], reference.gated_blend.unchecked))


def gated_blend(cur: Tensor, prev: Tensor, gate: Tensor) -> Tensor:
    """Sigmoid-gated blend: ``s = sigmoid(gate)``, ``y = s*cur + (1-s)*prev``.

    Args:
        cur, prev: (B, C, H, W).
        gate: (B, C, H, W), or (B, 1, H, W) shared by all channels (its gradient is then summed
            over C, deterministically).
    Returns:
        (B, C, H, W), dtype of ``cur`` (contiguous NCHW on the Triton path).
    """
    _checks.check_gated_blend(cur, prev, gate)
    if use_triton(cur):
        return _gated_blend_op(cur, prev, gate)
    return reference.gated_blend.unchecked(cur, prev, gate)


# ---- gated_fusion ---------------------------------------------------------------------------

@torch.library.custom_op("psfops::gated_fusion", mutates_args=())
def _gated_fusion_op(cur: Tensor, prev: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    _checks.check_gated_fusion(cur, prev, weight, bias)
    return kernels.fusion_forward(cur, prev, weight, bias)


@_gated_fusion_op.register_fake
def _(cur, prev, weight, bias):
    _checks.check_gated_fusion(cur, prev, weight, bias)
    return _like(cur)


@torch.library.custom_op("psfops::gated_fusion_backward", mutates_args=())
def _gated_fusion_backward_op(grad: Tensor, cur: Tensor, prev: Tensor, weight: Tensor, bias: Optional[Tensor],
                              needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """needs[3] is the bias's (False when bias is None; its placeholder then has cur's dtype)."""
    _checks.check_gated_fusion_backward(grad, cur, prev, weight, bias, needs)
    return kernels.fusion_backward(grad, cur, prev, weight, bias, needs)


@_gated_fusion_backward_op.register_fake
def _(grad, cur, prev, weight, bias, needs):
    _checks.check_gated_fusion_backward(grad, cur, prev, weight, bias, needs)
    return gradient_buffers(needs, cur, prev, weight, cur.new_empty(cur.shape[1]) if bias is None else bias)


def _fusion_setup(ctx, inputs, output):
    cur, prev, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(cur, prev, weight, bias)


def _fusion_backward(ctx, grad):
    cur, prev, weight, bias = ctx.saved_tensors
    needs = needs_of(ctx, 4)
    needs[3] = needs[3] and ctx.has_bias
    return for_autograd(_gated_fusion_backward_op(grad, cur, prev, weight, bias, needs), needs)


_gated_fusion_op.register_autograd(_fusion_backward, setup_context=_fusion_setup)
differentiable_through_reference(_gated_fusion_backward_op, lambda grad, cur, prev, weight, bias, needs: (
    [0], [1, 2, 3, None if bias is None else 4], reference.gated_fusion.unchecked))


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
    _checks.check_gated_fusion(cur, prev, weight, bias)
    if use_triton(cur):
        return _gated_fusion_op(cur, prev, weight, bias)
    return reference.gated_fusion.unchecked(cur, prev, weight, bias)
