"""Helpers shared by every kernel module: accumulation dtype, block sizes, launch guard, and the
jit helpers for tap geometry (so forward and backward kernels share one address arithmetic)."""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .._backend import check_triton_runs_on
from ..env import accumulation_dtype, interpreting


def launcher(fn):
    """Decorator for the Python launchers: the first tensor argument says where the kernels run.
    It must be a CUDA tensor (or any tensor under ``TRITON_INTERPRET=1``), and CUDA launches go to
    its device: Triton launches on the current device, so inputs on ``cuda:1`` would otherwise
    fail while device 0 is current."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        t = next(a for a in args if isinstance(a, torch.Tensor))
        check_triton_runs_on(t.device)
        with torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext():
            return fn(*args, **kwargs)
    return run


def unneeded_as_placeholders(grads, needs) -> tuple:
    """Gradients with a 0-element placeholder for each one not needed (see ``psfops._grads``)."""
    return tuple(g if need else g.new_empty(0) for g, need in zip(grads, needs))


def acc_dtype(t: torch.Tensor):
    """The triton accumulation dtype for inputs of ``t.dtype`` (:func:`psfops.env.accumulation_dtype`)."""
    return tl.float64 if torch_acc_dtype(t) == torch.float64 else tl.float32


def torch_acc_dtype(t: torch.Tensor) -> torch.dtype:
    return accumulation_dtype(t.dtype)


def pixel_block(hw: int, gpu_block: int = 128) -> int:
    """Pixels per program. The interpreter runs programs one by one in Python, so there a large
    block (fewer programs) is much faster; on the GPU, ``gpu_block``."""
    cap = 1024 if interpreting() else gpu_block
    return max(16, min(triton.next_power_of_2(max(hw, 1)), cap))


def channel_block(c: int, cap: int = 32) -> int:
    return max(2, min(triton.next_power_of_2(max(c, 1)), cap))


@triton.jit
def tap_shift(t, KSIZE: tl.constexpr, dilation):
    """Row and column offset of tap ``t = u*KSIZE + v``: ((u - KSIZE//2)*d, (v - KSIZE//2)*d)."""
    r: tl.constexpr = KSIZE // 2
    return (t // KSIZE - r) * dilation, (t % KSIZE - r) * dilation


@triton.jit
def shifted_pixels(h, w, dh, dw, H, W, valid):
    """Flat in-plane index of pixels (h+dh, w+dw) and the mask of those inside the image."""
    hh = h + dh
    ww = w + dw
    inside = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return hh * W + ww, inside


# ---- appended for the normalize / gating / lstm kernels ----

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


@triton.jit
def matmul_tile(a, b, USE_DOT: tl.constexpr):
    """(M, K) @ (K, N) in the operands' dtype. ``USE_DOT``: ``tl.dot`` in IEEE precision (no
    TF32; needs M, N, K >= 16 and float32 or half operands); else a broadcast multiply and
    ``tl.sum`` over K (the float64 path: tl.dot does not take float64 on every GPU)."""
    if USE_DOT:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def plane_and_tile(HW, BLOCK_P: tl.constexpr):
    """On a 1-D grid over (planes x pixel tiles), axis 0 only (no 65535 cap as on axes 1, 2):
    this program's plane index (int64, so plane products cannot overflow) and pixel tile."""
    n_tiles = tl.cdiv(HW, BLOCK_P)
    pid = tl.program_id(0).to(tl.int64)
    pix, pmask = pixel_tile((pid % n_tiles).to(tl.int32), HW, BLOCK_P)
    return pid // n_tiles, pix, pmask


# ---- launch geometry of the memory-bound kernels (normalize / gating / lstm) ----

INTERPRETER_SMS = 4  # the pretend GPU of the interpreter: small test shapes take the GPU's split paths


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (:data:`INTERPRETER_SMS` elsewhere)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def vector_block(dtype: torch.dtype, threads: int) -> int:
    """Values along the contiguous axis that give each of ``threads`` threads one 16-byte vector
    (4 float32, 8 float16/bfloat16, 2 float64): the widest global load and store a thread issues."""
    return threads * max(1, 16 // dtype.itemsize)
