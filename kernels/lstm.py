"""Fused ConvLSTM pointwise update: ``lstm_cell`` forward and backward.

gates (B, 4C, H, W) hold the pre-activations i, f, g, o as channel blocks [0:C], [C:2C], [2C:3C],
[3C:4C]. With si, sf, so = sigmoid(i, f, o), tg = tanh(g):
    c = sf*c_prev + si*tg,      h = so*tanh(c)
Backward (recomputes the activations from gates and c_prev; nothing else is saved):
    tc = tanh(c),  dc_tot = dc + dh*so*(1 - tc^2)
    di = dc_tot*tg*si*(1-si),  df = dc_tot*c_prev*sf*(1-sf),  dg = dc_tot*si*(1 - tg^2),
    do = dh*tc*so*(1-so),      dc_prev = dc_tot*sf
A program owns BLOCK_P pixels of one (b, c) plane; plane offsets are int64; accumulation is
float32 (float64 for float64 inputs). h uses c before it is rounded to the output dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, gradient_buffers, pixel_block, plane_and_tile, tanh, vector_block
from .launch import launcher


@triton.jit
def _cell(gates_ptr, c_prev_ptr, b, c, C, HW, pix, pmask, ACC: tl.constexpr):
    """Offsets of gate i and of the (b, c) state plane, and si, sf, so, tg, c_prev, c."""
    g_base = (b * 4 * C + c).to(tl.int64) * HW  # gate i of channel c; f, g, o follow by C*HW
    s_base = (b * C + c).to(tl.int64) * HW
    step = tl.cast(C, tl.int64) * HW
    si = tl.sigmoid(tl.load(gates_ptr + g_base + pix, mask=pmask, other=0.0).to(ACC))
    sf = tl.sigmoid(tl.load(gates_ptr + g_base + step + pix, mask=pmask, other=0.0).to(ACC))
    tg = tanh(tl.load(gates_ptr + g_base + 2 * step + pix, mask=pmask, other=0.0).to(ACC))
    so = tl.sigmoid(tl.load(gates_ptr + g_base + 3 * step + pix, mask=pmask, other=0.0).to(ACC))
    cp = tl.load(c_prev_ptr + s_base + pix, mask=pmask, other=0.0).to(ACC)
    return g_base, s_base, step, si, sf, so, tg, cp, sf * cp + si * tg


@triton.jit
def _lstm_fwd_kernel(gates_ptr, c_prev_ptr, h_ptr, c_ptr, C, HW, BLOCK_P: tl.constexpr,
                     ACC: tl.constexpr):
    plane, pix, pmask = plane_and_tile(HW, BLOCK_P)
    b, c = plane // C, plane % C
    _, s_base, _, si, sf, so, tg, cp, cell = _cell(gates_ptr, c_prev_ptr, b, c, C, HW, pix, pmask, ACC)
    tl.store(c_ptr + s_base + pix, cell.to(c_ptr.dtype.element_ty), mask=pmask)
    tl.store(h_ptr + s_base + pix, (so * tanh(cell)).to(h_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def _lstm_bwd_kernel(dh_ptr, dc_ptr, gates_ptr, c_prev_ptr, dgates_ptr, dc_prev_ptr, C, HW,
                     NEED_GATES: tl.constexpr, NEED_C_PREV: tl.constexpr, BLOCK_P: tl.constexpr,
                     ACC: tl.constexpr):
    """NEED_*: which gradients to write (each needs every input, so all are read)."""
    plane, pix, pmask = plane_and_tile(HW, BLOCK_P)
    b, c = plane // C, plane % C
    g_base, s_base, step, si, sf, so, tg, cp, cell = _cell(gates_ptr, c_prev_ptr, b, c, C, HW, pix,
                                                           pmask, ACC)
    dh = tl.load(dh_ptr + s_base + pix, mask=pmask, other=0.0).to(ACC)
    dc = tl.load(dc_ptr + s_base + pix, mask=pmask, other=0.0).to(ACC)
    tc = tanh(cell)
    dct = dc + dh * so * (1.0 - tc * tc)
    if NEED_GATES:
        out = dgates_ptr.dtype.element_ty
        tl.store(dgates_ptr + g_base + pix, (dct * tg * si * (1.0 - si)).to(out), mask=pmask)
        tl.store(dgates_ptr + g_base + step + pix, (dct * cp * sf * (1.0 - sf)).to(out), mask=pmask)
        tl.store(dgates_ptr + g_base + 2 * step + pix, (dct * si * (1.0 - tg * tg)).to(out), mask=pmask)
        tl.store(dgates_ptr + g_base + 3 * step + pix, (dh * tc * so * (1.0 - so)).to(out), mask=pmask)
    if NEED_C_PREV:
        tl.store(dc_prev_ptr + s_base + pix, (dct * sf).to(dc_prev_ptr.dtype.element_ty), mask=pmask)


def lstm_grid(c_prev: torch.Tensor):
    """(grid, BLOCK_P): one program per BLOCK_P pixels of a (b, c) plane; on the GPU one 16-byte
    vector per thread and tensor at 4 warps (:func:`vector_block`)."""
    B, C, H, W = c_prev.shape
    BP = pixel_block(H * W, gpu_block=vector_block(c_prev.dtype, 128))
    return (B * C * triton.cdiv(H * W, BP),), BP


@launcher
def lstm_forward(gates, c_prev):
    """gates (B,4C,H,W), c_prev (B,C,H,W) -> (h, c), each (B,C,H,W)."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    if c.numel() == 0:
        return h, c
    grid, BP = lstm_grid(c_prev)
    B, C, H, W = c_prev.shape
    _lstm_fwd_kernel[grid](gates, c_prev, h, c, C, H * W, BLOCK_P=BP, ACC=acc_dtype(gates))
    return h, c


@launcher
def lstm_backward(dh, dc, gates, c_prev, needs):
    """(dgates (B,4C,H,W), dc_prev (B,C,H,W)) from the output gradients dh, dc, where ``needs``
    asks for them (0-element placeholders elsewhere, never allocated or written)."""
    dh, dc, gates, c_prev = dh.contiguous(), dc.contiguous(), gates.contiguous(), c_prev.contiguous()
    grads = gradient_buffers(needs, gates, c_prev)
    if c_prev.numel() == 0:
        return grads
    dgates, dc_prev = (g if need else dh for g, need in zip(grads, needs))  # dh: never written
    grid, BP = lstm_grid(c_prev)
    B, C, H, W = c_prev.shape
    _lstm_bwd_kernel[grid](dh, dc, gates, c_prev, dgates, dc_prev, C, H * W, NEED_GATES=needs[0],
                           NEED_C_PREV=needs[1], BLOCK_P=BP, ACC=acc_dtype(gates))
    return grads
