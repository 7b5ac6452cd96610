"""Plane normalization kernels: ``spatial_normalize`` forward and backward.

Each (b, c) plane is normalized over its H*W values, in two passes over the plane, in blocks of
``BLOCK`` values (any plane size; the plane is never held at once):

softmax  forward  pass 1: online max m and sum s = sum exp(x - m)   pass 2: y = exp(x - m) / s
         backward pass 1: t = sum dy*y                             pass 2: dx = y * (dy - t)
l1       forward  pass 1: s = sum |x| + eps                         pass 2: y = |x| / s
         backward pass 1: t = sum dy*|x|                            pass 2:
                  dx = sign(x) * (dy - t / s) / s,  with sign(0) = 0
                  (the subgradient torch.abs uses, so a zero input gets a zero gradient).

Two launch forms (:func:`launch_shape` picks one per call), named by the constexpr ``PHASE``:

- ``WHOLE``: one program per plane runs both passes (many planes: they fill the GPU alone).
- ``PARTIAL`` then ``APPLY``: few large planes (B1 C3 1024x1024) would leave most SMs idle, so
  each plane is cut into ``n_chunks`` chunks of whole blocks, one program per (plane, chunk), in
  two launches. ``PARTIAL``: each chunk's pass-1 sums go to a (planes, n_chunks) buffer.
  ``APPLY``: each program combines its plane's partials in a fixed order (``tl.max``/``tl.sum``
  over one vector: deterministic, no atomics), then runs pass 2 over its chunk. A partial
  softmax max is kept raw (-inf for an all -inf chunk) so the combination is exact:
  S = sum_i s_i exp(m_i - max_i m_i).

The forward also writes each plane's (m, s) in the accumulation dtype (2 values a plane); the
backward reads the input x and those stats and recomputes y in that dtype, so half-precision
inputs get gradients from an unrounded y, as the reference does. ``eps`` arrives as a
1-element tensor of the accumulation dtype (a Python float argument would be typed float32,
rounding a float64 eps). Accumulation is float32 (float64 for float64 inputs); plane offsets
are int64. The chunk count depends on the plane count, plane size and the GPU's SM count, so
results are bitwise reproducible on one device (the rounding of the sums differs between
launch forms, within the op's tolerance).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, torch_acc_dtype
from .launch import gpu_plans, launcher, sm_count

# MODE: which normalization
SOFTMAX: tl.constexpr = tl.constexpr(0)
L1: tl.constexpr = tl.constexpr(1)
_MODES = {"softmax": SOFTMAX.value, "l1": L1.value}

# PHASE: which launch form (module docstring)
WHOLE: tl.constexpr = tl.constexpr(0)
PARTIAL: tl.constexpr = tl.constexpr(1)
APPLY: tl.constexpr = tl.constexpr(2)

PROGRAMS_PER_SM = 4  # programs wanted in flight per SM before planes are split


def plane_block(hw: int, split: bool = False) -> int:
    """Values per loop step: under the interpreter 1024 (a 70x70 plane takes 5 steps); on the GPU
    4096 for a whole plane and 2048 for a chunk (more, smaller chunks); never more than the
    plane needs."""
    cap = (2048 if split else 4096) if gpu_plans() else 1024
    return max(16, min(triton.next_power_of_2(max(hw, 1)), cap))


def launch_shape(planes: int, hw: int, n_sm: int) -> tuple[int, int, int]:
    """(BLOCK, n_chunks, chunk): ``n_chunks == 1`` is the ``WHOLE`` form (one program per plane,
    ``chunk == hw``). Planes are split when they are fewer than half the programs wanted
    (``PROGRAMS_PER_SM * n_sm``) and longer than one block; a chunk is a whole number of blocks,
    as few as give about that many programs."""
    want = PROGRAMS_PER_SM * n_sm
    block = plane_block(hw, split=True)
    if 2 * planes >= want or hw <= block:
        return plane_block(hw), 1, hw
    n_blocks = triton.cdiv(hw, block)
    per_chunk = triton.cdiv(n_blocks, triton.cdiv(want, planes))
    n_chunks = triton.cdiv(n_blocks, per_chunk)
    return block, n_chunks, per_chunk * block


@triton.jit
def _program_range(HW, CHUNK, N_CHUNKS, PHASE: tl.constexpr):
    """This program's plane (int64) and chunk, and the value range [lo, hi) of the plane it owns."""
    pid = tl.program_id(0).to(tl.int64)
    if PHASE == WHOLE:
        return pid, 0, 0, HW
    else:
        chunk = pid % N_CHUNKS
        lo = chunk * CHUNK
        return pid // N_CHUNKS, chunk, lo, tl.minimum(lo + CHUNK, HW)


@triton.jit
def _partial_stats(x_ptr, base, lo, hi, MODE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Pass 1 over values [lo, hi) of a plane. softmax: the raw max m (-inf if every value is
    -inf) and s = sum exp(x - m) (0 then), by an online update over blocks; l1: (0, sum |x|)."""
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if MODE == SOFTMAX:
            x = tl.load(x_ptr + base + offs, mask=offs < hi, other=float("-inf")).to(ACC)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
            m = m_new
        else:
            x = tl.load(x_ptr + base + offs, mask=offs < hi, other=0.0).to(ACC)
            s += tl.sum(tl.abs(x), axis=0)
    if MODE == L1:
        m = tl.zeros((), ACC)
    return m, s


@triton.jit
def _plane_stats(m, s, eps_ptr, MODE: tl.constexpr, ACC: tl.constexpr):
    """The plane's (m, s) from its combined pass-1 sums: m made 0 where the whole plane is -inf
    (so exp(x - m) never sees -inf - -inf); eps added to the l1 sum."""
    if MODE == SOFTMAX:
        return tl.where(m == float("-inf"), 0.0, m), s
    else:
        return m, s + tl.load(eps_ptr).to(ACC)


@triton.jit
def _combined_stats(part_ptr, plane, N_CHUNKS, MODE: tl.constexpr, CHUNKS_BLOCK: tl.constexpr,
                    ACC: tl.constexpr):
    """The raw (m, s) of a whole plane from its chunks' partials, in a fixed order."""
    i = tl.arange(0, CHUNKS_BLOCK)
    row = part_ptr + 2 * (plane * N_CHUNKS + i)
    m_i = tl.load(row, mask=i < N_CHUNKS, other=float("-inf"))
    s_i = tl.load(row + 1, mask=i < N_CHUNKS, other=0.0)
    if MODE == SOFTMAX:
        m = tl.max(m_i, axis=0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        return m, tl.sum(s_i * tl.exp(m_i - m_safe), axis=0)  # an all -inf chunk: 0 * 0
    else:
        return tl.zeros((), ACC), tl.sum(s_i, axis=0)


@triton.jit
def _normalized(x, m, s, MODE: tl.constexpr):
    """y from x and the plane's stats: exp(x - m) / s (softmax) or |x| / s (l1)."""
    if MODE == SOFTMAX:
        return tl.exp(x - m) / s
    else:
        return tl.abs(x) / s


@triton.jit
def _normalize_fwd_kernel(x_ptr, eps_ptr, y_ptr, stats_ptr, part_ptr, HW, CHUNK, N_CHUNKS,
                          MODE: tl.constexpr, PHASE: tl.constexpr, BLOCK: tl.constexpr,
                          CHUNKS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Grid: planes (WHOLE) or planes x N_CHUNKS (PARTIAL, APPLY)."""
    plane, chunk, lo, hi = _program_range(HW, CHUNK, N_CHUNKS, PHASE)
    base = plane * HW
    if PHASE == PARTIAL:
        m, s = _partial_stats(x_ptr, base, lo, hi, MODE, BLOCK, ACC)
        tl.store(part_ptr + 2 * (plane * N_CHUNKS + chunk), m)
        tl.store(part_ptr + 2 * (plane * N_CHUNKS + chunk) + 1, s)
    else:
        if PHASE == WHOLE:
            m, s = _partial_stats(x_ptr, base, lo, hi, MODE, BLOCK, ACC)
        else:
            m, s = _combined_stats(part_ptr, plane, N_CHUNKS, MODE, CHUNKS_BLOCK, ACC)
        m, s = _plane_stats(m, s, eps_ptr, MODE, ACC)
        if chunk == 0:
            tl.store(stats_ptr + 2 * plane, m)
            tl.store(stats_ptr + 2 * plane + 1, s)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < hi
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
            tl.store(y_ptr + base + offs, _normalized(x, m, s, MODE).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_pair(dy_ptr, x_ptr, base, start, hi, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Block ``start`` of a plane (values below ``hi``): its offsets, mask, and dy and x there in
    the ACC dtype."""
    offs = start + tl.arange(0, BLOCK)
    mask = offs < hi
    dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    return offs, mask, dy, x


@triton.jit
def _normalize_bwd_kernel(dy_ptr, x_ptr, stats_ptr, dx_ptr, part_ptr, HW, CHUNK, N_CHUNKS,
                          MODE: tl.constexpr, PHASE: tl.constexpr, BLOCK: tl.constexpr,
                          CHUNKS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Grid as the forward's. PARTIAL writes each chunk's t; APPLY sums the plane's t's."""
    plane, chunk, lo, hi = _program_range(HW, CHUNK, N_CHUNKS, PHASE)
    base = plane * HW
    m = tl.load(stats_ptr + 2 * plane)
    s = tl.load(stats_ptr + 2 * plane + 1)
    if PHASE == APPLY:
        i = tl.arange(0, CHUNKS_BLOCK)
        t = tl.sum(tl.load(part_ptr + plane * N_CHUNKS + i, mask=i < N_CHUNKS, other=0.0), axis=0)
    else:
        t = tl.zeros((), ACC)  # sum dy*y (softmax) or sum dy*|x| (l1)
        for start in range(lo, hi, BLOCK):
            offs, mask, dy, x = _load_pair(dy_ptr, x_ptr, base, start, hi, BLOCK, ACC)
            if MODE == SOFTMAX:
                t += tl.sum(tl.where(mask, dy * _normalized(x, m, s, MODE), 0.0), axis=0)
            else:
                t += tl.sum(dy * tl.abs(x), axis=0)
    if PHASE == PARTIAL:
        tl.store(part_ptr + plane * N_CHUNKS + chunk, t)
    else:
        for start in range(lo, hi, BLOCK):
            offs, mask, dy, x = _load_pair(dy_ptr, x_ptr, base, start, hi, BLOCK, ACC)
            if MODE == SOFTMAX:
                dx = _normalized(x, m, s, MODE) * (dy - t)
            else:
                sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(ACC)
                sign = tl.where(x != x, x, sign)  # NaN input: NaN gradient, as in the reference
                dx = sign * (dy - t / s) / s
            tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, x, tensors, per_chunk_values: int, mode: str):
    """Launch ``kernel(*tensors, part, HW, CHUNK, N_CHUNKS, ...)`` in the form
    :func:`launch_shape` picks: one WHOLE launch, or PARTIAL then APPLY with a partials buffer of
    ``per_chunk_values`` accumulation-dtype values per (plane, chunk)."""
    B, C, H, W = x.shape
    planes, hw = B * C, H * W
    block, n_chunks, chunk = launch_shape(planes, hw, sm_count(x.device))
    common = dict(MODE=_MODES[mode], BLOCK=block, ACC=acc_dtype(x))
    if n_chunks == 1:
        kernel[(planes,)](*tensors, tensors[0], hw, hw, 1, PHASE=WHOLE.value, CHUNKS_BLOCK=1, **common)
        return
    part = torch.empty((planes, n_chunks, per_chunk_values), device=x.device, dtype=torch_acc_dtype(x))
    for phase in (PARTIAL, APPLY):
        kernel[(planes * n_chunks,)](*tensors, part, hw, chunk, n_chunks, PHASE=phase.value,
                                     CHUNKS_BLOCK=triton.next_power_of_2(n_chunks), **common)


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
    _launch(_normalize_fwd_kernel, x, (x, eps_t, y, stats), 2, mode)
    return y, stats


@launcher
def normalize_backward(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, mode: str) -> torch.Tensor:
    """dx (B,C,H,W) from dy, the input x (B,C,H,W) and the forward's per-plane stats (B*C, 2)."""
    dy, x = dy.contiguous(), x.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    _launch(_normalize_bwd_kernel, x, (dy, x, stats, dx), 1, mode)
    return dx
