"""The PSF filtering ops: ``psf_conv``, ``synthesize_psf``, ``apply_psf``.

Each is one definition (``psfops._registry.op``): its check, its Triton kernels
(``psfops.kernels.psf``), its output shapes and its reference (``psfops.reference``).
"""
from __future__ import annotations

from torch import Tensor

from . import _checks, reference
from ._registry import kernels, op
from ._samples import Sample, mixing_weights, pixels, randn

__all__ = ["psf_conv", "synthesize_psf", "apply_psf"]

# The headline shape, psf_conv's: the paper's J40 k7 on 64 channels of 128x128, batch 8.
HEADLINE = dict(B=8, C=64, H=128, J=40, k=7)


def _like_x(x, *rest):
    return ((x.shape, x.dtype),)


def _basis(s, dtype, device, requires_grad):
    return randn((s.J, s.k, s.k), dtype, device, requires_grad, scale=1.0 / s.k)


def _psf_conv_samples(s, dtype, device, requires_grad=False):
    x = randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad)
    return [Sample((x, mixing_weights(s, dtype, device, requires_grad), _basis(s, dtype, device, requires_grad),
                    s.dilation))]


@op(check=_checks.check_psf_conv, reference=reference.psf_conv.unchecked, outputs=_like_x,
    kernel=lambda x, weights, basis, dilation: kernels.psf.filter_forward(x, weights, basis, dilation),
    backward_kernel=lambda grad, x, weights, basis, dilation, needs: kernels.psf.filter_backward(
        grad, x, weights, basis, dilation, needs),
    samples=_psf_conv_samples, axes=("B", "C", "H", "J", "k"), bench_shape=HEADLINE,
    # synthesis J*k*k MACs per pixel, filtering k*k MACs per pixel and channel
    flops=lambda s: 2.0 * pixels(s) * s.k * s.k * (s.J + s.C))
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


def _apply_psf_samples(s, dtype, device, requires_grad=False):
    return [Sample((randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad),
                    randn((s.B, s.k * s.k, s.H, s.W), dtype, device, requires_grad, scale=1.0 / s.k), s.dilation))]


@op(check=_checks.check_apply_psf, reference=reference.apply_psf.unchecked, outputs=_like_x,
    kernel=lambda x, psf, dilation: kernels.psf.filter_forward(x, psf, None, dilation),
    backward_kernel=lambda grad, x, psf, dilation, needs: kernels.psf.filter_backward(
        grad, x, psf, None, dilation, needs),
    samples=_apply_psf_samples, axes=("B", "C", "H", "k"), bench_shape=dict(B=8, C=64, H=128, k=7),
    flops=lambda s: 2.0 * pixels(s) * s.C * s.k * s.k)
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


def _synthesize_samples(s, dtype, device, requires_grad=False):
    return [Sample((mixing_weights(s, dtype, device, requires_grad), _basis(s, dtype, device, requires_grad)))]


def _synthesized(weights, basis):
    B, _, H, W = weights.shape
    return (((B, basis.shape[-1] * basis.shape[-2], H, W), weights.dtype),)


@op(check=_checks.check_synthesize_psf, reference=reference.synthesize_psf.unchecked, outputs=_synthesized,
    kernel=lambda weights, basis: kernels.psf.synthesize_forward(weights, basis),
    backward_kernel=lambda grad, weights, basis, needs: kernels.psf.synthesize_backward(grad, weights, basis, needs),
    samples=_synthesize_samples, axes=("B", "H", "J", "k"),
    bench_shape=dict(B=8, C=1, H=128, J=40, k=7),  # C: no such axis, 1 in benchmark records
    flops=lambda s: 2.0 * pixels(s) * s.J * s.k * s.k)
def synthesize_psf(weights: Tensor, basis: Tensor) -> Tensor:
    """Per-pixel kernels from a dictionary: ``K[b,u*k+v,h,w] = sum_j weights[b,j,h,w] * basis[j,u,v]``.

    Args:
        weights: (B, J, H, W).
        basis: (J, k, k), k odd.
    Returns:
        (B, k*k, H, W), dtype of ``weights``.
    """
