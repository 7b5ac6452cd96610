"""Fused kernels for spatially varying PSF filtering: psf_conv, apply_psf, synthesize_psf.

The two filtering ops share their kernels. A per-pixel tap weight ``K_t(p)`` (t = u*k + v) comes
either from an explicit psf tensor (``apply_psf``, SYNTH=False) or is synthesized on the fly from
the basis (``psf_conv``, SYNTH=True): ``K_t(p) = sum_j weights[j, p] * basis[j, t]``. So the fused
path never materializes the (B, k*k, H, W) psf, nor any (B, C*k*k, H, W) or (B, C*J, H, W) tensor.

Forward      y[c, p]  = sum_t K_t(p) * x[c, p + s_t]                       (_filter_fwd_kernel)
Backward dx  dx[c, q] = sum_t K_t(q - s_t) * dy[c, q - s_t]   (gather form, _filter_dx_kernel)
Backward dK  dK_t(p)  = sum_c dy[c, p] * x[c, p + s_t]                     (_filter_dtap_kernel)
             apply_psf stores dK as d(psf); psf_conv turns it into
             d(weights)[j, p] = sum_t dK_t(p) * basis[j, t]
             d(basis)[j, t]   = sum_{b, p} weights[j, p] * dK_t(p)
d(basis) is reduced deterministically: each program writes its partial sums to a
(programs, J, k*k) buffer that a second pass (``torch.sum``, fixed order) reduces; no atomics.

Layout: every tensor is made contiguous NCHW; a program owns BLOCK_P consecutive pixels of one
image (and BLOCK_C channels). Plane offsets are computed in int64, so tensors over 2**31 elements
index correctly. Accumulation is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (acc_dtype, channel_block, launcher, pixel_block, plane_and_tile,
                      plane_offsets, shifted_pixels, tap_shift, torch_acc_dtype, unneeded_as_placeholders)


# --------------------------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_weights_tile(w_ptr, b, J, HW, pix, pmask, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """weights[b, :, pix] as a (BLOCK_J, BLOCK_P) tile (zeros outside J and the mask)."""
    jj = tl.arange(0, BLOCK_J)
    rows = plane_offsets(b, J, jj, HW)
    tile = tl.load(w_ptr + rows[:, None] + pix[None, :], mask=(jj < J)[:, None] & pmask[None, :], other=0.0)
    return tile.to(ACC)


@triton.jit
def _basis_column(basis_ptr, t, J, KK: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """basis[:, t] as a (BLOCK_J,) vector."""
    jj = tl.arange(0, BLOCK_J)
    return tl.load(basis_ptr + jj * KK + t, mask=jj < J, other=0.0).to(ACC)


@triton.jit
def _tap_weight(src_ptr, basis_ptr, b, t, J, HW, pix, pmask, w_tile,
                SYNTH: tl.constexpr, KK: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """K_t(pix): synthesized from ``w_tile`` (weights at ``pix``) if SYNTH, else loaded from psf."""
    if SYNTH:
        col = _basis_column(basis_ptr, t, J, KK, BLOCK_J, ACC)
        return tl.sum(w_tile * col[:, None], axis=0)
    else:
        return tl.load(src_ptr + plane_offsets(b, KK, t, HW) + pix, mask=pmask, other=0.0).to(ACC)


@triton.jit
def _image_pixels(H, W, BLOCK_P: tl.constexpr):
    """Grid axis 0 runs over (images x pixel tiles): image b (int64), the tile's flat pixel
    indices, mask, rows and columns."""
    b, pix, pmask = plane_and_tile(H * W, BLOCK_P)
    return b, pix, pmask, pix // W, pix % W


@triton.jit
def _image_tile(C, H, W, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """A program of the grid (images x pixel tiles, channel blocks): image b (int64), pixels
    (pix, pmask, h, w) and its channel planes (int64 offsets, mask)."""
    b, pix, pmask, h, w = _image_pixels(H, W, BLOCK_P)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, pix, pmask, h, w, plane_offsets(b, C, cc, H * W), cc < C


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _filter_fwd_kernel(x_ptr, src_ptr, basis_ptr, y_ptr, C, H, W, J, dilation,
                       SYNTH: tl.constexpr, KSIZE: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    b, pix, pmask, h, w, rows, cmask = _image_tile(C, H, W, BLOCK_C, BLOCK_P)
    w_tile = tl.zeros((BLOCK_J, BLOCK_P), ACC)
    if SYNTH:
        w_tile = _load_weights_tile(src_ptr, b, J, HW, pix, pmask, BLOCK_J, ACC)
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for t in range(KK):
        dh, dw = tap_shift(t, KSIZE, dilation)
        spix, smask = shifted_pixels(h, w, dh, dw, H, W, pmask)
        k_t = _tap_weight(src_ptr, basis_ptr, b, t, J, HW, pix, pmask, w_tile, SYNTH, KK, BLOCK_J, ACC)
        xv = tl.load(x_ptr + rows[:, None] + spix[None, :], mask=cmask[:, None] & smask[None, :], other=0.0)
        acc += k_t[None, :] * xv.to(ACC)
    tl.store(y_ptr + rows[:, None] + pix[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _filter_dx_kernel(dy_ptr, src_ptr, basis_ptr, dx_ptr, C, H, W, J, dilation,
                      SYNTH: tl.constexpr, KSIZE: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    b, pix, pmask, h, w, rows, cmask = _image_tile(C, H, W, BLOCK_C, BLOCK_P)
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for t in range(KK):
        dh, dw = tap_shift(t, KSIZE, dilation)
        # the output pixel that read this input pixel through tap t
        opix, omask = shifted_pixels(h, w, -dh, -dw, H, W, pmask)
        w_tile = tl.zeros((BLOCK_J, BLOCK_P), ACC)
        if SYNTH:
            w_tile = _load_weights_tile(src_ptr, b, J, HW, opix, omask, BLOCK_J, ACC)
        k_t = _tap_weight(src_ptr, basis_ptr, b, t, J, HW, opix, omask, w_tile, SYNTH, KK, BLOCK_J, ACC)
        dyv = tl.load(dy_ptr + rows[:, None] + opix[None, :], mask=cmask[:, None] & omask[None, :], other=0.0)
        acc += k_t[None, :] * dyv.to(ACC)
    tl.store(dx_ptr + rows[:, None] + pix[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _basis_grads_step(dk, w_tile, basis_ptr, part_ptr, part_row, t, J,
                      dw_acc, KK: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """Given dK_t over the tile: add basis[:, t] x dK_t to d(weights) and write this program's
    partial d(basis)[:, t] = sum_p weights[:, p] * dK_t(p). Returns the updated d(weights) tile."""
    jj = tl.arange(0, BLOCK_J)
    col = _basis_column(basis_ptr, t, J, KK, BLOCK_J, ACC)
    tl.store(part_ptr + part_row + jj * KK + t, tl.sum(w_tile * dk[None, :], axis=1), mask=jj < J)
    return dw_acc + col[:, None] * dk[None, :]


@triton.jit
def _store_weights_tile(ptr, tile, b, J, HW, pix, pmask, BLOCK_J: tl.constexpr):
    jj = tl.arange(0, BLOCK_J)
    rows = plane_offsets(b, J, jj, HW)
    tl.store(ptr + rows[:, None] + pix[None, :], tile.to(ptr.dtype.element_ty),
             mask=(jj < J)[:, None] & pmask[None, :])


@triton.jit
def _filter_dtap_kernel(x_ptr, dy_ptr, w_ptr, basis_ptr, dsrc_ptr, part_ptr, C, H, W, J, dilation,
                        SYNTH: tl.constexpr, KSIZE: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """dK_t(p) for every tap; stores d(psf) (SYNTH=False) or d(weights) + d(basis) partials."""
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    b, pix, pmask, h, w = _image_pixels(H, W, BLOCK_P)
    part_row = tl.program_id(0).to(tl.int64) * J * KK  # one partial row per (image, tile)
    w_tile = tl.zeros((BLOCK_J, BLOCK_P), ACC)
    if SYNTH:
        w_tile = _load_weights_tile(w_ptr, b, J, HW, pix, pmask, BLOCK_J, ACC)
    dw_acc = tl.zeros((BLOCK_J, BLOCK_P), ACC)
    for t in range(KK):
        dh, dw = tap_shift(t, KSIZE, dilation)
        spix, smask = shifted_pixels(h, w, dh, dw, H, W, pmask)
        dk = tl.zeros((BLOCK_P,), ACC)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            cmask = cc < C
            rows = plane_offsets(b, C, cc, HW)
            dyv = tl.load(dy_ptr + rows[:, None] + pix[None, :], mask=cmask[:, None] & pmask[None, :], other=0.0)
            xv = tl.load(x_ptr + rows[:, None] + spix[None, :], mask=cmask[:, None] & smask[None, :], other=0.0)
            dk += tl.sum(dyv.to(ACC) * xv.to(ACC), axis=0)
        if SYNTH:
            dw_acc = _basis_grads_step(dk, w_tile, basis_ptr, part_ptr, part_row, t, J, dw_acc, KK, BLOCK_J, ACC)
        else:
            tl.store(dsrc_ptr + plane_offsets(b, KK, t, HW) + pix, dk.to(dsrc_ptr.dtype.element_ty), mask=pmask)
    if SYNTH:
        _store_weights_tile(dsrc_ptr, dw_acc, b, J, HW, pix, pmask, BLOCK_J)


@triton.jit
def _synthesize_fwd_kernel(w_ptr, basis_ptr, psf_ptr, H, W, J,
                           KSIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr,
                           ACC: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)
    w_tile = _load_weights_tile(w_ptr, b, J, HW, pix, pmask, BLOCK_J, ACC)
    for t in range(KK):
        k_t = _tap_weight(w_ptr, basis_ptr, b, t, J, HW, pix, pmask, w_tile, True, KK, BLOCK_J, ACC)
        tl.store(psf_ptr + plane_offsets(b, KK, t, HW) + pix, k_t.to(psf_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def _synthesize_bwd_kernel(dpsf_ptr, w_ptr, basis_ptr, dw_ptr, part_ptr, H, W, J,
                           KSIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr,
                           ACC: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)
    part_row = tl.program_id(0).to(tl.int64) * J * KK  # one partial row per (image, tile)
    w_tile = _load_weights_tile(w_ptr, b, J, HW, pix, pmask, BLOCK_J, ACC)
    dw_acc = tl.zeros((BLOCK_J, BLOCK_P), ACC)
    for t in range(KK):
        dk = tl.load(dpsf_ptr + plane_offsets(b, KK, t, HW) + pix, mask=pmask, other=0.0).to(ACC)
        dw_acc = _basis_grads_step(dk, w_tile, basis_ptr, part_ptr, part_row, t, J, dw_acc, KK, BLOCK_J, ACC)
    _store_weights_tile(dw_ptr, dw_acc, b, J, HW, pix, pmask, BLOCK_J)


# --------------------------------------------------------------------------------------------
# launchers (inputs already validated by psfops; here: contiguity, allocation, grid, blocks)
# --------------------------------------------------------------------------------------------

# GPU launch shapes, read off the sm_90 resource usage (``python -m bench sm90``) under both
# triton 3.6 and 3.9: a program that holds the (BLOCK_J<=64, BLOCK_P) weights tile spills
# registers at 4 warps x 128 pixels and stays in registers at 8 warps x 64 pixels; the
# explicit-psf kernels fit 128 pixels (their tap-gradient kernel at 8 warps).
def _launch(H: int, W: int, synth: bool, tap_grads: bool = False) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of one kernel."""
    if synth:
        return pixel_block(H * W, 64), 8
    return pixel_block(H * W, 128), 8 if tap_grads else 4


def _jblock(J: int) -> int:
    return triton.next_power_of_2(max(J, 1))


def _empty(*ts: torch.Tensor) -> bool:
    return any(t.numel() == 0 for t in ts)


@launcher
def filter_forward(x, src, basis, dilation: int, synth: bool) -> torch.Tensor:
    """y = psf_conv(x, src, basis) if ``synth`` else apply_psf(x, src). (B,C,H,W) out."""
    x, src = x.contiguous(), src.contiguous()
    B, C, H, W = x.shape
    k = basis.shape[-1] if synth else int(round(src.shape[1] ** 0.5))
    basis = basis.contiguous() if synth else src  # unused pointer when not synth
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if _empty(x, src):
        return y.zero_()
    J = src.shape[1] if synth else 1
    BC, (BP, warps) = channel_block(C), _launch(H, W, synth)
    grid = (B * triton.cdiv(H * W, BP), triton.cdiv(C, BC))
    _filter_fwd_kernel[grid](x, src, basis, y, C, H, W, J, dilation, SYNTH=synth, KSIZE=k,
                             BLOCK_C=BC, BLOCK_P=BP, BLOCK_J=_jblock(J), ACC=acc_dtype(x),
                             num_warps=warps)
    return y


@launcher
def filter_backward(dy, x, src, basis, dilation: int, needs):
    """Gradients of :func:`filter_forward` where ``needs`` asks for them (placeholders elsewhere):
    (dx, d(weights), d(basis)) if ``basis`` is given (psf_conv) else (dx, d(psf))."""
    synth = basis is not None
    dy, x, src = dy.contiguous(), x.contiguous(), src.contiguous()
    B, C, H, W = x.shape
    k = basis.shape[-1] if synth else int(round(src.shape[1] ** 0.5))
    basis_arg = basis.contiguous() if synth else src
    J = src.shape[1] if synth else 1
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dsrc = torch.empty_like(src, memory_format=torch.contiguous_format)
    dbasis = torch.zeros_like(basis, memory_format=torch.contiguous_format) if synth else None
    if _empty(x, src):
        dx.zero_(), dsrc.zero_()
        return unneeded_as_placeholders((dx, dsrc, dbasis) if synth else (dx, dsrc), needs)
    BC, BJ, acc = channel_block(C), _jblock(J), acc_dtype(x)
    BP, warps = _launch(H, W, synth)
    _filter_dx_kernel[(B * triton.cdiv(H * W, BP), triton.cdiv(C, BC))](
        dy, src, basis_arg, dx, C, H, W, J, dilation, SYNTH=synth, KSIZE=k,
        BLOCK_C=BC, BLOCK_P=BP, BLOCK_J=BJ, ACC=acc, num_warps=warps)
    BP, warps = _launch(H, W, synth, tap_grads=True)
    n_tiles = triton.cdiv(H * W, BP)
    partials = (torch.empty((B * n_tiles, J, k * k), device=x.device, dtype=torch_acc_dtype(x))
                if synth else dsrc)  # unused pointer when not synth
    _filter_dtap_kernel[(B * n_tiles,)](
        x, dy, src, basis_arg, dsrc, partials, C, H, W, J, dilation, SYNTH=synth, KSIZE=k,
        BLOCK_C=BC, BLOCK_P=BP, BLOCK_J=BJ, ACC=acc, num_warps=warps)
    if not synth:
        return unneeded_as_placeholders((dx, dsrc), needs)
    dbasis.copy_(partials.sum(dim=0).view_as(basis))
    return unneeded_as_placeholders((dx, dsrc, dbasis), needs)


@launcher
def synthesize_forward(weights, basis) -> torch.Tensor:
    """(B,J,H,W), (J,k,k) -> (B,k*k,H,W)."""
    weights, basis = weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    k = basis.shape[-1]
    psf = torch.empty((B, k * k, H, W), device=weights.device, dtype=weights.dtype)
    if _empty(weights):
        return psf.zero_()
    BP = pixel_block(H * W, 128)
    _synthesize_fwd_kernel[(B * triton.cdiv(H * W, BP),)](
        weights, basis, psf, H, W, J, KSIZE=k, BLOCK_P=BP, BLOCK_J=_jblock(J), ACC=acc_dtype(weights))
    return psf


@launcher
def synthesize_backward(dpsf, weights, basis, needs):
    """Gradients of :func:`synthesize_forward`: (d(weights), d(basis)) where ``needs`` asks."""
    dpsf, weights, basis = dpsf.contiguous(), weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    k = basis.shape[-1]
    dw = torch.empty_like(weights, memory_format=torch.contiguous_format)
    dbasis = torch.zeros_like(basis, memory_format=torch.contiguous_format)
    if _empty(weights):
        return unneeded_as_placeholders((dw.zero_(), dbasis), needs)
    BP, warps = _launch(H, W, synth=True)
    n_tiles = triton.cdiv(H * W, BP)
    partials = torch.empty((B * n_tiles, J, k * k), device=weights.device, dtype=torch_acc_dtype(weights))
    _synthesize_bwd_kernel[(B * n_tiles,)](
        dpsf, weights, basis, dw, partials, H, W, J, KSIZE=k, BLOCK_P=BP, BLOCK_J=_jblock(J),
        ACC=acc_dtype(weights), num_warps=warps)
    dbasis.copy_(partials.sum(dim=0).view_as(basis))
    return unneeded_as_placeholders((dw, dbasis), needs)
