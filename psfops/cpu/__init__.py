"""Fast CPU implementations of the PSF ops: ``psf_conv``, ``psf_conv_transpose``, ``apply_psf``,
``synthesize_psf`` (same signatures as :mod:`psfops.reference`, arguments NOT checked: the caller
has validated them), each a ``torch.autograd.Function`` with a hand-written backward.

Three algorithms, picked per call (per pass of the backward, too) by :func:`choose`:

``"stack"``  conv-stack: each basis kernel as a 1-input-channel ``F.conv2d`` (oneDNN) over the padded
             image, chunked over J so that the (B,C,J,H,W) stack never exists whole, mixed into the
             output by the weights (``addcmul_``). The adjoint is one ``conv2d`` per J chunk whose input
             channels are the chunk's ``w_j * y`` planes (the conv sums over j itself).
``"taps"``   tap loop: per-pixel taps ``K_t = sum_j w_j basis_j[t]`` synthesized by a matrix product
             for a chunk of taps and a strip of rows at a time, then ``y += K_t * shift_t(xpad)`` for
             every tap (the adjoint scatters ``K_t * y`` onto the shifted extended image). Rows are
             processed in strips so the output strip stays in cache across the k*k taps.
``"fft"``    FFT conv-stack: ``rfft2`` of the padded image once, per J chunk a product with the
             kernels' spectra and an ``irfft2``; the adjoint sums the spectra over j before one
             inverse transform. No wrap-around: the transform size is at least the padded size.

Gradients of weights and basis go through the per-pixel tap gradients
``dK[b,t,p] = sum_c dy[b,c,p] * shift_t(xpad)[b,c,p]`` (tap loop, chunked over taps and strips) and two
matrix products (``dw = basis @ dK``, ``dbasis = w @ dK^T``) on the stack/taps algorithms, and
through spectra on the fft algorithm. ``apply_psf`` always uses the tap loop (its kernels are given).

Memory: every work buffer is sized from the bytes of the call's inputs and outputs (gradients
included for a backward), :func:`work_budget`, so a call allocates at most about that much on top
of them, at any image size (the padded image and FFT spectra, about the size of the image, come on
top; the FFT loops go channel chunk by channel chunk when one kernel's planes for all channels pass
the budget). Half inputs run in float32 (float64 stays float64); outputs have the input dtype.

Double backward works: a plain backward runs the hand-written one; a backward asked to build a
graph (``create_graph=True``: gradient penalties, Hessian-vector products) takes the gradient
through ``psfops.reference`` instead, which torch differentiates again (correct, not lean).
"""
from __future__ import annotations

import functools
import math

import torch

from .. import reference
from ..padding import pad as _pad, pad_adjoint as _pad_adjoint
from . import config
from ._fft import _fft_adjoint, _fft_forward, _fft_wgrad
from ._stack import _stack_adjoint, _stack_forward
from ._taps import _synth, _taps_forward, _taps_scatter, _tap_grads, _taps_wgrad
from ._util import _acc, _path_threads, work_budget
from .config import ALGORITHMS
from .cost import choose, forced

__all__ = ["psf_conv", "psf_conv_transpose", "apply_psf", "synthesize_psf", "choose", "ALGORITHMS",
           "forced", "work_budget", "forward_pass", "adjoint_pass", "weight_grads", "config"]



def _twice_differentiable(reference_fn, n_tensors: int):
    """Backward decorator: under ``create_graph`` (grad mode on inside a backward) the gradient of
    the saved tensors is taken through ``reference_fn(*saved, *ctx.opts)``, so it can be
    differentiated again; otherwise the hand-written backward runs."""
    def wrap(fast):
        @functools.wraps(fast)
        def backward(ctx, *grads):
            if not torch.is_grad_enabled():
                return fast(ctx, *grads)
            saved, needs = ctx.saved_tensors, ctx.needs_input_grad
            wrt = [t for t, need in zip(saved, needs[:n_tensors]) if need]
            out = reference_fn(*saved, *getattr(ctx, "opts", ()))
            got = iter(torch.autograd.grad(out, wrt, grads, create_graph=True, allow_unused=True))
            return tuple(next(got) if need else None for need in needs[:n_tensors]) + (None,) * (len(needs) - n_tensors)
        return backward
    return wrap


# ---- the four computations behind the ops -------------------------------------------------------

def _synth_kernels(w, basis, W):
    """``kernels(r0, r1, t0, t1)`` for the tap loops: taps t0..t1-1 of rows r0..r1 synthesized."""
    k = basis.shape[-1]
    bflat, wf = basis.reshape(*basis.shape[:-2], k * k), w.flatten(2)
    return lambda r0, r1, t0, t1: _synth(wf[:, :, r0 * W:r1 * W], bflat, t0, t1)


def _given_kernels(psf, W):
    """``kernels(r0, r1, t0, t1)`` for the tap loops: slices of explicit taps (B,T,H,W)."""
    pf = _acc(psf).flatten(2)
    return lambda r0, r1, t0, t1: pf[:, t0:t1, r0 * W:r1 * W]


def forward_pass(x, w, basis, d, padding, algo, budget):
    """psf_conv's output (the transpose's d(y)) with algorithm ``algo`` in a work ``budget`` of
    bytes (:func:`work_budget`): (B,C,H,W). One of the three tasks the cost model chooses for."""
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    if algo == "fft":
        return _fft_forward(x, padding, w, basis, B, C, H, W, J, k, d, budget)
    P = d * (k // 2)
    xpad = _pad(x, P, P, padding)
    if algo == "stack":
        return _stack_forward(xpad, w, basis, B, C, H, W, J, k, d, budget)
    return _taps_forward(xpad, _synth_kernels(w, basis, W), B, C, H, W, k, d, k * k, budget)


def adjoint_pass(y, w, basis, d, padding, algo, budget):
    """The adjoint of :func:`forward_pass` in x, (B,C,H,W) and contiguous."""
    B, C, H, W = y.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    if algo == "stack":
        out = _stack_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P, padding == "zeros")
        return out if padding == "zeros" else _pad_adjoint(out, P, P, padding)
    if algo == "fft":
        ext = _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P)
    else:
        ext = _taps_scatter(y, _synth_kernels(w, basis, W), B, C, H, W, k, d, k * k, budget, P)
    return _pad_adjoint(ext, P, P, padding).contiguous()  # (zeros: a crop; copied, the extended grid freed)


def weight_grads(x, dy, w, basis, d, padding, algo, budget, need_w, need_b):
    """(d(weights), d(basis)) of ``<psf_conv(x), dy>`` with algorithm ``algo`` ("taps" or "fft"),
    computing only those asked for (``need_w``, ``need_b``)."""
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    if algo == "fft":
        return _fft_wgrad(x, padding, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b)
    P = d * (k // 2)
    return _taps_wgrad(_pad(x, P, P, padding), dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b)


def _shape(x, w, basis):
    B, C, H, W = x.shape
    return B, C, H, W, w.shape[1], basis.shape[-1]


def _empty(*ts):
    return any(t.numel() == 0 for t in ts)


def _zero_grads(ctx, n_opts):
    """The gradients of an empty call: zeros for the saved tensors asked for, None for the options."""
    needs = ctx.needs_input_grad
    return tuple(torch.zeros_like(t) if need else None for t, need in zip(ctx.saved_tensors, needs)) + (None,) * n_opts


def _out(t, dtype):
    return None if t is None else t.to(dtype)


_LINEAR = {"forward": forward_pass, "adjoint": adjoint_pass}


def _linear_function(name, task, other, reference_fn):
    """The autograd Function of psf_conv (``task`` "forward") or its transpose ("adjoint"): the output
    is ``task`` of the first input; its gradient is ``other`` of the cotangent, and the gradients of
    weights and basis come from :func:`weight_grads` (for the transpose with the operands swapped:
    <T(y), g> = sum_j <w_j y, k_j * pad(g)>, psf_conv's wgrad with x <- g, dy <- y)."""
    def forward(ctx, a, weights, basis, dilation, padding, algorithm):
        ctx.save_for_backward(a, weights, basis)
        ctx.opts = (dilation, padding, algorithm)
        if _empty(a, weights):
            return torch.zeros_like(a, memory_format=torch.contiguous_format)
        algo = choose(task, *_shape(a, weights, basis), dilation, algorithm)
        out = _LINEAR[task](_acc(a), _acc(weights), _acc(basis), dilation, padding, algo, work_budget(a, weights, a))
        return out.to(a.dtype)

    def backward(ctx, g):
        a, weights, basis = ctx.saved_tensors
        d, padding, algorithm = ctx.opts
        na, nw, nb = ctx.needs_input_grad[:3]
        if _empty(a, weights):
            return _zero_grads(ctx, 3)
        aa, wa, ba, ga = _acc(a), _acc(weights), _acc(basis), _acc(g)
        shape = _shape(a, weights, basis)
        budget = work_budget(a, weights, g, *([a] if na else []), *([weights] if nw else []))
        da = dw = db = None
        if na:
            da = _LINEAR[other](ga, wa, ba, d, padding, choose(other, *shape, d, algorithm), budget).to(a.dtype)
        if nw or nb:
            x, dy = (aa, ga) if task == "forward" else (ga, aa)
            dw, db = weight_grads(x, dy, wa, ba, d, padding, choose("wgrad", *shape, d, algorithm), budget, nw, nb)
        return da, _out(dw, weights.dtype), _out(db, basis.dtype), None, None, None

    twice = _twice_differentiable(lambda a, w, b, d, p, algorithm: reference_fn(a, w, b, d, p), 3)
    return type(name, (torch.autograd.Function,), dict(forward=staticmethod(_path_threads(forward)),
                                                     backward=staticmethod(twice(_path_threads(backward)))))


_PsfConv = _linear_function("_PsfConv", "forward", "adjoint", reference.psf_conv.unchecked)
_PsfConvTranspose = _linear_function("_PsfConvTranspose", "adjoint", "forward", reference.psf_conv_transpose.unchecked)


class _ApplyPsf(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, x, psf, dilation, padding):
        ctx.save_for_backward(x, psf)
        ctx.opts = (dilation, padding)
        if _empty(x, psf):
            return torch.zeros_like(x, memory_format=torch.contiguous_format)
        B, C, H, W = x.shape
        T = psf.shape[1]
        k = math.isqrt(T)
        P = dilation * (k // 2)
        y = _taps_forward(_pad(_acc(x), P, P, padding), _given_kernels(psf, W),
                          B, C, H, W, k, dilation, T, work_budget(x, psf, x))
        return y.to(x.dtype)

    @staticmethod
    @_twice_differentiable(reference.apply_psf.unchecked, 2)
    @_path_threads
    def backward(ctx, g):
        x, psf = ctx.saved_tensors
        d, padding = ctx.opts
        nx, npsf = ctx.needs_input_grad[:2]
        if _empty(x, psf):
            return _zero_grads(ctx, 2)
        B, C, H, W = x.shape
        T = psf.shape[1]
        k = math.isqrt(T)
        P = d * (k // 2)
        ga = _acc(g)
        budget = work_budget(x, psf, g, *([x] if nx else []), *([psf] if npsf else []))
        dx = dpsf = None
        if nx:
            ext = _taps_scatter(ga, _given_kernels(psf, W), B, C, H, W, k, d, T, budget, P)
            dx = _pad_adjoint(ext, P, P, padding).to(x.dtype, memory_format=torch.contiguous_format)
        if npsf:
            dp = torch.empty((B, T, H, W), dtype=ga.dtype)

            def consume(g0, r0, r1, t0, t1, dK):
                dp[:, t0:t1, r0:r1] = dK.view(B, t1 - t0, r1 - r0, W)

            _tap_grads(_pad(_acc(x), P, P, padding), ga, B, C, H, W, k, d, T, budget, consume)
            dpsf = dp.to(psf.dtype)
        return dx, dpsf, None, None


class _SynthesizePsf(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, weights, basis):
        ctx.save_for_backward(weights, basis)
        B, J, H, W = weights.shape
        k = basis.shape[-1]
        bflat = _acc(basis).reshape(*basis.shape[:-2], k * k)
        out = _synth(_acc(weights).view(B, J, H * W), bflat, 0, k * k)
        return out.view(B, k * k, H, W).to(weights.dtype)

    @staticmethod
    @_twice_differentiable(reference.synthesize_psf.unchecked, 2)
    @_path_threads
    def backward(ctx, g):
        weights, basis = ctx.saved_tensors
        nw, nb = ctx.needs_input_grad[:2]
        B, J, H, W = weights.shape
        k = basis.shape[-1]
        ga = _acc(g).view(B, k * k, H * W)
        bflat = _acc(basis).reshape(*basis.shape[:-2], k * k)
        dw = db = None
        if nw:
            dw = torch.matmul(bflat, ga).view(B, J, H, W).to(weights.dtype)
        if nb:
            gb = torch.matmul(_acc(weights).view(B, J, H * W), ga.transpose(1, 2))  # (B,J,T)
            db = (gb if basis.dim() == 4 else gb.sum(0)).view(basis.shape).to(basis.dtype)
        return dw, db


# ---- public (unchecked) entry points ------------------------------------------------------------

def psf_conv(x, weights, basis, dilation: int = 1, padding: str = "zeros", algorithm: str | None = None):
    """``y = sum_j w_j * (basis_j correlated with pad(x))``; see :mod:`psfops.reference`.
    ``algorithm`` forces one of :data:`ALGORITHMS` (default: :func:`choose`)."""
    return _PsfConv.apply(x, weights, basis, int(dilation), padding, algorithm)


def psf_conv_transpose(y, weights, basis, dilation: int = 1, padding: str = "zeros", algorithm: str | None = None):
    """The exact adjoint of :func:`psf_conv` in ``x`` (scatter, then the padding's adjoint)."""
    return _PsfConvTranspose.apply(y, weights, basis, int(dilation), padding, algorithm)


def apply_psf(x, psf, dilation: int = 1, padding: str = "zeros"):
    """Explicit per-pixel kernels (B,k*k,H,W) applied by the tap loop."""
    return _ApplyPsf.apply(x, psf, int(dilation), padding)


def synthesize_psf(weights, basis):
    """(B,J,H,W), (J,k,k)|(B,J,k,k) -> (B,k*k,H,W) by one matrix product."""
    return _SynthesizePsf.apply(weights, basis)
