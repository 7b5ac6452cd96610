"""Fused kernels for spatially varying PSF filtering: psf_conv, apply_psf, synthesize_psf.

A per-pixel tap weight ``K_t(p)`` (t = u*k + v, shift s_t = ((u - k//2) d, (v - k//2) d)) comes
either from an explicit psf tensor (``apply_psf``, SYNTH=False) or from the kernel dictionary
(``psf_conv``, SYNTH=True): ``K[p, :] = weights[:, p] @ basis``, synthesized per tile as one matrix
product ``(pixels x J) @ (J x k*k)`` (tensor cores) and never written to device memory whole.

    forward    y[c, p]   = sum_t K_t(p) x[c, p + s_t]                            _psf_fwd_kernel
    d(x)       dx[c, q]  = sum_t K_t(q - s_t) dy[c, q - s_t]   (gather form)     _psf_dx_kernel
    d(taps)    dK_t(p)   = sum_c dy[c, p] x[c, p + s_t]                          _psf_dk_kernel
               apply_psf: d(psf) = dK.  psf_conv: d(weights)[:, p] = basis @ dK[p, :] and
               d(basis) = sum_p weights[:, p] (x) dK[p, :], both matrix products per tile.
    synthesize_psf forward / backward: the synthesis and that epilogue alone.

Work layout. Every kernel runs a persistent grid (about one program per SM, a fixed tile order:
program ``pid`` takes tiles pid, pid + programs, ...). A tile is TH x TW pixels of one image (TW
contiguous columns) and all its channels, BLOCK_C at a time; a thread holds one or two pixels and
all BLOCK_C channels of them, so the channel sum of d(taps) stays inside the thread. The taps are
unrolled (``tl.static_range``) row by row: one row pointer per tap row, then constant offsets, so
a tap's load is one instruction. A tile's synthesized taps go to a per-program scratch area (L2
resident; a CTA barrier between write and read), from which the tap loop reads one value per pixel
and tap; the d(x) kernel synthesizes the taps of the tile and its halo (the pixels its outputs
read from), so it needs no taps from other programs. d(taps) is summed over channel blocks in the
scratch area; d(basis) is summed per program, over its tiles in a fixed order, into a
(programs, J, k*k) buffer that a fixed-order ``torch.sum`` reduces: deterministic, no atomics, a
few MB at any image size.

Precision: float32 inputs multiply in float32 (the matrix products as three tf32 tensor-core
passes, ``tf32x3``, accurate to float32 rounding); half inputs run the synthesis on their own
dtype on tensor cores (exact products, float32 accumulation) and the products with float32
accumulated gradients in tf32x3; float64 uses plain multiply-adds. Under the interpreter every
product is an exact float32 (float64) ``tl.dot``. Channel planes are addressed in int64; in-plane
pixel indices in int32, so a plane may hold up to 2**31 - 1 pixels.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from ..env import interpreting
from .._grads import gradient_buffers
from ._common import acc_dtype, launcher, torch_acc_dtype


# --------------------------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _matmul(a, b, DOT: tl.constexpr):
    """(M, K) @ (K, N), accumulated in float32 (float64 for ``"fma"``). DOT: ``"half"`` (a and b
    float16/bfloat16: tensor cores), ``"tf32x3"`` or ``"ieee"`` (operands as float32), ``"fma"``
    (broadcast multiply and sum: float64, where tl.dot is not available everywhere)."""
    if DOT == "fma":
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif DOT == "half":
        return tl.dot(a, b)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=DOT)


@triton.jit
def _everywhere(flag, idx):
    """``flag != 0`` broadcast to the shape of the int tensor ``idx``, as a mask (the interpreter
    cannot combine a scalar bool with a tensor mask)."""
    return (idx * 0 + flag) != 0


@triton.jit
def _tile_origin(tile, tiles_w, tiles_per_img, TH: tl.constexpr, TW: tl.constexpr):
    """Image (int64), first row and first column of persistent-grid tile ``tile``."""
    t_in = tile % tiles_per_img
    return (tile // tiles_per_img).to(tl.int64), (t_in // tiles_w) * TH, (t_in % tiles_w) * TW


@triton.jit
def _tile_pixels(h0, w0, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """The tile's TH*TW pixels, row-major: rows h, columns w, in-image mask, in-plane index."""
    i = tl.arange(0, TH * TW)
    h = h0 + i // TW
    w = w0 + i % TW
    return h, w, (h < H) & (w < W), h * W + w


@triton.jit
def _channel_rows(b, C, c0, HW, BLOCK_C: tl.constexpr):
    """int64 offsets of channel planes c0 .. c0+BLOCK_C-1 of image b, clamped to the last channel
    (so loads need no channel mask), and the mask of the real channels (for stores and sums)."""
    cc = c0 + tl.arange(0, BLOCK_C)
    return (b * C + tl.minimum(cc, C - 1)) * HW, cc < C


@triton.jit
def _basis_block(basis_ptr, jb, J, KK: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr):
    """Rows jb*BLOCK_J .. of the (J, KK) basis as a (BLOCK_J, KK_PAD) tile, zero-padded."""
    jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    tt = tl.arange(0, KK_PAD)
    return tl.load(basis_ptr + jj[:, None] * KK + tt[None, :], mask=(jj < J)[:, None] & (tt < KK)[None, :], other=0.0)


@triton.jit
def _weights_block(w_ptr, jb, b, J, HW, pix, ok, BLOCK_J: tl.constexpr):
    """weights[b, jb*BLOCK_J + j, pix[p]] as a (len(pix), BLOCK_J) tile (zero where not ``ok``)."""
    jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    return tl.load(w_ptr + ((b * J + jj) * HW)[None, :] + pix[:, None], mask=ok[:, None] & (jj < J)[None, :],
                   other=0.0)


@triton.jit
def _mix_basis(w_ptr, basis_ptr, basis0, b, J, HW, pix, ok, KK: tl.constexpr, KK_PAD: tl.constexpr,
               BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, DOT: tl.constexpr):
    """Synthesized taps ``K[p, t] = sum_j weights[b, j, pix[p]] basis[j, t]`` as a (len(pix),
    KK_PAD) tile (zero where ``ok`` is False and for t >= KK). ``basis0`` is the first basis block,
    loaded once per program."""
    k = _matmul(_weights_block(w_ptr, 0, b, J, HW, pix, ok, BLOCK_J), basis0, DOT)
    for jb in tl.static_range(1, NUM_JB):
        k += _matmul(_weights_block(w_ptr, jb, b, J, HW, pix, ok, BLOCK_J),
                     _basis_block(basis_ptr, jb, J, KK, KK_PAD, BLOCK_J), DOT)
    return k


@triton.jit
def _store_taps(ptr, k, idx, STRIDE, valid, KK: tl.constexpr, KK_PAD: tl.constexpr):
    """Tap-major store of a (len(idx), KK_PAD) tap tile: ``ptr[t * STRIDE + idx[p]] = k[p, t]``
    for t < KK where ``valid``."""
    tt = tl.arange(0, KK_PAD)
    tl.store(ptr + tt[None, :].to(tl.int64) * STRIDE + idx[:, None], k.to(ptr.dtype.element_ty),
             mask=valid[:, None] & (tt < KK)[None, :])


@triton.jit
def _load_taps(ptr, idx, STRIDE, valid, KK: tl.constexpr, KK_PAD: tl.constexpr):
    """The (len(idx), KK_PAD) tap tile ``ptr[t * STRIDE + idx[p]]`` (zeros for t >= KK and where
    ``valid`` is False)."""
    tt = tl.arange(0, KK_PAD)
    return tl.load(ptr + tt[None, :].to(tl.int64) * STRIDE + idx[:, None], mask=valid[:, None] & (tt < KK)[None, :],
                   other=0.0)


@triton.jit
def _stage_halo(src_ptr, rows, h0, w0, H, W, stage, RD: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr,
                HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Copy planes ``rows`` around the tile, rows h0-RD .. and columns w0-RD .. (HALO_W wide,
    HALO pixels), into the staging area ``stage[c, idx]`` (row-major halo index), zeros outside
    the image: the taps then read it at constant offsets, with no masks."""
    cl = tl.arange(0, BLOCK_C)
    for chunk in tl.static_range(HALO_PAD // HALO_CHUNK):
        idx = chunk * HALO_CHUNK + tl.arange(0, HALO_CHUNK)
        hh = h0 - RD + idx // HALO_W
        ww = w0 - RD + idx % HALO_W
        ok = (idx < HALO) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        v = tl.load(src_ptr + rows[:, None] + (hh * W + ww)[None, :], mask=ok[None, :], other=0.0)
        tl.store(stage + cl[:, None] * HALO_PAD + idx[None, :], v)


@triton.jit
def _basis_grads(dk, w_ptr, basis_ptr, basis0, dw_ptr, part, b, J, HW, pix, valid, not_first,
                 NEED_DW: tl.constexpr, NEED_DBASIS: tl.constexpr, KK: tl.constexpr, KK_PAD: tl.constexpr,
                 BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, DOT: tl.constexpr):
    """From a tile's tap gradients dk (P, KK_PAD): ``d(weights)[b, :, pix] = basis @ dk^T`` (stored)
    and this program's d(basis) partial ``part[j, t] += sum_p weights[b, j, pix[p]] dk[p, t]``
    (read back unless this is the program's first tile, ``not_first`` 0)."""
    tt = tl.arange(0, KK_PAD)
    for jb in tl.static_range(NUM_JB):
        jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
        jmask = jj < J
        if NEED_DW:
            bs = basis0 if jb == 0 else _basis_block(basis_ptr, jb, J, KK, KK_PAD, BLOCK_J)
            tl.store(dw_ptr + ((b * J + jj) * HW)[None, :] + pix[:, None],
                     _matmul(dk, tl.trans(bs), DOT).to(dw_ptr.dtype.element_ty), mask=valid[:, None] & jmask[None, :])
        if NEED_DBASIS:
            wt = _weights_block(w_ptr, jb, b, J, HW, pix, valid, BLOCK_J)
            offs = jj[:, None] * KK + tt[None, :]
            pmask = jmask[:, None] & (tt < KK)[None, :]
            acc = tl.load(part + offs, mask=pmask & _everywhere(not_first, offs), other=0.0)
            tl.store(part + offs, acc + _matmul(tl.trans(wt), dk, DOT), mask=pmask)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _psf_fwd_kernel(x_ptr, src_ptr, basis_ptr, y_ptr, taps_ptr, stage_ptr, C, H, W, J, n_tiles, tiles_w,
                    tiles_per_img, SYNTH: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr,
                    TW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                    KK_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr):
    """y = apply(x, K): K synthesized per tile into ``taps`` (SYNTH) or read from the psf src; x
    staged per channel block with its halo, zero padded."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    R: tl.constexpr = KSIZE // 2
    RD: tl.constexpr = R * DIL
    HALO_W: tl.constexpr = TW + 2 * RD
    HALO: tl.constexpr = (TH + 2 * RD) * HALO_W
    HALO_PAD: tl.constexpr = (HALO + HALO_CHUNK - 1) // HALO_CHUNK * HALO_CHUNK
    HW = H * W
    pid = tl.program_id(0)
    i = tl.arange(0, P)
    here = (i // TW + RD) * HALO_W + i % TW + RD  # the tile's pixels in halo coordinates
    taps = taps_ptr + pid.to(tl.int64) * (KK * P)
    stage = stage_ptr + pid.to(tl.int64) * (BLOCK_C * HALO_PAD)
    staged = stage + (tl.arange(0, BLOCK_C) * HALO_PAD)[:, None] + here[None, :]
    if SYNTH:
        basis0 = _basis_block(basis_ptr, 0, J, KK, KK_PAD, BLOCK_J)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        if SYNTH:
            _store_taps(taps, _mix_basis(src_ptr, basis_ptr, basis0, b, J, HW, pix, valid, KK, KK_PAD, BLOCK_J,
                                         NUM_JB, DOT), i, P, i < P, KK, KK_PAD)
        for c0 in range(0, C, BLOCK_C):
            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
            _stage_halo(x_ptr, rows, h0, w0, H, W, stage, RD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C)
            tl.debug_barrier()  # the staged block (and this tile's taps) are written
            acc = tl.zeros((BLOCK_C, P), ACC)
            for u in tl.static_range(KSIZE):
                for v in tl.static_range(KSIZE):
                    if SYNTH:
                        kt = tl.load(taps + (u * KSIZE + v) * P + i)
                    else:
                        kt = tl.load(src_ptr + (b * KK + u * KSIZE + v) * HW + pix, mask=valid, other=0.0).to(ACC)
                    acc += kt[None, :] * tl.load(staged + ((u - R) * DIL * HALO_W + (v - R) * DIL)).to(ACC)
            tl.store(y_ptr + rows[:, None] + pix[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=cvalid[:, None] & valid[None, :])
            tl.debug_barrier()  # every read of the staged block (and the taps) is done


@triton.jit
def _psf_dx_kernel(dy_ptr, src_ptr, basis_ptr, dx_ptr, taps_ptr, stage_ptr, C, H, W, J, n_tiles, tiles_w,
                   tiles_per_img, SYNTH: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr,
                   TW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                   KK_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr):
    """dx[c, q] = sum_t K_t(q - s_t) dy[c, q - s_t]: the taps of the tile and its halo are
    synthesized into ``taps`` (SYNTH) or gathered from the psf src; dy is staged with its halo."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    R: tl.constexpr = KSIZE // 2
    RD: tl.constexpr = R * DIL
    HALO_W: tl.constexpr = TW + 2 * RD
    HALO: tl.constexpr = (TH + 2 * RD) * HALO_W
    HALO_PAD: tl.constexpr = (HALO + HALO_CHUNK - 1) // HALO_CHUNK * HALO_CHUNK
    HW = H * W
    pid = tl.program_id(0)
    i = tl.arange(0, P)
    here = (i // TW + RD) * HALO_W + i % TW + RD
    taps = taps_ptr + pid.to(tl.int64) * (KK * HALO_PAD)
    stage = stage_ptr + pid.to(tl.int64) * (BLOCK_C * HALO_PAD)
    staged = stage + (tl.arange(0, BLOCK_C) * HALO_PAD)[:, None] + here[None, :]
    if SYNTH:
        basis0 = _basis_block(basis_ptr, 0, J, KK, KK_PAD, BLOCK_J)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        if SYNTH:
            for chunk in tl.static_range(HALO_PAD // HALO_CHUNK):
                idx = chunk * HALO_CHUNK + tl.arange(0, HALO_CHUNK)
                hh = h0 - RD + idx // HALO_W
                ww = w0 - RD + idx % HALO_W
                ok = (idx < HALO) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                k = _mix_basis(src_ptr, basis_ptr, basis0, b, J, HW, hh * W + ww, ok, KK, KK_PAD, BLOCK_J, NUM_JB,
                               DOT)
                _store_taps(taps, k, idx, HALO_PAD, idx < HALO_PAD, KK, KK_PAD)
        for c0 in range(0, C, BLOCK_C):
            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
            _stage_halo(dy_ptr, rows, h0, w0, H, W, stage, RD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C)
            tl.debug_barrier()
            acc = tl.zeros((BLOCK_C, P), ACC)
            for u in tl.static_range(KSIZE):
                for v in tl.static_range(KSIZE):
                    back = (u - R) * DIL * HALO_W + (v - R) * DIL  # q - s_t in halo coordinates: here - back
                    if SYNTH:
                        kt = tl.load(taps + (u * KSIZE + v) * HALO_PAD + here - back).to(ACC)
                    else:
                        du = (u - R) * DIL
                        dv = (v - R) * DIL
                        ok = (h - du >= 0) & (h - du < H) & (w - dv >= 0) & (w - dv < W)
                        kt = tl.load(src_ptr + (b * KK + u * KSIZE + v) * HW + pix - (du * W + dv), mask=ok,
                                     other=0.0).to(ACC)
                    acc += kt[None, :] * tl.load(staged - back).to(ACC)
            tl.store(dx_ptr + rows[:, None] + pix[None, :], acc.to(dx_ptr.dtype.element_ty),
                     mask=cvalid[:, None] & valid[None, :])
            tl.debug_barrier()


@triton.jit
def _psf_dk_kernel(x_ptr, dy_ptr, w_ptr, basis_ptr, dsrc_ptr, part_ptr, taps_ptr, stage_ptr, C, H, W, J, n_tiles,
                   tiles_w, tiles_per_img, SYNTH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DBASIS: tl.constexpr,
                   KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, KK_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr,
                   DOT: tl.constexpr, ACC: tl.constexpr):
    """dK_t(p) = sum_c dy[c, p] x[c, p + s_t], summed over channel blocks in ``taps``; then d(psf)
    = dK (apply_psf) or d(weights) and this program's d(basis) partial (psf_conv)."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    R: tl.constexpr = KSIZE // 2
    RD: tl.constexpr = R * DIL
    HALO_W: tl.constexpr = TW + 2 * RD
    HALO: tl.constexpr = (TH + 2 * RD) * HALO_W
    HALO_PAD: tl.constexpr = (HALO + HALO_CHUNK - 1) // HALO_CHUNK * HALO_CHUNK
    HW = H * W
    pid = tl.program_id(0)
    i = tl.arange(0, P)
    here = (i // TW + RD) * HALO_W + i % TW + RD
    taps = taps_ptr + pid.to(tl.int64) * (KK * P)
    stage = stage_ptr + pid.to(tl.int64) * (BLOCK_C * HALO_PAD)
    staged = stage + (tl.arange(0, BLOCK_C) * HALO_PAD)[:, None] + here[None, :]
    part = part_ptr + pid.to(tl.int64) * J * KK
    if SYNTH:
        basis0 = _basis_block(basis_ptr, 0, J, KK, KK_PAD, BLOCK_J)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        for c0 in range(0, C, BLOCK_C):
            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
            _stage_halo(x_ptr, rows, h0, w0, H, W, stage, RD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C)
            dyt = tl.load(dy_ptr + rows[:, None] + pix[None, :], mask=cvalid[:, None] & valid[None, :],
                          other=0.0).to(ACC)
            tl.debug_barrier()
            for u in tl.static_range(KSIZE):
                for v in tl.static_range(KSIZE):
                    dk = tl.sum(dyt * tl.load(staged + ((u - R) * DIL * HALO_W + (v - R) * DIL)).to(ACC), axis=0)
                    at = taps + (u * KSIZE + v) * P + i
                    tl.store(at, dk + tl.load(at, mask=_everywhere(c0, i), other=0.0))
            tl.debug_barrier()
        dk = _load_taps(taps, i, P, i < P, KK, KK_PAD)
        if SYNTH:
            _basis_grads(dk, w_ptr, basis_ptr, basis0, dsrc_ptr, part, b, J, HW, pix, valid, tile - pid,
                         NEED_DW, NEED_DBASIS, KK, KK_PAD, BLOCK_J, NUM_JB, DOT)
        else:
            _store_taps(dsrc_ptr + b * KK * HW, dk, pix, HW, valid, KK, KK_PAD)
        tl.debug_barrier()


@triton.jit
def _synthesize_fwd_kernel(w_ptr, basis_ptr, psf_ptr, H, W, J, n_tiles, tiles_w, tiles_per_img,
                           KSIZE: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BLOCK_J: tl.constexpr,
                           NUM_JB: tl.constexpr, KK_PAD: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    basis0 = _basis_block(basis_ptr, 0, J, KK, KK_PAD, BLOCK_J)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        k = _mix_basis(w_ptr, basis_ptr, basis0, b, J, HW, pix, valid, KK, KK_PAD, BLOCK_J, NUM_JB, DOT)
        _store_taps(psf_ptr + b * KK * HW, k, pix, HW, valid, KK, KK_PAD)


@triton.jit
def _synthesize_bwd_kernel(dpsf_ptr, w_ptr, basis_ptr, dw_ptr, part_ptr, H, W, J, n_tiles, tiles_w, tiles_per_img,
                           NEED_DW: tl.constexpr, NEED_DBASIS: tl.constexpr, KSIZE: tl.constexpr, TH: tl.constexpr,
                           TW: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, KK_PAD: tl.constexpr,
                           DOT: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    pid = tl.program_id(0)
    part = part_ptr + pid.to(tl.int64) * J * KK
    basis0 = _basis_block(basis_ptr, 0, J, KK, KK_PAD, BLOCK_J)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        dk = _load_taps(dpsf_ptr + b * KK * HW, pix, HW, valid, KK, KK_PAD)
        _basis_grads(dk, w_ptr, basis_ptr, basis0, dw_ptr, part, b, J, HW, pix, valid, tile - pid,
                     NEED_DW, NEED_DBASIS, KK, KK_PAD, BLOCK_J, NUM_JB, DOT)


# --------------------------------------------------------------------------------------------
# launch plans and launchers (inputs already checked by psfops; here: layout, allocation, grid)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Launch shape of one psf kernel: TH x TW pixel tiles, channels per block, basis kernels per
    block (and blocks), halo pixels per staging or synthesis step, warps per program, programs."""
    TH: int
    TW: int
    BLOCK_C: int
    BLOCK_J: int
    NUM_JB: int
    HALO_CHUNK: int
    num_warps: int
    programs: int

    def launch_args(self) -> dict:
        return dict(TH=self.TH, TW=self.TW, BLOCK_J=self.BLOCK_J, NUM_JB=self.NUM_JB, num_warps=self.num_warps,
                    num_stages=1)


# GPU tile shapes per kernel, (TH, TW, BLOCK_C, num_warps): read off the sm_90 SASS (``python -m
# bench sass``): one pixel per thread, each tap a load at a constant offset and a multiply-add, no
# register spills.
GPU_SHAPES = {"fwd": (4, 32, 32, 4), "dx": (4, 32, 32, 4), "dk": (4, 32, 32, 4), "synth": (4, 32, 1, 4)}
GPU_HALO_CHUNK = 128


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(kind: str, B: int, C: int, H: int, W: int, J: int, device: torch.device,
         interpret: bool | None = None) -> Plan:
    """The launch plan of kernel ``kind`` ("fwd", "dx", "dk", "synth"). On the GPU: the tile shapes
    of :data:`GPU_SHAPES` and one program per SM (fewer if there are fewer tiles). In the
    interpreter (``interpret``, default: whether it is on), which runs programs one after the other
    in Python: tiles as large as the image (up to 16 x 32 pixels, so fewer, larger programs) and
    at most 3 programs, so the persistent loop always runs."""
    interpret = interpreting() if interpret is None else interpret
    block_j = max(16, min(64, triton.next_power_of_2(max(J, 1))))
    if interpret:
        tw = max(16, min(32, triton.next_power_of_2(max(W, 1))))
        th = min(16, triton.next_power_of_2(max(H, 1)))
        bc, warps, max_programs, chunk = min(16, triton.next_power_of_2(max(C, 1))), 4, 3, 256
    else:
        th, tw, bc, warps = GPU_SHAPES[kind]
        max_programs, chunk = _sm_count(device), GPU_HALO_CHUNK
    n_tiles = B * triton.cdiv(H, th) * triton.cdiv(W, tw)
    return Plan(th, tw, bc, block_j, triton.cdiv(J, block_j), chunk, warps, max(1, min(n_tiles, max_programs)))


def _kk_pad(k: int) -> int:
    return max(16, triton.next_power_of_2(k * k))


def _dot_modes(dtype: torch.dtype) -> tuple[str, str]:
    """(products of inputs, products with a float32 accumulated operand): see the module docstring."""
    if dtype == torch.float64:
        return "fma", "fma"
    if interpreting():
        return "ieee", "ieee"
    return ("tf32x3" if dtype == torch.float32 else "half"), "tf32x3"


def _grid_args(p: Plan, B: int, H: int, W: int) -> tuple[int, int, int]:
    """(n_tiles, tiles_w, tiles_per_img) of the persistent grid."""
    tiles_w = triton.cdiv(W, p.TW)
    tiles_per_img = triton.cdiv(H, p.TH) * tiles_w
    return B * tiles_per_img, tiles_w, tiles_per_img


def _halo_pad(p: Plan, k: int, dilation: int) -> int:
    """Pixels of a tile's halo (the pixels its taps read), rounded up to whole chunks."""
    rd = (k // 2) * dilation
    return triton.cdiv((p.TH + 2 * rd) * (p.TW + 2 * rd), p.HALO_CHUNK) * p.HALO_CHUNK


def _scratch(p: Plan, per_program: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Per-program work area (taps or a staged halo block), read back by the same program."""
    return torch.empty((p.programs, per_program), device=device, dtype=dtype)


def _check_plane(H: int, W: int) -> None:
    if H * W >= 2 ** 31:
        raise ValueError(f"the psf kernels index a plane with int32: H*W must be < 2**31, got {H}x{W}")


@launcher
def filter_forward(x, src, basis, dilation: int) -> torch.Tensor:
    """y = psf_conv(x, src, basis) if ``basis`` is given, else apply_psf(x, src). (B,C,H,W) out."""
    synth = basis is not None
    x, src = x.contiguous(), src.contiguous()
    B, C, H, W = x.shape
    _check_plane(H, W)
    k = basis.shape[-1] if synth else int(round(src.shape[1] ** 0.5))
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0 or src.numel() == 0:
        return y.zero_()
    J = src.shape[1] if synth else 1
    p = plan("fwd", B, C, H, W, J, x.device)
    taps = _scratch(p, k * k * p.TH * p.TW if synth else 1, torch_acc_dtype(x), x.device)
    stage = _scratch(p, p.BLOCK_C * _halo_pad(p, k, dilation), x.dtype, x.device)
    _psf_fwd_kernel[(p.programs,)](
        x, src, basis.contiguous() if synth else src, y, taps, stage, C, H, W, J, *_grid_args(p, B, H, W),
        SYNTH=synth, KSIZE=k, DIL=dilation, BLOCK_C=p.BLOCK_C, KK_PAD=_kk_pad(k), HALO_CHUNK=p.HALO_CHUNK,
        DOT=_dot_modes(x.dtype)[0], ACC=acc_dtype(x), **p.launch_args())
    return y


@launcher
def filter_backward(dy, x, src, basis, dilation: int, needs):
    """Gradients of :func:`filter_forward` where ``needs`` asks for them (placeholders elsewhere):
    (dx, d(weights), d(basis)) if ``basis`` is given (psf_conv) else (dx, d(psf))."""
    synth = basis is not None
    dy, x, src = dy.contiguous(), x.contiguous(), src.contiguous()
    basis = basis.contiguous() if synth else src  # (unused pointer for apply_psf)
    B, C, H, W = x.shape
    _check_plane(H, W)
    k = basis.shape[-1] if synth else int(round(src.shape[1] ** 0.5))
    J = src.shape[1] if synth else 1
    acc = torch_acc_dtype(x)
    grads = gradient_buffers(needs, x, src, basis) if synth else gradient_buffers(needs, x, src)
    dx, dsrc, dbasis = grads if synth else (*grads, None)
    if x.numel() == 0 or src.numel() == 0:
        return tuple(g.zero_() for g in grads)
    dot_in, dot_acc = _dot_modes(x.dtype)
    if needs[0]:
        p = plan("dx", B, C, H, W, J, x.device)
        halo = _halo_pad(p, k, dilation)
        taps = _scratch(p, k * k * halo if synth else 1, acc, x.device)
        _psf_dx_kernel[(p.programs,)](
            dy, src, basis, dx, taps, _scratch(p, p.BLOCK_C * halo, x.dtype, x.device), C, H, W, J,
            *_grid_args(p, B, H, W), SYNTH=synth, KSIZE=k, DIL=dilation, BLOCK_C=p.BLOCK_C, KK_PAD=_kk_pad(k),
            HALO_CHUNK=p.HALO_CHUNK, DOT=dot_in, ACC=acc_dtype(x), **p.launch_args())
    need_dw, need_dbasis = needs[1], synth and needs[2]
    if need_dw or need_dbasis:
        p = plan("dk", B, C, H, W, J, x.device)
        partials = torch.empty((p.programs, J, k * k) if need_dbasis else (1,), device=x.device, dtype=acc)
        _psf_dk_kernel[(p.programs,)](
            x, dy, src, basis, dsrc, partials, _scratch(p, k * k * p.TH * p.TW, acc, x.device),
            _scratch(p, p.BLOCK_C * _halo_pad(p, k, dilation), x.dtype, x.device), C, H, W, J,
            *_grid_args(p, B, H, W), SYNTH=synth, NEED_DW=need_dw, NEED_DBASIS=need_dbasis, KSIZE=k, DIL=dilation,
            BLOCK_C=p.BLOCK_C, KK_PAD=_kk_pad(k), HALO_CHUNK=p.HALO_CHUNK, DOT=dot_acc, ACC=acc_dtype(x),
            **p.launch_args())
        if need_dbasis:
            dbasis.copy_(partials.sum(dim=0).view_as(basis))  # fixed-order reduction: deterministic
    return grads


@launcher
def synthesize_forward(weights, basis) -> torch.Tensor:
    """(B,J,H,W), (J,k,k) -> (B,k*k,H,W)."""
    weights, basis = weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    _check_plane(H, W)
    k = basis.shape[-1]
    psf = torch.empty((B, k * k, H, W), device=weights.device, dtype=weights.dtype)
    if weights.numel() == 0:
        return psf.zero_()
    p = plan("synth", B, 1, H, W, J, weights.device)
    _synthesize_fwd_kernel[(p.programs,)](
        weights, basis, psf, H, W, J, *_grid_args(p, B, H, W), KSIZE=k, KK_PAD=_kk_pad(k),
        DOT=_dot_modes(weights.dtype)[0], **p.launch_args())
    return psf


@launcher
def synthesize_backward(dpsf, weights, basis, needs):
    """Gradients of :func:`synthesize_forward`: (d(weights), d(basis)) where ``needs`` asks."""
    dpsf, weights, basis = dpsf.contiguous(), weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    _check_plane(H, W)
    k = basis.shape[-1]
    dw, dbasis = gradient_buffers(needs, weights, basis)
    if weights.numel() == 0 or not any(needs):
        return dw.zero_(), dbasis.zero_()
    p = plan("synth", B, 1, H, W, J, weights.device)
    partials = torch.empty((p.programs, J, k * k) if needs[1] else (1,), device=weights.device,
                           dtype=torch_acc_dtype(weights))
    _synthesize_bwd_kernel[(p.programs,)](
        dpsf, weights, basis, dw, partials, H, W, J, *_grid_args(p, B, H, W), NEED_DW=needs[0],
        NEED_DBASIS=needs[1], KSIZE=k, KK_PAD=_kk_pad(k), DOT=_dot_modes(weights.dtype)[0], **p.launch_args())
    if needs[1]:
        dbasis.copy_(partials.sum(dim=0).view_as(basis))
    return dw, dbasis
