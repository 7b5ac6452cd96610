"""Helpers shared by the kernel modules: accumulation dtype, block sizes and the jit helpers of
the memory-bound kernels (pixel tiles, plane offsets, tanh), and the one vocabulary of tile products."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import gpu_plans, interpreting


def torch_acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Sums and products of inputs like ``t`` are carried in float64 for float64, float32 for
    every other dtype."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def acc_dtype(t: torch.Tensor):
    """:func:`torch_acc_dtype` as a triton dtype."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def gradient_buffers(needs, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A backward launcher's outputs: an uninitialized contiguous buffer shaped like each input
    whose gradient ``needs`` asks for, a 0-element placeholder (never written) for the others."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if need else t.new_empty(0)
                 for need, t in zip(needs, inputs))


def pixel_block(hw: int, gpu_block: int = 128) -> int:
    """Pixels per program: ``gpu_block`` on the GPU; the interpreter runs programs one by one in
    Python, so there a large block (fewer programs) is much faster."""
    cap = gpu_block if gpu_plans() else 1024
    return max(16, min(triton.next_power_of_2(max(hw, 1)), cap))


@triton.jit
def pixel_tile(pid, HW, BLOCK_P: tl.constexpr):
    """Flat in-plane indices of pixel tile ``pid`` and their in-range mask."""
    pix = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    return pix, pix < HW


@triton.jit
def plane_offsets(b, C, cc, HW):
    """int64 element offsets of planes (b, cc) of a contiguous (B, C, H, W) tensor."""
    return (b * C + cc).to(tl.int64) * HW


@triton.jit
def tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|), for |x| >= 0.05: no overflow,
    saturates to +-1 at +-inf, NaN in -> NaN out. Below 0.05, where 1 - e cancels, the odd series
    x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 (truncation < 1e-15 relative). The same
    formulas on every backend and in the interpreter."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    big = tl.where(x < 0, -t, t)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(tl.abs(x) < 0.05, small, big)


# How a tile product runs (the DOT constexpr of :func:`matmul` and the kernels), one vocabulary for every kernel:
#   "half"   float16/bfloat16 operands as they are, on the tensor cores (exact products, float32 sums);
#   "tf32x3" float32 operands as three tf32 tensor-core passes (accurate to float32 rounding);
#   "tf32x2" a float16/bfloat16 first operand (exact in tf32) times a float32 second as two tf32
#            passes, the second split into its leading tf32 bits and the rest (as accurate as
#            tf32x3 there, with a third fewer products and only one operand split; a non-finite
#            value in the second operand gives NaN);
#   "ieee"   float32 operands in IEEE float32 (no tensor-core rounding; every product in the interpreter);
#   "fma"    a broadcast multiply and sum (float64, which tl.dot does not take on every GPU).
DOT_MODES = ("half", "tf32x3", "tf32x2", "ieee", "fma")


def dot_mode(dtype: torch.dtype, float32: str = "ieee") -> str:
    """The DOT for operands of ``dtype``; ``float32``: the mode float32 operands get on a GPU.
    Under the interpreter every non-float64 product is "ieee": its tl.dot mishandles bfloat16
    (numpy has none), and float32 products of half operands are exact, as on the tensor cores."""
    if float32 not in DOT_MODES:
        raise ValueError(f"float32 must be one of {DOT_MODES}, got {float32!r}")
    if dtype == torch.float64:
        return "fma"
    if interpreting():
        return "ieee"
    return float32 if dtype == torch.float32 else "half"


@triton.jit
def _tf32_lead(v):
    """float32 ``v`` with its low 13 mantissa bits cleared: its leading bits, exact in tf32 (the
    rest, ``v - lead``, is exact in float32)."""
    return (v.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def matmul(a, b, DOT: tl.constexpr):
    """(M, K) @ (K, N), accumulated in float32 (float64 for "fma"); see :data:`DOT_MODES`. tl.dot
    needs M, N, K >= 16."""
    if DOT == "fma":
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif DOT == "half":
        return tl.dot(a, b)
    elif DOT == "tf32x2":
        return matmul_add(tl.zeros((a.shape[0], b.shape[1]), tl.float32), a, b, DOT)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=DOT)


@triton.jit
def matmul_add(acc, a, b, DOT: tl.constexpr):
    """``acc + a @ b`` (see :func:`matmul`), accumulated inside the tensor-core product where there
    is one (no separate product tile in registers)."""
    if DOT == "fma":
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif DOT == "half":
        return tl.dot(a, b, acc)
    elif DOT == "tf32x2":
        a, b = a.to(tl.float32), b.to(tl.float32)
        lead = _tf32_lead(b)
        return tl.dot(a, lead, tl.dot(a, b - lead, acc, input_precision="tf32"), input_precision="tf32")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT)


@triton.jit
def plane_and_tile(HW, BLOCK_P: tl.constexpr):
    """On a 1-D grid over (planes x pixel tiles), axis 0 only (no 65535 cap as on axes 1, 2):
    this program's plane index (int64, so plane products cannot overflow) and pixel tile."""
    n_tiles = tl.cdiv(HW, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    pix, pmask = pixel_tile((pid % n_tiles).to(tl.int32), HW, BLOCK_P)
    return pid // n_tiles, pix, pmask


def vector_block(dtype: torch.dtype, threads: int) -> int:
    """Values along the contiguous axis that give each of ``threads`` threads one 16-byte vector
    (4 float32, 8 float16/bfloat16, 2 float64): the widest global load and store a thread issues."""
    return threads * max(1, 16 // dtype.itemsize)
