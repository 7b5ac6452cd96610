"""The PSF filtering ops: ``psf_conv`` and its adjoint ``psf_conv_transpose``, ``apply_psf``,
``synthesize_psf``.

Each is one definition (``psfops._registry.op``): its check, its Triton kernels
(``psfops.kernels.psf``: a gather, a scatter and the tap gradients serve all four), its output
shapes and its reference (``psfops.reference``).

Orientation: the basis is applied as a correlation, ``y[p] = sum_t K_t(p) x[p + s_t]`` with
``s_t = ((u - k//2) d, (v - k//2) d)`` for tap ``t = u*k + v``; for a convolution kernel pass
``basis.flip(-1, -2)``. ``padding`` extends the op's input as ``F.pad`` would ("zeros",
"reflect", "replicate", "circular"; any pad size, :mod:`psfops.padding`). On the Triton path both
directions apply it inside the kernels: the gather remaps the indices it reads, the scatter folds
what lands outside the image back onto the pixels the padding copies there (no padded copy of
any tensor).
"""
from __future__ import annotations

from torch import Tensor

from . import _checks, cpu, reference
from ._registry import kernels, op
from ._samples import Sample, mixing_weights, pixels, randn

__all__ = ["psf_conv", "psf_conv_transpose", "synthesize_psf", "apply_psf"]

# The headline shape, psf_conv's: the paper's J40 k7 on 64 channels of 128x128, batch 8.
HEADLINE = dict(B=8, C=64, H=128, J=40, k=7)


def _like_first(image, *rest):
    return ((image.shape, image.dtype),)


def _scatter(y: Tensor, src: Tensor, basis: Tensor | None, dilation: int, padding: str) -> Tensor:
    """The scatter (adjoint of the gather with ``padding``) on the Triton path."""
    return kernels.psf.filter_scatter(y, src, basis, dilation, padding)


def _placeholder(t: Tensor) -> Tensor:
    return t.new_empty(0)


def _filter_backward(grad, x, src, basis, dilation, padding, needs):
    """Gradients of the gather ``filter_forward(x, src, basis)``: (dx, d(src)[, d(basis)])."""
    dx = _scatter(grad, src, basis, dilation, padding) if needs[0] else _placeholder(x)
    dsrc, dbasis = kernels.psf.tap_grads(x, grad, src, basis, dilation, padding, needs[1],
                                         basis is not None and needs[2])
    return (dx, dsrc) if basis is None else (dx, dsrc, dbasis)


def _transpose_backward(grad, y, weights, basis, dilation, padding, needs):
    """Gradients of the scatter: dy is the gather of the cotangent; the tap gradients are the
    gather's with the cotangent in the role of x and y in that of its cotangent."""
    dy = kernels.psf.filter_forward(grad, weights, basis, dilation, padding) if needs[0] else _placeholder(y)
    dw, dbasis = kernels.psf.tap_grads(grad, y, weights, basis, dilation, padding, needs[1], needs[2])
    return dy, dw, dbasis


def _basis(s, dtype, device, requires_grad, per_sample=False):
    shape = (s.B, s.J, s.k, s.k) if per_sample else (s.J, s.k, s.k)
    return randn(shape, dtype, device, requires_grad, scale=1.0 / s.k)


def _filter_samples(s, dtype, device, requires_grad=False):
    """The usual use (zeros, one basis), and a per-sample basis with reflect padding."""
    def sample(per_sample, padding, label):
        return Sample((randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad),
                       mixing_weights(s, dtype, device, requires_grad),
                       _basis(s, dtype, device, requires_grad, per_sample), s.dilation, padding), label)
    return [sample(False, "zeros", ""), sample(True, "reflect", "per-sample basis, reflect")]


# synthesis J*k*k MACs per pixel, filtering k*k MACs per pixel and channel
def _filter_flops(s):
    return 2.0 * pixels(s) * s.k * s.k * (s.J + s.C)


@op(check=_checks.check_psf_conv, reference=reference.psf_conv.unchecked, outputs=_like_first,
    kernel=lambda x, weights, basis, dilation, padding: kernels.psf.filter_forward(x, weights, basis, dilation,
                                                                                    padding),
    backward_kernel=lambda grad, x, weights, basis, dilation, padding, needs: _filter_backward(
        grad, x, weights, basis, dilation, padding, needs),
    samples=_filter_samples, axes=("B", "C", "H", "J", "k"), bench_shape=HEADLINE, flops=_filter_flops,
    cpu=lambda x, weights, basis, dilation, padding: cpu.psf_conv(x, weights, basis, dilation, padding))
def psf_conv(x: Tensor, weights: Tensor, basis: Tensor, dilation: int = 1, padding: str = "zeros") -> Tensor:
    """Spatially varying PSF filtering with a kernel dictionary, gather form, fused.

    ``y[b,c,h,w] = sum_j weights[b,j,h,w] * sum_{u,v} basis[(b,)j,u,v] * xpad[b,c,h+(u-k//2)d, w+(v-k//2)d]``
    where ``xpad`` is ``x`` extended by ``padding``. The basis is applied as a correlation: for a
    convolution kernel pass ``basis.flip(-1, -2)``. Equals ``apply_psf(x, synthesize_psf(weights,
    basis), dilation, padding)``, but the Triton path never builds the (B,k*k,H,W) kernels or any
    (B,C*k*k,H,W) / (B,C*J,H,W) tensor, forward or backward; d(basis) is reduced deterministically.
    Its exact adjoint is :func:`psf_conv_transpose`.

    Args:
        x: (B, C, H, W) image or features.
        weights: (B, J, H, W) per-pixel mixing weights (not normalized here).
        basis: (J, k, k) shared by the batch, or (B, J, k, k) one dictionary per sample; k odd.
        dilation: int >= 1, spacing of the kernel taps.
        padding: "zeros", "reflect", "replicate" or "circular".
    Returns:
        (B, C, H, W), dtype of ``x`` (contiguous NCHW on the Triton path).
    """


def _transpose_samples(s, dtype, device, requires_grad=False):
    """The usual use (zeros, one basis), and a per-sample basis with replicate padding."""
    return [Sample(sample.args[:4] + (padding,), label) for sample, (padding, label) in
            zip(_filter_samples(s, dtype, device, requires_grad),
                (("zeros", ""), ("replicate", "per-sample basis, replicate")))]


@op(check=_checks.check_psf_conv_transpose, reference=reference.psf_conv_transpose.unchecked, outputs=_like_first,
    kernel=lambda y, weights, basis, dilation, padding: _scatter(y, weights, basis, dilation, padding),
    backward_kernel=lambda grad, y, weights, basis, dilation, padding, needs: _transpose_backward(
        grad, y, weights, basis, dilation, padding, needs),
    samples=_transpose_samples, axes=("B", "C", "H", "J", "k"), bench_shape=HEADLINE, flops=_filter_flops,
    cpu=lambda y, weights, basis, dilation, padding: cpu.psf_conv_transpose(y, weights, basis, dilation, padding))
def psf_conv_transpose(y: Tensor, weights: Tensor, basis: Tensor, dilation: int = 1,
                       padding: str = "zeros") -> Tensor:
    """The exact adjoint of :func:`psf_conv` with the same arguments, scatter form, fused.

    ``<psf_conv(x, w, basis, d, padding), y> == <x, psf_conv_transpose(y, w, basis, d, padding)>``.
    Each pixel p spreads ``K_t(p) * y[p]`` (``K_t(p) = sum_j w[b,j,p] basis[(b,)j,u,v]``, tap
    ``t = u*k + v``) to the position ``p + ((u-k//2)d, (v-k//2)d)``, and what lands outside the
    image is folded back as the adjoint of ``padding`` (zeros: dropped; reflect, replicate,
    circular: added onto the pixel the padding copies there). This is the physical image formation
    of a spatially varying blur: each source pixel spreads its light by the PSF of where it sits,
    ``basis[j,u,v]`` being the light sent to offset ``((u-k//2)d, (v-k//2)d)``. The Triton path
    shares psf_conv's kernels (the forward is psf_conv's d(x) pass; the gradients are its forward
    and tap-gradient passes) and never builds the per-pixel kernels.

    Args:
        y: (B, C, H, W) image.
        weights: (B, J, H, W) per-pixel mixing weights.
        basis: (J, k, k) or (B, J, k, k), k odd.
        dilation: int >= 1.
        padding: "zeros", "reflect", "replicate" or "circular".
    Returns:
        (B, C, H, W), dtype of ``y`` (contiguous NCHW on the Triton path).
    """


def _apply_psf_samples(s, dtype, device, requires_grad=False):
    def sample(padding, label):
        return Sample((randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad),
                       randn((s.B, s.k * s.k, s.H, s.W), dtype, device, requires_grad, scale=1.0 / s.k), s.dilation,
                       padding), label)
    return [sample("zeros", ""), sample("circular", "circular")]


@op(check=_checks.check_apply_psf, reference=reference.apply_psf.unchecked, outputs=_like_first,
    kernel=lambda x, psf, dilation, padding: kernels.psf.filter_forward(x, psf, None, dilation, padding),
    backward_kernel=lambda grad, x, psf, dilation, padding, needs: _filter_backward(
        grad, x, psf, None, dilation, padding, needs),
    samples=_apply_psf_samples, axes=("B", "C", "H", "k"), bench_shape=dict(B=8, C=64, H=128, k=7),
    flops=lambda s: 2.0 * pixels(s) * s.C * s.k * s.k, cpu=cpu.apply_psf)
def apply_psf(x: Tensor, psf: Tensor, dilation: int = 1, padding: str = "zeros") -> Tensor:
    """Apply explicit per-pixel kernels (the kernel-prediction-network form).

    ``y[b,c,h,w] = sum_{u,v} psf[b,u*k+v,h,w] * xpad[b,c,h+(u-k//2)d, w+(v-k//2)d]``, ``xpad`` the
    input extended by ``padding``; the same kernel is applied to every channel, as a correlation.

    Args:
        x: (B, C, H, W).
        psf: (B, k*k, H, W), k odd (the channel count must be an odd square).
        dilation: int >= 1.
        padding: "zeros", "reflect", "replicate" or "circular".
    Returns:
        (B, C, H, W), dtype of ``x``.
    """


def _synthesize_samples(s, dtype, device, requires_grad=False):
    w = mixing_weights(s, dtype, device, requires_grad)
    return [Sample((w, _basis(s, dtype, device, requires_grad))),
            Sample((w, _basis(s, dtype, device, requires_grad, per_sample=True)), "per-sample basis")]


def _synthesized(weights, basis):
    B, _, H, W = weights.shape
    return (((B, basis.shape[-1] * basis.shape[-2], H, W), weights.dtype),)


@op(check=_checks.check_synthesize_psf, reference=reference.synthesize_psf.unchecked, outputs=_synthesized,
    kernel=lambda weights, basis: kernels.psf.synthesize_forward(weights, basis),
    backward_kernel=lambda grad, weights, basis, needs: kernels.psf.synthesize_backward(grad, weights, basis, needs),
    samples=_synthesize_samples, axes=("B", "H", "J", "k"),
    bench_shape=dict(B=8, C=1, H=128, J=40, k=7),  # C: no such axis, 1 in benchmark records
    flops=lambda s: 2.0 * pixels(s) * s.J * s.k * s.k, cpu=cpu.synthesize_psf)
def synthesize_psf(weights: Tensor, basis: Tensor) -> Tensor:
    """Per-pixel kernels from a dictionary: ``K[b,u*k+v,h,w] = sum_j weights[b,j,h,w] * basis[(b,)j,u,v]``.

    Args:
        weights: (B, J, H, W).
        basis: (J, k, k) or (B, J, k, k), k odd.
    Returns:
        (B, k*k, H, W), dtype of ``weights``.
    """
