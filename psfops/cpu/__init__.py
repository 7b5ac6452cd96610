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
top; see the README). Half inputs run in float32 (float64 stays float64); outputs have the input dtype.

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
           "forced", "work_budget", "config"]



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

def _forward(x, w, basis, d, padding, algo, budget):
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    xpad = _pad(x, P, P, padding)
    if algo == "stack":
        return _stack_forward(xpad, w, basis, B, C, H, W, J, k, d, budget)
    if algo == "fft":
        return _fft_forward(xpad, w, basis, B, C, H, W, J, k, d, budget)
    T = k * k
    bflat = basis.reshape(*basis.shape[:-2], T)
    wf = w.view(B, J, H * W)
    return _taps_forward(xpad, lambda r0, r1, t0, t1: _synth(wf[:, :, r0 * W:r1 * W], bflat, t0, t1),
                         B, C, H, W, k, d, T, budget)


def _adjoint(y, w, basis, d, padding, algo, budget):
    B, C, H, W = y.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    if algo == "stack":
        out = _stack_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P, padding == "zeros")
        return out if padding == "zeros" else _pad_adjoint(out, P, P, padding)
    if algo == "fft":
        ext = _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P)
    else:
        T = k * k
        bflat = basis.reshape(*basis.shape[:-2], T)
        wf = w.view(B, J, H * W)
        ext = _taps_scatter(y, lambda r0, r1, t0, t1: _synth(wf[:, :, r0 * W:r1 * W], bflat, t0, t1),
                            B, C, H, W, k, d, T, budget, P)
    return _pad_adjoint(ext, P, P, padding)


def _wgrad(x, dy, w, basis, d, padding, algo, budget, need_w, need_b):
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    xpad = _pad(x, P, P, padding)
    fn = _fft_wgrad if algo == "fft" else _taps_wgrad
    return fn(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b)


def _shape(x, w, basis):
    B, C, H, W = x.shape
    return B, C, H, W, w.shape[1], basis.shape[-1]


def _empty(*ts):
    return any(t.numel() == 0 for t in ts)


def _out(t, dtype):
    return None if t is None else t.to(dtype)


class _PsfConv(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, x, weights, basis, dilation, padding, algorithm):
        ctx.save_for_backward(x, weights, basis)
        ctx.opts = (dilation, padding, algorithm)
        if _empty(x, weights):
            return torch.zeros_like(x, memory_format=torch.contiguous_format)
        xa, wa, ba = _acc(x), _acc(weights), _acc(basis)
        algo = choose("forward", *_shape(x, weights, basis), dilation, algorithm)
        y = _forward(xa, wa, ba, dilation, padding, algo, work_budget(x, weights, x))
        return y.to(x.dtype)

    @staticmethod
    @_twice_differentiable(lambda x, w, b, d, p, algorithm: reference.psf_conv.unchecked(x, w, b, d, p), 3)
    @_path_threads
    def backward(ctx, g):
        x, weights, basis = ctx.saved_tensors
        d, padding, algorithm = ctx.opts
        nx, nw, nb = ctx.needs_input_grad[:3]
        if _empty(x, weights):
            return (torch.zeros_like(x) if nx else None, torch.zeros_like(weights) if nw else None,
                    torch.zeros_like(basis) if nb else None, None, None, None)
        xa, wa, ba, ga = _acc(x), _acc(weights), _acc(basis), _acc(g)
        shape = _shape(x, weights, basis)
        budget = work_budget(x, weights, g, *([x] if nx else []), *([weights] if nw else []))
        dx = dw = db = None
        if nx:
            dx = _adjoint(ga, wa, ba, d, padding, choose("adjoint", *shape, d, algorithm), budget).to(x.dtype)
        if nw or nb:
            dw, db = _wgrad(xa, ga, wa, ba, d, padding, choose("wgrad", *shape, d, algorithm), budget, nw, nb)
        return dx, _out(dw, weights.dtype), _out(db, basis.dtype), None, None, None


class _PsfConvTranspose(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, y, weights, basis, dilation, padding, algorithm):
        ctx.save_for_backward(y, weights, basis)
        ctx.opts = (dilation, padding, algorithm)
        if _empty(y, weights):
            return torch.zeros_like(y, memory_format=torch.contiguous_format)
        algo = choose("adjoint", *_shape(y, weights, basis), dilation, algorithm)
        out = _adjoint(_acc(y), _acc(weights), _acc(basis), dilation, padding, algo, work_budget(y, weights, y))
        return out.to(y.dtype)

    @staticmethod
    @_twice_differentiable(lambda y, w, b, d, p, algorithm: reference.psf_conv_transpose.unchecked(y, w, b, d, p), 3)
    @_path_threads
    def backward(ctx, g):
        y, weights, basis = ctx.saved_tensors
        d, padding, algorithm = ctx.opts
        ny, nw, nb = ctx.needs_input_grad[:3]
        if _empty(y, weights):
            return (torch.zeros_like(y) if ny else None, torch.zeros_like(weights) if nw else None,
                    torch.zeros_like(basis) if nb else None, None, None, None)
        ya, wa, ba, ga = _acc(y), _acc(weights), _acc(basis), _acc(g)
        shape = _shape(y, weights, basis)
        budget = work_budget(y, weights, g, *([y] if ny else []), *([weights] if nw else []))
        dy = dw = db = None
        if ny:
            dy = _forward(ga, wa, ba, d, padding, choose("forward", *shape, d, algorithm), budget).to(y.dtype)
        if nw or nb:  # <T(y), g> = sum_j <w_j y, k_j * pad(g)>: psf_conv's wgrad with x <- g, dy <- y
            dw, db = _wgrad(ga, ya, wa, ba, d, padding, choose("wgrad", *shape, d, algorithm), budget, nw, nb)
        return dy, _out(dw, weights.dtype), _out(db, basis.dtype), None, None, None


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
        pf = _acc(psf).view(B, T, H * W)
        y = _taps_forward(_pad(_acc(x), P, P, padding),
                          lambda r0, r1, t0, t1: pf[:, t0:t1, r0 * W:r1 * W],
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
            return torch.zeros_like(x) if nx else None, torch.zeros_like(psf) if npsf else None, None, None
        B, C, H, W = x.shape
        T = psf.shape[1]
        k = math.isqrt(T)
        P = d * (k // 2)
        ga = _acc(g)
        budget = work_budget(x, psf, g, *([x] if nx else []), *([psf] if npsf else []))
        dx = dpsf = None
        if nx:
            pf = _acc(psf).view(B, T, H * W)
            ext = _taps_scatter(ga, lambda r0, r1, t0, t1: pf[:, t0:t1, r0 * W:r1 * W],
                                B, C, H, W, k, d, T, budget, P)
            dx = _pad_adjoint(ext, P, P, padding).to(x.dtype)
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
