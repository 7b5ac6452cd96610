"""The PSF filtering ops: ``psf_conv``, ``synthesize_psf``, ``apply_psf``.

Each public function checks its arguments once, then runs either the fused Triton op
(``torch.ops.psfops.<name>``, a ``torch.library`` custom op with a fake implementation and
registered autograd; its backward is the custom op ``psfops::<name>_backward``) or the unchecked
core of ``psfops.reference.<name>`` (see :mod:`psfops._backend` for the choice). The custom ops
check their own arguments too (real and fake implementations share the check), since
``torch.ops.psfops.*`` can be called directly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, reference
from . import cpu as _cpu
from ._backend import current_backend, use_triton
from ._grads import differentiable_through_reference, for_autograd, gradient_buffers, needs_of

try:  # the fused kernels; without triton, the reference serves every call
    from .kernels import psf as kernels
except ImportError:
    kernels = None

__all__ = ["psf_conv", "synthesize_psf", "apply_psf"]

_CONTIGUOUS = torch.contiguous_format


def _use_cpu(t) -> bool:  # TEMPORARY wiring for measurement: backend "auto" on CPU tensors -> psfops.cpu
    return current_backend() == "auto" and isinstance(t, Tensor) and t.device.type == "cpu"


# ---- psf_conv -------------------------------------------------------------------------------

@torch.library.custom_op("psfops::psf_conv", mutates_args=())
def _psf_conv_op(x: Tensor, weights: Tensor, basis: Tensor, dilation: int) -> Tensor:
    _checks.check_psf_conv(x, weights, basis, dilation)
    return kernels.filter_forward(x, weights, basis, dilation)


@_psf_conv_op.register_fake
def _(x, weights, basis, dilation):
    _checks.check_psf_conv(x, weights, basis, dilation)
    return torch.empty_like(x, memory_format=_CONTIGUOUS)


@torch.library.custom_op("psfops::psf_conv_backward", mutates_args=())
def _psf_conv_backward_op(grad: Tensor, x: Tensor, weights: Tensor, basis: Tensor, dilation: int,
                          needs: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    _checks.check_psf_conv_backward(grad, x, weights, basis, dilation, needs)
    return kernels.filter_backward(grad, x, weights, basis, dilation, needs)


@_psf_conv_backward_op.register_fake
def _(grad, x, weights, basis, dilation, needs):
    _checks.check_psf_conv_backward(grad, x, weights, basis, dilation, needs)
    return gradient_buffers(needs, x, weights, basis)


def _psf_conv_setup(ctx, inputs, output):
    x, weights, basis, dilation = inputs
    ctx.save_for_backward(x, weights, basis)
    ctx.dilation = dilation


def _psf_conv_backward(ctx, grad):
    x, weights, basis = ctx.saved_tensors
    needs = needs_of(ctx, 3)
    return *for_autograd(_psf_conv_backward_op(grad, x, weights, basis, ctx.dilation, needs), needs), None


_psf_conv_op.register_autograd(_psf_conv_backward, setup_context=_psf_conv_setup)
differentiable_through_reference(_psf_conv_backward_op, lambda grad, x, weights, basis, dilation, needs: (
    [0], [1, 2, 3], lambda x, weights, basis: reference.psf_conv.unchecked(x, weights, basis, dilation)))


def psf_conv(x: Tensor, weights: Tensor, basis: Tensor, dilation: int = 1) -> Tensor:
    """Spatially varying PSF filtering with a kernel dictionary, fused.

    ``y[b,c,h,w] = sum_j weights[b,j,h,w] * sum_{u,v} basis[j,u,v] * x[b,c,h+(u-k//2)d, w+(v-k//2)d]``
    with zero padding. Equals ``apply_psf(x, synthesize_psf(weights, basis), dilation)``, but the
    Triton path never builds the (B,k*k,H,W) kernels or any (B,C*k*k,H,W) / (B,C*J,H,W) tensor,
    forward or backward; d(basis) is reduced deterministically (bitwise-reproducible).

    Args:
        x: (B, C, H, W) image or features.
        weights: (B, J, H, W) per-pixel mixing weights (not normalized here).
        basis: (J, k, k), k odd.
        dilation: int >= 1, spacing of the kernel taps.
    Returns:
        (B, C, H, W), dtype of ``x`` (contiguous NCHW on the Triton path).
    """
    _checks.check_psf_conv(x, weights, basis, dilation)
    if use_triton(x):
        return _psf_conv_op(x, weights, basis, dilation)
    if _use_cpu(x):
        return _cpu.psf_conv(x, weights, basis, dilation)
    return reference.psf_conv.unchecked(x, weights, basis, dilation)


# ---- apply_psf ------------------------------------------------------------------------------

@torch.library.custom_op("psfops::apply_psf", mutates_args=())
def _apply_psf_op(x: Tensor, psf: Tensor, dilation: int) -> Tensor:
    _checks.check_apply_psf(x, psf, dilation)
    return kernels.filter_forward(x, psf, None, dilation)


@_apply_psf_op.register_fake
def _(x, psf, dilation):
    _checks.check_apply_psf(x, psf, dilation)
    return torch.empty_like(x, memory_format=_CONTIGUOUS)


@torch.library.custom_op("psfops::apply_psf_backward", mutates_args=())
def _apply_psf_backward_op(grad: Tensor, x: Tensor, psf: Tensor, dilation: int,
                           needs: list[bool]) -> tuple[Tensor, Tensor]:
    _checks.check_apply_psf_backward(grad, x, psf, dilation, needs)
    return kernels.filter_backward(grad, x, psf, None, dilation, needs)


@_apply_psf_backward_op.register_fake
def _(grad, x, psf, dilation, needs):
    _checks.check_apply_psf_backward(grad, x, psf, dilation, needs)
    return gradient_buffers(needs, x, psf)


def _apply_psf_setup(ctx, inputs, output):
    x, psf, dilation = inputs
    ctx.save_for_backward(x, psf)
    ctx.dilation = dilation


def _apply_psf_backward(ctx, grad):
    x, psf = ctx.saved_tensors
    needs = needs_of(ctx, 2)
    return *for_autograd(_apply_psf_backward_op(grad, x, psf, ctx.dilation, needs), needs), None


_apply_psf_op.register_autograd(_apply_psf_backward, setup_context=_apply_psf_setup)
differentiable_through_reference(_apply_psf_backward_op, lambda grad, x, psf, dilation, needs: (
    [0], [1, 2], lambda x, psf: reference.apply_psf.unchecked(x, psf, dilation)))


def apply_psf(x: Tensor, psf: Tensor, dilation: int = 1) -> Tensor:
    """Apply explicit per-pixel kernels (the kernel-prediction-network form).

    ``y[b,c,h,w] = sum_{u,v} psf[b,u*k+v,h,w] * x[b,c,h+(u-k//2)d, w+(v-k//2)d]``, zero padding;
    the same kernel is applied to every channel.

    Args:
        x: (B, C, H, W).
        psf: (B, k*k, H, W), k odd (the channel count must be an odd square).
        dilation: int >= 1.
    Returns:
        (B, C, H, W), dtype of ``x``.
    """
    _checks.check_apply_psf(x, psf, dilation)
    if use_triton(x):
        return _apply_psf_op(x, psf, dilation)
    if _use_cpu(x):
        return _cpu.apply_psf(x, psf, dilation)
    return reference.apply_psf.unchecked(x, psf, dilation)


# ---- synthesize_psf -------------------------------------------------------------------------

@torch.library.custom_op("psfops::synthesize_psf", mutates_args=())
def _synthesize_psf_op(weights: Tensor, basis: Tensor) -> Tensor:
    _checks.check_synthesize_psf(weights, basis)
    return kernels.synthesize_forward(weights, basis)


@_synthesize_psf_op.register_fake
def _(weights, basis):
    _checks.check_synthesize_psf(weights, basis)
    B, _, H, W = weights.shape
    return weights.new_empty((B, basis.shape[1] * basis.shape[2], H, W))


@torch.library.custom_op("psfops::synthesize_psf_backward", mutates_args=())
def _synthesize_psf_backward_op(grad: Tensor, weights: Tensor, basis: Tensor,
                                needs: list[bool]) -> tuple[Tensor, Tensor]:
    _checks.check_synthesize_psf_backward(grad, weights, basis, needs)
    return kernels.synthesize_backward(grad, weights, basis, needs)


@_synthesize_psf_backward_op.register_fake
def _(grad, weights, basis, needs):
    _checks.check_synthesize_psf_backward(grad, weights, basis, needs)
    return gradient_buffers(needs, weights, basis)


def _synthesize_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _synthesize_backward(ctx, grad):
    weights, basis = ctx.saved_tensors
    needs = needs_of(ctx, 2)
    return for_autograd(_synthesize_psf_backward_op(grad, weights, basis, needs), needs)


_synthesize_psf_op.register_autograd(_synthesize_backward, setup_context=_synthesize_setup)
differentiable_through_reference(_synthesize_psf_backward_op, lambda grad, weights, basis, needs: (
    [0], [1, 2], reference.synthesize_psf.unchecked))


def synthesize_psf(weights: Tensor, basis: Tensor) -> Tensor:
    """Per-pixel kernels from a dictionary: ``K[b,u*k+v,h,w] = sum_j weights[b,j,h,w] * basis[j,u,v]``.

    Args:
        weights: (B, J, H, W).
        basis: (J, k, k), k odd.
    Returns:
        (B, k*k, H, W), dtype of ``weights``.
    """
    _checks.check_synthesize_psf(weights, basis)
    if use_triton(weights):
        return _synthesize_psf_op(weights, basis)
    if _use_cpu(weights):
        return _cpu.synthesize_psf(weights, basis)
    return reference.synthesize_psf.unchecked(weights, basis)
