"""``spatial_normalize``: normalize each (b, c) plane to sum to 1 (softmax or l1).

The public function checks its arguments once, then runs either the Triton op
(``torch.ops.psfops.spatial_normalize``, a ``torch.library`` custom op with a fake implementation
and registered autograd; backward is the custom op ``psfops::spatial_normalize_backward``) or the unchecked core
of ``psfops.reference`` (see :mod:`psfops._backend` for the choice). The custom ops check
their own arguments too (real and fake implementations share the check), since
``torch.ops.psfops.*`` can be called directly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, reference
from ._backend import use_triton
from ._grads import differentiable_through_reference, gradient_buffers
from .env import accumulation_dtype

__all__ = ["spatial_normalize"]


try:  # the fused kernels; without triton, the reference serves every call
    from .kernels import normalize as kernels
except ImportError:
    kernels = None


@torch.library.custom_op("psfops::spatial_normalize", mutates_args=())
def _spatial_normalize_op(x: Tensor, mode: str, eps: float) -> tuple[Tensor, Tensor]:
    """Returns y and the per-plane (m, s) stats (B*C, 2) its backward needs (not differentiable)."""
    _checks.check_spatial_normalize(x, mode, eps)
    return kernels.normalize_forward(x, mode, eps)


@_spatial_normalize_op.register_fake
def _(x, mode, eps):
    _checks.check_spatial_normalize(x, mode, eps)
    B, C = x.shape[:2]
    acc = accumulation_dtype(x.dtype)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((B * C, 2), dtype=acc)


@torch.library.custom_op("psfops::spatial_normalize_backward", mutates_args=())
def _spatial_normalize_backward_op(grad: Tensor, x: Tensor, stats: Tensor, mode: str,
                                   needs: list[bool]) -> Tensor:
    """``needs`` is [True] from autograd (the backward runs only when x needs a gradient)."""
    _checks.check_spatial_normalize_backward(grad, x, stats, mode, needs)
    return kernels.normalize_backward(grad, x, stats, mode) if needs[0] else x.new_empty(0)


@_spatial_normalize_backward_op.register_fake
def _(grad, x, stats, mode, needs):
    _checks.check_spatial_normalize_backward(grad, x, stats, mode, needs)
    return gradient_buffers(needs, x)[0]


def _setup(ctx, inputs, output):
    x, mode, _ = inputs
    ctx.save_for_backward(x, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.mode = mode


def _backward(ctx, grad, _grad_stats):
    x, stats = ctx.saved_tensors
    return _spatial_normalize_backward_op(grad, x, stats, ctx.mode, [True]), None, None


_spatial_normalize_op.register_autograd(_backward, setup_context=_setup)


def _unpack_backward(grad, x, stats, mode, needs):
    """(For a second derivative.) eps is not an argument of the backward op: for l1 the saved
    per-plane sum is sum|x| + eps, so eps is what it exceeds sum|x| by; softmax does not use it."""
    eps = 0.0
    if mode == "l1" and x.numel():
        eps = max(0.0, float(stats[0, 1] - x[0, 0].abs().sum(dtype=stats.dtype)))
    return [0], [1], lambda x: reference.spatial_normalize.unchecked(x, mode, eps)


differentiable_through_reference(_spatial_normalize_backward_op, _unpack_backward)


def spatial_normalize(x: Tensor, mode: str = "softmax", eps: float = 1e-6) -> Tensor:
    """Normalize each (b, c) plane of x over its H*W values to sum to 1.

    ``"softmax"``: ``y = exp(x - max) / sum exp(x - max)`` (stable). ``"l1"``:
    ``y = |x| / (sum |x| + eps)``; its gradient uses sign(0) = 0, like ``torch.abs``. Any plane
    size (the Triton path loops over the plane in blocks). NaN/Inf propagate as in
    ``torch.softmax`` / the l1 formula. For a (J, k, k) kernel basis use ``x.view(1, J, k, k)``.

    Args:
        x: (B, C, H, W).
        mode: ``"softmax"`` or ``"l1"``.
        eps: non-negative float, l1 only.
    Returns:
        (B, C, H, W), dtype of ``x`` (contiguous NCHW on the Triton path).
    """
    _checks.check_spatial_normalize(x, mode, eps)
    if use_triton(x):
        return _spatial_normalize_op(x, mode, float(eps))[0]
    return reference.spatial_normalize.unchecked(x, mode, eps)
