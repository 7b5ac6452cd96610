"""Gating kernels: ``gated_blend`` and the fused ``gated_fusion`` (1x1 conv gate + sigmoid + blend).

With s = sigmoid(g), d = cur - prev:  y = s*cur + (1-s)*prev,
    dcur = s*dy,  dprev = (1-s)*dy,  dg = dy * d * s * (1-s).

gated_blend: a program owns BLOCK_P pixels of one image and loops over the channels in blocks of
BLOCK_C. A broadcast gate (B,1,H,W) is loaded once per tile; its gradient is summed over the
channels inside the program, in a fixed order (deterministic, no atomics).

gated_fusion: weight W = [Wc | Wp] (C, 2C) acts on [cur; prev] without a concat:
    g = Wc @ cur + Wp @ prev + bias          (per pixel; tl.dot over channel tiles)
Forward (one kernel): a program owns BLOCK_P pixels and BLOCK_C output channels, accumulates g
over input-channel tiles, then applies the sigmoid and the blend; the gate is never written.
Backward, three kernels:
    A (pixels x output channels): recompute g, write s and dg (float32/float64 buffers);
    B (pixels x input channels): dcur = s*dy + Wc^T @ dg, dprev = (1-s)*dy + Wp^T @ dg;
    C (pixel chunks x weight tiles): each of a fixed number of programs along the pixels sums
      dW[:, :C] = dg @ cur^T, dW[:, C:] = dg @ prev^T and dbias = sum_p dg over its chunk of
      (image, tile) items into its row of a (chunks, C, 2C + 1) buffer, which torch reduces in a
      fixed order afterwards (deterministic; no atomics).
tl.dot runs in IEEE float32 (no TF32) on operands cast to float32, so it matches the float32
reference to ~1e-6; float64 inputs use a multiply-and-sum path instead (``USE_DOT=False``).
Channel tiles are padded to >= 16 (tl.dot's minimum) and masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..env import interpreting
from ._common import (acc_dtype, launcher, matmul_tile, pixel_block, pixel_tile, plane_and_tile,
                      plane_offsets, torch_acc_dtype, unneeded_as_placeholders)


# --------------------------------------------------------------------------------------------
# gated_blend
# --------------------------------------------------------------------------------------------

@triton.jit
def _blend_fwd_kernel(cur_ptr, prev_ptr, gate_ptr, y_ptr, C, HW, GATE_C,
                      BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """GATE_C is C (per-channel gate) or 1 (broadcast gate)."""
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)  # grid: (images x pixel tiles,)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        mask = (cc < C)[:, None] & pmask[None, :]
        offs = plane_offsets(b, C, cc, HW)[:, None] + pix[None, :]
        goffs = plane_offsets(b, GATE_C, cc % GATE_C, HW)[:, None] + pix[None, :]
        cur = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(ACC)
        prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(ACC)
        s = tl.sigmoid(tl.load(gate_ptr + goffs, mask=mask, other=0.0).to(ACC))
        tl.store(y_ptr + offs, (s * cur + (1.0 - s) * prev).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _blend_bwd_kernel(dy_ptr, cur_ptr, prev_ptr, gate_ptr, dcur_ptr, dprev_ptr, dgate_ptr,
                      C, HW, BROADCAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                      ACC: tl.constexpr):
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)  # grid: (images x pixel tiles,)
    dgate_sum = tl.zeros((BLOCK_P,), ACC)  # broadcast gate: sum over channels
    if BROADCAST:
        s_b = tl.sigmoid(tl.load(gate_ptr + b * HW + pix, mask=pmask, other=0.0).to(ACC))
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        mask = (cc < C)[:, None] & pmask[None, :]
        offs = plane_offsets(b, C, cc, HW)[:, None] + pix[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
        cur = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(ACC)
        prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(ACC)
        if BROADCAST:
            s = tl.broadcast_to(s_b[None, :], (BLOCK_C, BLOCK_P))
        else:
            s = tl.sigmoid(tl.load(gate_ptr + offs, mask=mask, other=0.0).to(ACC))
        tl.store(dcur_ptr + offs, (s * dy).to(dcur_ptr.dtype.element_ty), mask=mask)
        tl.store(dprev_ptr + offs, ((1.0 - s) * dy).to(dprev_ptr.dtype.element_ty), mask=mask)
        dg = dy * (cur - prev) * s * (1.0 - s)
        if BROADCAST:
            dgate_sum += tl.sum(tl.where(mask, dg, 0.0), axis=0)
        else:
            tl.store(dgate_ptr + offs, dg.to(dgate_ptr.dtype.element_ty), mask=mask)
    if BROADCAST:
        tl.store(dgate_ptr + b * HW + pix, dgate_sum.to(dgate_ptr.dtype.element_ty), mask=pmask)


def _blend_blocks(C: int, HW: int):
    BC = max(2, min(triton.next_power_of_2(max(C, 1)), 16))
    return BC, pixel_block(HW, gpu_block=128)  # 256 spills the backward on sm_90


@launcher
def blend_forward(cur, prev, gate) -> torch.Tensor:
    """(B,C,H,W) x2, gate (B,C,H,W) or (B,1,H,W) -> (B,C,H,W)."""
    cur, prev, gate = cur.contiguous(), prev.contiguous(), gate.contiguous()
    y = torch.empty_like(cur)
    if y.numel() == 0:
        return y
    B, C, H, W = cur.shape
    BC, BP = _blend_blocks(C, H * W)
    _blend_fwd_kernel[(B * triton.cdiv(H * W, BP),)](
        cur, prev, gate, y, C, H * W, gate.shape[1], BLOCK_C=BC, BLOCK_P=BP, ACC=acc_dtype(cur))
    return y


@launcher
def blend_backward(dy, cur, prev, gate, needs):
    """(dcur, dprev, dgate) where ``needs`` asks for them (placeholders elsewhere); dgate has
    gate's shape (summed over C for a broadcast gate)."""
    dy, cur, prev, gate = dy.contiguous(), cur.contiguous(), prev.contiguous(), gate.contiguous()
    dcur, dprev, dgate = torch.empty_like(cur), torch.empty_like(prev), torch.empty_like(gate)
    B, C, H, W = cur.shape
    if cur.numel() == 0:
        return unneeded_as_placeholders((dcur, dprev, dgate.zero_()), needs)  # C = 0, gate (B,1,H,W): 0
    BC, BP = _blend_blocks(C, H * W)
    _blend_bwd_kernel[(B * triton.cdiv(H * W, BP),)](
        dy, cur, prev, gate, dcur, dprev, dgate, C, H * W, BROADCAST=gate.shape[1] != C or C == 1,
        BLOCK_C=BC, BLOCK_P=BP, ACC=acc_dtype(cur))
    return unneeded_as_placeholders((dcur, dprev, dgate), needs)


# --------------------------------------------------------------------------------------------
# gated_fusion
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_tile(ptr, b, C, cc, HW, pix, pmask, ACC: tl.constexpr):
    """(BLOCK_C, BLOCK_P) tile of planes cc of image b at pixels pix (zeros outside)."""
    offs = plane_offsets(b, C, cc, HW)[:, None] + pix[None, :]
    return tl.load(ptr + offs, mask=(cc < C)[:, None] & pmask[None, :], other=0.0).to(ACC)


@triton.jit
def _load_weight(w_ptr, rows, cols, C, TRANSPOSE: tl.constexpr, ACC: tl.constexpr):
    """W[rows, cols] of the (C, 2C) weight as a (len(rows), len(cols)) tile, or its transpose
    W[rows, cols]^T laid out (len(cols), len(rows)) if TRANSPOSE. Zeros outside."""
    if TRANSPOSE:
        offs = rows[None, :] * (2 * C) + cols[:, None]
        mask = (rows < C)[None, :] & (cols < 2 * C)[:, None]
    else:
        offs = rows[:, None] * (2 * C) + cols[None, :]
        mask = (rows < C)[:, None] & (cols < 2 * C)[None, :]
    return tl.load(w_ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def _gate_tile(cur_ptr, prev_ptr, w_ptr, bias_ptr, b, co, C, HW, pix, pmask, HAS_BIAS: tl.constexpr,
               USE_DOT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """g[co, pix] = Wc[co] @ cur[:, pix] + Wp[co] @ prev[:, pix] + bias[co]: (BLOCK_C, BLOCK_P)."""
    g = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for c0 in range(0, C, BLOCK_C):
        ci = c0 + tl.arange(0, BLOCK_C)
        ci_valid = tl.where(ci < C, ci, 2 * C)  # padded input channels: masked weight columns
        wc = _load_weight(w_ptr, co, ci_valid, C, False, ACC)
        wp = _load_weight(w_ptr, co, ci_valid + C, C, False, ACC)
        g += matmul_tile(wc, _load_tile(cur_ptr, b, C, ci, HW, pix, pmask, ACC), USE_DOT)
        g += matmul_tile(wp, _load_tile(prev_ptr, b, C, ci, HW, pix, pmask, ACC), USE_DOT)
    if HAS_BIAS:
        g += tl.load(bias_ptr + co, mask=co < C, other=0.0).to(ACC)[:, None]
    return g


@triton.jit
def _gate_of_tile(cur_ptr, prev_ptr, w_ptr, bias_ptr, C, HW, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """A program of the (pixel tiles, channel blocks, B) grid: its image b, output channels co,
    pixels (pix, pmask) and the gate s = sigmoid(g) there, (BLOCK_C, BLOCK_P)."""
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)  # grid: (images x pixel tiles, channel blocks)
    co = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.sigmoid(_gate_tile(cur_ptr, prev_ptr, w_ptr, bias_ptr, b, co, C, HW, pix, pmask,
                              HAS_BIAS, USE_DOT, BLOCK_C, BLOCK_P, ACC))
    return b, co, pix, pmask, s


@triton.jit
def _fusion_fwd_kernel(cur_ptr, prev_ptr, w_ptr, bias_ptr, y_ptr, C, HW, HAS_BIAS: tl.constexpr,
                       USE_DOT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                       ACC: tl.constexpr):
    b, co, pix, pmask, s = _gate_of_tile(cur_ptr, prev_ptr, w_ptr, bias_ptr, C, HW, HAS_BIAS, USE_DOT,
                                         BLOCK_C, BLOCK_P, ACC)
    cur = _load_tile(cur_ptr, b, C, co, HW, pix, pmask, ACC)
    prev = _load_tile(prev_ptr, b, C, co, HW, pix, pmask, ACC)
    offs = plane_offsets(b, C, co, HW)[:, None] + pix[None, :]
    tl.store(y_ptr + offs, (s * cur + (1.0 - s) * prev).to(y_ptr.dtype.element_ty),
             mask=(co < C)[:, None] & pmask[None, :])


@triton.jit
def _fusion_bwd_gate_kernel(dy_ptr, cur_ptr, prev_ptr, w_ptr, bias_ptr, s_ptr, dg_ptr, C, HW,
                            HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Kernel A: s = sigmoid(g) and dg = dy*(cur-prev)*s*(1-s) for output channels co at a tile."""
    b, co, pix, pmask, s = _gate_of_tile(cur_ptr, prev_ptr, w_ptr, bias_ptr, C, HW, HAS_BIAS, USE_DOT,
                                         BLOCK_C, BLOCK_P, ACC)
    dy = _load_tile(dy_ptr, b, C, co, HW, pix, pmask, ACC)
    d = _load_tile(cur_ptr, b, C, co, HW, pix, pmask, ACC) - _load_tile(prev_ptr, b, C, co, HW, pix, pmask, ACC)
    mask = (co < C)[:, None] & pmask[None, :]
    offs = plane_offsets(b, C, co, HW)[:, None] + pix[None, :]
    tl.store(s_ptr + offs, s, mask=mask)
    tl.store(dg_ptr + offs, dy * d * s * (1.0 - s), mask=mask)


@triton.jit
def _fusion_dweight_kernel(dg_ptr, cur_ptr, prev_ptr, part_ptr, C, HW, n_tiles, n_items,
                           items_per_prog, USE_DOT: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Kernel C: partial dW[co, ci] and dW[co, C + ci] (and dbias) over a fixed chunk of
    (image, pixel tile) items: acc_c = dg @ cur^T, acc_p = dg @ prev^T; the first ci block also
    sums dg into dbias. Each chunk writes its own row of the (chunks, C, 2C + 1) buffer; torch
    sums the rows afterwards."""
    chunk = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ci = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc_c = tl.zeros((BLOCK_C, BLOCK_C), ACC)
    acc_p = tl.zeros((BLOCK_C, BLOCK_C), ACC)
    dbias = tl.zeros((BLOCK_C,), ACC)
    start = chunk * items_per_prog
    for item in range(start, tl.minimum(start + items_per_prog, n_items)):
        b = (item // n_tiles).to(tl.int64)
        pix, pmask = pixel_tile(item % n_tiles, HW, BLOCK_P)
        dg = _load_tile(dg_ptr, b, C, co, HW, pix, pmask, ACC)
        acc_c += matmul_tile(dg, tl.trans(_load_tile(cur_ptr, b, C, ci, HW, pix, pmask, ACC)), USE_DOT)
        acc_p += matmul_tile(dg, tl.trans(_load_tile(prev_ptr, b, C, ci, HW, pix, pmask, ACC)), USE_DOT)
        dbias += tl.sum(dg, axis=1)
    prow = (chunk.to(tl.int64) * C + co) * (2 * C + 1)
    wmask = (co < C)[:, None] & (ci < C)[None, :]
    tl.store(part_ptr + prow[:, None] + ci[None, :], acc_c, mask=wmask)
    tl.store(part_ptr + prow[:, None] + C + ci[None, :], acc_p, mask=wmask)
    if tl.program_id(2) == 0:
        tl.store(part_ptr + prow + 2 * C, dbias, mask=co < C)


@triton.jit
def _fusion_bwd_input_kernel(dy_ptr, w_ptr, s_ptr, dg_ptr, dcur_ptr, dprev_ptr, C, HW,
                             USE_DOT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                             ACC: tl.constexpr):
    """Kernel B: dcur = s*dy + Wc^T dg, dprev = (1-s)*dy + Wp^T dg for input channels ci."""
    b, pix, pmask = plane_and_tile(HW, BLOCK_P)  # grid: (images x pixel tiles, channel blocks)
    ci = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ci_valid = tl.where(ci < C, ci, 2 * C)
    acc_c = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    acc_p = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for c0 in range(0, C, BLOCK_C):
        co = c0 + tl.arange(0, BLOCK_C)
        dg = _load_tile(dg_ptr, b, C, co, HW, pix, pmask, ACC)
        acc_c += matmul_tile(_load_weight(w_ptr, co, ci_valid, C, True, ACC), dg, USE_DOT)
        acc_p += matmul_tile(_load_weight(w_ptr, co, ci_valid + C, C, True, ACC), dg, USE_DOT)
    s = _load_tile(s_ptr, b, C, ci, HW, pix, pmask, ACC)
    dy = _load_tile(dy_ptr, b, C, ci, HW, pix, pmask, ACC)
    mask = (ci < C)[:, None] & pmask[None, :]
    offs = plane_offsets(b, C, ci, HW)[:, None] + pix[None, :]
    tl.store(dcur_ptr + offs, (s * dy + acc_c).to(dcur_ptr.dtype.element_ty), mask=mask)
    tl.store(dprev_ptr + offs, ((1.0 - s) * dy + acc_p).to(dprev_ptr.dtype.element_ty), mask=mask)


def dweight_chunks() -> int:
    """Programs along the pixels for dW: a fixed count (for a given shape), so the partial-sum
    buffer is (chunks, C, 2C+1) whatever the image size. Under the interpreter 2, so the tests
    run both the per-program loop and the cross-program reduction."""
    return 2 if interpreting() else 256


def _fusion_blocks(C: int, HW: int):
    """Channel tile (>= 16 for tl.dot, <= 32) and pixel tile."""
    return max(16, min(triton.next_power_of_2(max(C, 1)), 32)), pixel_block(HW, gpu_block=64)


@launcher
def fusion_forward(cur, prev, weight, bias) -> torch.Tensor:
    """cur, prev (B,C,H,W), weight (C,2C[,1,1]), bias (C,) or None -> (B,C,H,W)."""
    cur, prev = cur.contiguous(), prev.contiguous()
    y = torch.empty_like(cur)
    if y.numel() == 0:
        return y
    B, C, H, W = cur.shape
    w = weight.reshape(C, 2 * C).contiguous()
    BC, BP = _fusion_blocks(C, H * W)
    _fusion_fwd_kernel[(B * triton.cdiv(H * W, BP), triton.cdiv(C, BC))](
        cur, prev, w, w if bias is None else bias.contiguous(), y, C, H * W,
        HAS_BIAS=bias is not None, USE_DOT=cur.dtype != torch.float64, BLOCK_C=BC, BLOCK_P=BP,
        ACC=acc_dtype(cur))
    return y


@launcher
def fusion_backward(dy, cur, prev, weight, bias, needs):
    """(dcur, dprev, dweight, dbias) where ``needs`` asks for them (placeholders elsewhere);
    dweight has weight's shape, dbias (C,)."""
    dy, cur, prev = dy.contiguous(), cur.contiguous(), prev.contiguous()
    B, C, H, W = cur.shape
    dcur, dprev = torch.empty_like(cur), torch.empty_like(prev)
    dweight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    dbias = torch.zeros((C,), device=cur.device, dtype=cur.dtype)
    if cur.numel() == 0:
        return unneeded_as_placeholders((dcur, dprev, dweight, dbias), needs)
    w = weight.reshape(C, 2 * C).contiguous()
    HW = H * W
    BC, BP = _fusion_blocks(C, HW)
    n_tiles, n_cb = triton.cdiv(HW, BP), triton.cdiv(C, BC)
    acc, use_dot = acc_dtype(cur), cur.dtype != torch.float64
    s = torch.empty(cur.shape, device=cur.device, dtype=torch_acc_dtype(cur))
    dg = torch.empty_like(s)
    _fusion_bwd_gate_kernel[(B * n_tiles, n_cb)](
        dy, cur, prev, w, w if bias is None else bias.contiguous(), s, dg, C, HW,
        HAS_BIAS=bias is not None, USE_DOT=use_dot, BLOCK_C=BC, BLOCK_P=BP, ACC=acc, num_warps=8)
    # 8 warps, no software pipelining: the two accumulator tiles of the kernels below spill
    # registers on sm_90 otherwise (bf16 d(weight): 3 KB of stack; the gate kernel above spills
    # under triton 3.6 at 4 warps), see `python -m bench sm90`.
    _fusion_bwd_input_kernel[(B * n_tiles, n_cb)](
        dy, w, s, dg, dcur, dprev, C, HW, USE_DOT=use_dot, BLOCK_C=BC, BLOCK_P=BP, ACC=acc,
        num_warps=8, num_stages=1)
    n_items = B * n_tiles
    n_chunks = min(n_items, dweight_chunks())
    per_chunk = triton.cdiv(n_items, n_chunks)
    n_chunks = triton.cdiv(n_items, per_chunk)
    partials = torch.empty((n_chunks, C, 2 * C + 1), device=cur.device, dtype=s.dtype)
    _fusion_dweight_kernel[(n_chunks, n_cb, n_cb)](
        dg, cur, prev, partials, C, HW, n_tiles, n_items, per_chunk, USE_DOT=use_dot,
        BLOCK_C=BC, BLOCK_P=BP, ACC=acc, num_warps=8, num_stages=1)
    total = partials.sum(dim=0)  # fixed-order reduction: deterministic
    dweight.copy_(total[:, : 2 * C].reshape(weight.shape))
    dbias.copy_(total[:, 2 * C])
    return unneeded_as_placeholders((dcur, dprev, dweight, dbias), needs)
