"""Plane normalization kernels: ``spatial_normalize`` forward and backward.

One program per (b, c) plane loops over the plane in blocks of ``BLOCK`` values (any plane size;
the plane is never held at once), in two passes:

softmax  forward  pass 1: online max m and sum s = sum exp(x - m)   pass 2: y = exp(x - m) / s
         backward pass 1: t = sum dy*y                             pass 2: dx = y * (dy - t)
l1       forward  pass 1: S = sum |x|                              pass 2: y = |x| / (S + eps)
         backward pass 1: S = sum |x|, T = sum dy*|x|              pass 2:
                  dx = sign(x) * (dy - T / (S + eps)) / (S + eps),  with sign(0) = 0
                  (the subgradient torch.abs uses, so a zero input gets a zero gradient).
The softmax backward reads the saved output y; the l1 backward reads the input x.
Accumulation is float32 (float64 for float64 inputs); plane offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, check_launchable, interpreting

SOFTMAX, L1 = 0, 1
_MODES = {"softmax": SOFTMAX, "l1": L1}


def plane_block(hw: int) -> int:
    """Values per loop step. Under the interpreter 1024 (a 70x70 plane takes 5 steps), on the GPU
    4096; never more than the plane needs."""
    cap = 1024 if interpreting() else 4096
    return max(16, min(triton.next_power_of_2(max(hw, 1)), cap))


@triton.jit
def _softmax_stats(x_ptr, base, HW, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Plane max m (0 where the whole plane is -inf, so exp(x - m) never sees -inf - -inf) and
    s = sum exp(x - m), by an online update over blocks."""
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + base + offs, mask=offs < HW, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        m = m_new
    return tl.where(m == float("-inf"), 0.0, m), s


@triton.jit
def _normalize_fwd_kernel(x_ptr, y_ptr, HW, eps, MODE: tl.constexpr, BLOCK: tl.constexpr,
                          ACC: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * HW
    if MODE == 0:
        m, s = _softmax_stats(x_ptr, base, HW, BLOCK, ACC)
    else:
        m = tl.zeros((), ACC)
        s = tl.zeros((), ACC)
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + offs, mask=offs < HW, other=0.0).to(ACC)
            s += tl.sum(tl.abs(x), axis=0)
        s = s + eps
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            y = tl.exp(x - m) / s
        else:
            y = tl.abs(x) / s
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normalize_bwd_kernel(dy_ptr, saved_ptr, dx_ptr, HW, eps, MODE: tl.constexpr,
                          BLOCK: tl.constexpr, ACC: tl.constexpr):
    """``saved`` is the output y (softmax) or the input x (l1)."""
    base = tl.program_id(0).to(tl.int64) * HW
    t = tl.zeros((), ACC)  # softmax: sum dy*y; l1: sum dy*|x|
    s = tl.zeros((), ACC)  # l1: sum |x|
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(saved_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            t += tl.sum(dy * v, axis=0)
        else:
            t += tl.sum(dy * tl.abs(v), axis=0)
            s += tl.sum(tl.abs(v), axis=0)
    s = s + eps
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        v = tl.load(saved_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        if MODE == 0:
            dx = v * (dy - t)
        else:
            sign = tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(ACC)
            sign = tl.where(v != v, v, sign)  # NaN input: NaN gradient, as in the reference
            dx = sign * (dy - t / s) / s
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, out: torch.Tensor, *tensors, mode: str, eps: float) -> torch.Tensor:
    B, C, H, W = out.shape
    if out.numel() == 0:
        return out
    HW = H * W
    kernel[(B * C,)](*tensors, out, HW, float(eps), MODE=_MODES[mode], BLOCK=plane_block(HW),
                     ACC=acc_dtype(out))
    return out


def normalize_forward(x: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,H,W), each plane normalized (see the module docstring)."""
    check_launchable(x)
    x = x.contiguous()
    return _launch(_normalize_fwd_kernel, torch.empty_like(x), x, mode=mode, eps=eps)


def normalize_backward(dy: torch.Tensor, saved: torch.Tensor, mode: str, eps: float) -> torch.Tensor:
    """dx from dy and ``saved`` = the output y (softmax) or the input x (l1)."""
    check_launchable(saved)
    dy, saved = dy.contiguous(), saved.contiguous()
    return _launch(_normalize_bwd_kernel, torch.empty_like(saved), dy, saved, mode=mode, eps=eps)
