"""Pure-PyTorch reference implementations of every psfops op (same signatures).

They are the truth in tests and the CPU path. They may materialize intermediates (unfold, concat);
arithmetic runs in float32 for half inputs (float64 for float64) and the result is cast back to the
input dtype, as the fused kernels do. Autograd flows through them natively.

Each function checks its arguments (as ``psfops.<op>`` does) and then runs its unchecked core,
``reference.<op>.unchecked``, which ``psfops.<op>`` calls directly after its own check.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _checks
from . import padding as _pad
from .env import accumulation_dtype

__all__ = [
    "psf_conv", "psf_conv_transpose", "psf_conv_convstack", "synthesize_psf", "apply_psf", "spatial_normalize",
    "gated_blend", "gated_fusion", "lstm_cell",
]


def _acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the accumulation dtype: float64 stays, everything else goes to float32."""
    return t.to(accumulation_dtype(t.dtype))


def _checked(check):
    """Decorator: the public reference function runs ``check`` (same signature and defaults as
    the core) first; the unchecked core stays reachable as ``.unchecked``."""
    def wrap(core):
        @functools.wraps(core)
        def public(*args, **kwargs):
            check(*args, **kwargs)
            return core(*args, **kwargs)
        public.unchecked = core
        return public
    return wrap


def _empty_like(x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``x`` (which has no elements, or meets an input with none) that stay on
    the autograd graph of every input, so backward gives (zero) gradients instead of an error."""
    return x * 0 + sum(t.sum() * 0 for t in inputs)


def _unfold_taps(x: torch.Tensor, k: int, dilation: int, padding: str = "zeros") -> torch.Tensor:
    """(B,C,H,W) -> (B,C,k*k,H,W): tap u*k+v holds ``xpad[..., h+(u-k//2)d, w+(v-k//2)d]``, the
    input extended by ``padding`` (:mod:`psfops.padding`)."""
    B, C, H, W = (int(n) for n in x.shape)
    k, dilation = int(k), int(dilation)  # (plain ints: under torch.jit.trace the sizes are tensors)
    p = dilation * (k // 2)
    if padding == "zeros":
        cols = F.unfold(x, k, dilation=dilation, padding=p)
    else:
        cols = F.unfold(_pad.pad(x, p, p, padding), k, dilation=dilation)
    return cols.view(B, C, k * k, H, W)


def _fold_taps(cols: torch.Tensor, k: int, dilation: int, padding: str = "zeros") -> torch.Tensor:
    """The adjoint of :func:`_unfold_taps`: (B,C,k*k,H,W) -> (B,C,H,W). Tap t of pixel p is added at
    the extended position ``p + s_t``, ``s_t = ((u-k//2)d, (v-k//2)d)``; the extended plane is then
    folded back onto the image by ``padding.pad_adjoint`` (zeros: the border is dropped)."""
    B, C, kk, H, W = (int(n) for n in cols.shape)
    k, dilation = int(k), int(dilation)
    p = dilation * (k // 2)
    flat = cols.reshape(B, C * kk, H * W)
    if padding == "zeros":
        return F.fold(flat, (H, W), k, dilation=dilation, padding=p)
    return _pad.pad_adjoint(F.fold(flat, (H + 2 * p, W + 2 * p), k, dilation=dilation), p, p, padding)


def _synthesize(weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(B,J,H,W), (J,k,k) or (B,J,k,k) -> (B,k*k,H,W), in the dtype of the (already cast) inputs."""
    J, k = int(basis.shape[-3]), int(basis.shape[-1])
    if basis.dim() == 3:
        return torch.einsum("bjhw,jt->bthw", weights, basis.reshape(J, k * k))
    return torch.einsum("bjhw,bjt->bthw", weights, basis.reshape(int(basis.shape[0]), J, k * k))


@_checked(_checks.check_synthesize_psf)
def synthesize_psf(weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(B,J,H,W), (J,k,k) or (B,J,k,k) -> (B,k*k,H,W): ``K[b,u*k+v] = sum_j weights[b,j] * basis[(b,)j,u,v]``.

    A 3-d basis is shared by the batch, a 4-d one holds one dictionary per sample. The taps keep the
    basis's orientation: ``psf_conv`` / ``apply_psf`` apply them as a correlation (for convolution
    kernels, synthesize from ``basis.flip(-1, -2)``).
    """
    return _synthesize(_acc(weights), _acc(basis)).to(weights.dtype)


@_checked(_checks.check_apply_psf)
def apply_psf(x: torch.Tensor, psf: torch.Tensor, dilation: int = 1, padding: str = "zeros") -> torch.Tensor:
    """(B,C,H,W), (B,k*k,H,W) -> (B,C,H,W): per-pixel kernels applied by unfold + sum.

    ``y[b,c,h,w] = sum_{u,v} psf[b,u*k+v,h,w] * xpad[b,c,h+(u-k//2)d, w+(v-k//2)d]``, ``xpad`` the
    input extended by ``padding`` (zeros, reflect, replicate, circular: :mod:`psfops.padding`).
    The kernels are applied as a correlation; for convolution kernels flip each one
    (``psf.unflatten(1, (k, k)).flip(1, 2).flatten(1, 2)``).
    """
    if x.numel() == 0 or psf.numel() == 0:
        return _empty_like(x, psf)
    k = _checks.psf_kernel_size(psf)
    taps = _unfold_taps(_acc(x), k, dilation, padding)
    return torch.einsum("bcthw,bthw->bchw", taps, _acc(psf)).to(x.dtype)


@_checked(_checks.check_psf_conv)
def psf_conv(x: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, dilation: int = 1,
             padding: str = "zeros") -> torch.Tensor:
    """Spatially varying filtering, gather form: (B,C,H,W), (B,J,H,W), (J,k,k) or (B,J,k,k) -> (B,C,H,W).

    ``y[b,c,h,w] = sum_j w[b,j,h,w] * sum_{u,v} basis[(b,)j,u,v] * xpad[b,c,h+(u-k//2)d, w+(v-k//2)d]``
    where ``xpad`` is ``x`` extended outside the image by ``padding`` (``"zeros"``, ``"reflect"``,
    ``"replicate"``, ``"circular"``, as ``F.pad``, for any pad size: :mod:`psfops.padding`). Equals
    ``apply_psf(x, synthesize_psf(weights, basis), dilation, padding)``. The basis is applied as a
    correlation; for a convolution kernel pass ``basis.flip(-1, -2)``. A 3-d basis is shared by the
    batch, a 4-d one holds one dictionary per sample.

    Unfold form: builds the (B,C*k*k,H,W) tap tensor (the thing the fused kernel avoids).
    """
    if x.numel() == 0 or weights.numel() == 0:
        return _empty_like(x, weights, basis)
    k = int(basis.shape[-1])
    taps = _unfold_taps(_acc(x), k, dilation, padding)
    psf = _synthesize(_acc(weights), _acc(basis))
    return torch.einsum("bcthw,bthw->bchw", taps, psf).to(x.dtype)


@_checked(_checks.check_psf_conv_transpose)
def psf_conv_transpose(y: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, dilation: int = 1,
                       padding: str = "zeros") -> torch.Tensor:
    """The exact adjoint of :func:`psf_conv` with the same arguments (scatter form); same shapes.

    ``<psf_conv(x, w, basis, d, padding), y> == <x, psf_conv_transpose(y, w, basis, d, padding)>``,
    where ``psf_conv(x)[b,c,h,w] = sum_j w[b,j,h,w] * sum_{u,v} basis[(b,)j,u,v] *
    xpad[b,c,h+(u-k//2)d, w+(v-k//2)d]`` (the basis applied as a correlation there; for a
    convolution kernel pass ``basis.flip(-1, -2)`` to both).
    With ``K_t(p) = sum_j w[b,j,p] * basis[(b,)j,t]`` and ``s_t = ((u-k//2)d, (v-k//2)d)`` for tap
    ``t = u*k+v``, each pixel p spreads ``K_t(p) * y[p]`` to the extended position ``p + s_t``; the
    extension is then folded back onto the image as the adjoint of ``padding`` (zeros: dropped;
    reflect, replicate, circular: added onto the source pixel of the index map,
    ``psfops.padding.pad_adjoint``). This is the physical image formation of a spatially varying
    blur: each source pixel spreads its light by the PSF of where it sits. The basis is applied as
    in :func:`psf_conv` (a correlation there, so here ``basis[j,u,v]`` is the weight sent to offset
    ``((u-k//2)d, (v-k//2)d)``: a PSF in its natural orientation).

    Fold form: builds the (B,C*k*k,H,W) contributions and ``F.fold``s them onto the extended plane.
    """
    if y.numel() == 0 or weights.numel() == 0:
        return _empty_like(y, weights, basis)
    k = int(basis.shape[-1])
    psf = _synthesize(_acc(weights), _acc(basis))
    cols = _acc(y).unsqueeze(2) * psf.unsqueeze(1)
    return _fold_taps(cols, k, dilation, padding).to(y.dtype)


@_checked(_checks.check_psf_conv)
def psf_conv_convstack(x: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, dilation: int = 1,
                       padding: str = "zeros") -> torch.Tensor:
    """Same result as :func:`psf_conv`, in conv-stack form: each basis kernel as a depthwise conv2d
    (a correlation) of the padded input giving a (B,C,J,H,W) stack, then mixed per pixel by
    ``weights``. Used as a second baseline. A 4-d basis runs as a grouped conv, one group per (b,c)."""
    if x.numel() == 0 or weights.numel() == 0:
        return _empty_like(x, weights, basis)
    B, C, H, W = (int(n) for n in x.shape)
    J, k, d = int(basis.shape[-3]), int(basis.shape[-1]), int(dilation)
    p = d * (k // 2)
    xp = _pad.pad(_acc(x), p, p, padding)
    Hp, Wp = H + 2 * p, W + 2 * p
    if basis.dim() == 3:
        stack = F.conv2d(xp.reshape(B * C, 1, Hp, Wp), _acc(basis).unsqueeze(1), dilation=d)
    else:
        kernels = _acc(basis).unsqueeze(1).expand(B, C, J, k, k).reshape(B * C * J, 1, k, k)
        stack = F.conv2d(xp.reshape(1, B * C, Hp, Wp), kernels, dilation=d, groups=B * C)
    return torch.einsum("bcjhw,bjhw->bchw", stack.view(B, C, J, H, W), _acc(weights)).to(x.dtype)


@_checked(_checks.check_spatial_normalize)
def spatial_normalize(x: torch.Tensor, mode: str = "softmax", eps: float = 1e-6) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,H,W), each (b,c) plane normalized over its H*W values to sum to 1.

    ``"softmax"``: softmax over the plane. ``"l1"``: ``abs(x) / (sum(abs(x)) + eps)``.
    """
    B, C, H, W = x.shape
    flat = _acc(x).reshape(B, C, H * W)
    if mode == "softmax":
        out = torch.softmax(flat, dim=-1)
    else:
        a = flat.abs()
        out = a / (a.sum(dim=-1, keepdim=True) + eps)
    return out.reshape(B, C, H, W).to(x.dtype)


@_checked(_checks.check_gated_blend)
def gated_blend(cur: torch.Tensor, prev: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``s = sigmoid(gate); s*cur + (1-s)*prev``; gate (B,C,H,W) or (B,1,H,W) (broadcast over C)."""
    s = torch.sigmoid(_acc(gate))
    return (s * _acc(cur) + (1 - s) * _acc(prev)).to(cur.dtype)


@_checked(_checks.check_gated_fusion)
def gated_fusion(cur: torch.Tensor, prev: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``gate = conv1x1(cat([cur, prev], 1), weight, bias)``, then :func:`gated_blend`.

    weight (C,2C) or (C,2C,1,1) as in ``nn.Conv2d(2C, C, 1)``; bias (C,) or None.
    """
    if cur.numel() == 0:
        return _empty_like(cur, prev, weight, *([] if bias is None else [bias]))
    C = cur.shape[1]
    w = _acc(weight).reshape(C, 2 * C, 1, 1)
    b = None if bias is None else _acc(bias)
    gate = F.conv2d(torch.cat([_acc(cur), _acc(prev)], dim=1), w, b)
    s = torch.sigmoid(gate)
    return (s * _acc(cur) + (1 - s) * _acc(prev)).to(cur.dtype)


@_checked(_checks.check_lstm_cell)
def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvLSTM pointwise update. gates (B,4C,H,W) in order i,f,g,o; c_prev (B,C,H,W).

    ``c = sigmoid(f)*c_prev + sigmoid(i)*tanh(g)``, ``h = sigmoid(o)*tanh(c)``; returns (h, c).
    """
    i, f, g, o = _acc(gates).chunk(4, dim=1)
    c = torch.sigmoid(f) * _acc(c_prev) + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.to(gates.dtype), c.to(gates.dtype)
