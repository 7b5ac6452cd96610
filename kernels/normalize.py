"""Plane normalization kernels: ``spatial_normalize`` forward and backward.

One program per (b, c) plane loops over the plane in blocks of ``BLOCK`` values (any plane size;
the plane is never held at once), in two passes:

softmax  forward  pass 1: online max m and sum s = sum exp(x - m)   pass 2: y = exp(x - m) / s
         backward pass 1: t = sum dy*y                             pass 2: dx = y * (dy - t)
l1       forward  pass 1: s = sum |x| + eps                         pass 2: y = |x| / s
         backward pass 1: t = sum dy*|x|                            pass 2:
                  dx = sign(x) * (dy - t / s) / s,  with sign(0) = 0
                  (the subgradient torch.abs uses, so a zero input gets a zero gradient).
The forward also writes each plane's (m, s) in the accumulation dtype (2 values a plane); the
backward reads the input x and those stats and recomputes y in that dtype, so half-precision
inputs get gradients from an unrounded y, as the reference does. ``eps`` arrives as a
1-element tensor of the accumulation dtype (a Python float argument would be typed float32,
rounding a float64 eps). Accumulation is float32 (float64 for float64 inputs); plane offsets
are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..env import interpreting
from ._common import acc_dtype, launcher, torch_acc_dtype

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
def _normalize_fwd_kernel(x_ptr, eps_ptr, y_ptr, stats_ptr, HW, MODE: tl.constexpr, BLOCK: tl.constexpr,
                          ACC: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    base = plane * HW
    if MODE == 0:
        m, s = _softmax_stats(x_ptr, base, HW, BLOCK, ACC)
    else:
        m = tl.zeros((), ACC)
        s = tl.zeros((), ACC)
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + offs, mask=offs < HW, other=0.0).to(ACC)
            s += tl.sum(tl.abs(x), axis=0)
        s = s + tl.load(eps_ptr).to(ACC)
    tl.store(stats_ptr + 2 * plane, m)
    tl.store(stats_ptr + 2 * plane + 1, s)
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
        tl.store(y_ptr + base + offs, _normalized(x, m, s, MODE).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normalized(x, m, s, MODE: tl.constexpr):
    """y from x and the plane's stats: exp(x - m) / s (softmax) or |x| / s (l1)."""
    if MODE == 0:
        return tl.exp(x - m) / s
    else:
        return tl.abs(x) / s


@triton.jit
def _load_pair(dy_ptr, x_ptr, base, start, HW, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Block ``start`` of a plane: its offsets, mask, and dy and x there in the ACC dtype."""
    offs = start + tl.arange(0, BLOCK)
    mask = offs < HW
    dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    return offs, mask, dy, x


@triton.jit
def _normalize_bwd_kernel(dy_ptr, x_ptr, stats_ptr, dx_ptr, HW, MODE: tl.constexpr,
                          BLOCK: tl.constexpr, ACC: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    base = plane * HW
    m = tl.load(stats_ptr + 2 * plane)
    s = tl.load(stats_ptr + 2 * plane + 1)
    t = tl.zeros((), ACC)  # sum dy*y (softmax) or sum dy*|x| (l1)
    for start in range(0, HW, BLOCK):
        offs, mask, dy, x = _load_pair(dy_ptr, x_ptr, base, start, HW, BLOCK, ACC)
        if MODE == 0:
            t += tl.sum(tl.where(mask, dy * _normalized(x, m, s, MODE), 0.0), axis=0)
        else:
            t += tl.sum(dy * tl.abs(x), axis=0)
    for start in range(0, HW, BLOCK):
        offs, mask, dy, x = _load_pair(dy_ptr, x_ptr, base, start, HW, BLOCK, ACC)
        if MODE == 0:
            dx = _normalized(x, m, s, MODE) * (dy - t)
        else:
            sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(ACC)
            sign = tl.where(x != x, x, sign)  # NaN input: NaN gradient, as in the reference
            dx = sign * (dy - t / s) / s
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@launcher
def normalize_forward(x: torch.Tensor, mode: str, eps: float):
    """(B,C,H,W) -> (y (B,C,H,W), stats (B*C, 2)): each plane normalized (module docstring), and
    its (m, s) in the accumulation dtype for the backward."""
    x = x.contiguous()
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    stats = torch.empty((B * C, 2), device=x.device, dtype=torch_acc_dtype(x))
    if x.numel() == 0:
        return y, stats
    eps_t = torch.full((1,), eps, device=x.device, dtype=stats.dtype)
    _normalize_fwd_kernel[(B * C,)](x, eps_t, y, stats, H * W, MODE=_MODES[mode],
                                    BLOCK=plane_block(H * W), ACC=acc_dtype(x))
    return y, stats


@launcher
def normalize_backward(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, mode: str) -> torch.Tensor:
    """dx from dy, the input x and the forward's per-plane stats."""
    dy, x = dy.contiguous(), x.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    B, C, H, W = x.shape
    _normalize_bwd_kernel[(B * C,)](dy, x, stats, dx, H * W, MODE=_MODES[mode],
                                    BLOCK=plane_block(H * W), ACC=acc_dtype(x))
    return dx
