"""Shared helpers of the CPU path: sizes, work budget, threads, row strips and groups."""
from __future__ import annotations

import contextlib
import os

import torch

from ..env import accumulation_dtype
from . import config


def _fft_len(n: int) -> int:
    """The smallest 2,3,5-smooth length >= n (fast for pocketfft)."""
    m = max(1, n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1



def _n_strips(strip_bytes_total: int, H: int, taps: int) -> int:
    s = max(1, min(H, -(-strip_bytes_total // config.STRIP_BYTES)))
    return max(1, min(s, config.MAX_TAP_CALLS // max(1, taps)))


def work_budget(*tensors: torch.Tensor) -> int:
    """Scratch bytes a call may size its chunks to: half the bytes of its inputs and outputs (``tensors``, in the
    accumulation dtype), at least :data:`config.MIN_WORK_BYTES`."""
    total = sum(t.numel() * torch.empty((), dtype=accumulation_dtype(t.dtype)).element_size() for t in tensors)
    return max(config.MIN_WORK_BYTES, total // 2)  # (what RSS shows: scratch + allocator slack ~ 2x)


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(accumulation_dtype(t.dtype)).contiguous()



def _strips(B, C, H, W, T, es, r0=0, r1=None):
    """Row strips of [r0, r1) sized for the cache (see :data:`config.STRIP_BYTES`)."""
    r1 = H if r1 is None else r1
    s = _n_strips(B * C * (r1 - r0) * W * es, r1 - r0, T)
    rows = -(-(r1 - r0) // s)
    return [(r, min(r1, r + rows)) for r in range(r0, r1, rows)]


_POOL: list = []


def _pool():
    """Worker threads for config.TAP_WORKERS > 1, each running torch ops with one intra-op thread."""
    if not _POOL:
        import concurrent.futures as cf
        _POOL.append(cf.ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="psfops-cpu",
                                           initializer=lambda: torch.set_num_threads(1)))
    return _POOL[0]


@contextlib.contextmanager
def _threads(n: int | None):
    """torch ops in this block use ``n`` intra-op threads (None: unchanged; restored after; unchanged
    while torch.compile traces, where the compiled code has its own threads)."""
    if n is None or torch.compiler.is_compiling():
        yield
        return
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _one_thread():
    return _threads(1)


def _path_threads(fn):
    """Run an autograd Function's forward/backward under :data:`config.INTRAOP_THREADS`."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args):
        with _threads(config.INTRAOP_THREADS):
            return fn(*args)
    return wrapped


def _row_groups(H: int):
    """Contiguous row ranges, one per tap-loop worker (:data:`config.TAP_WORKERS`)."""
    n = max(1, min(config.TAP_WORKERS, H))
    rows = -(-H // n)
    return [(r, min(H, r + rows)) for r in range(0, H, rows)]


def _run_groups(fn, H):
    """``[fn(r0, r1) for each row group]``, in parallel when there are several."""
    groups = _row_groups(H)
    if len(groups) == 1:
        with _one_thread():
            return [fn(*g) for g in groups]
    inference = torch.is_inference_mode_enabled()  # (grad modes are per thread: carry the caller's)

    def run(g):
        with torch.inference_mode(inference), torch.no_grad():
            return fn(*g)
    return list(_pool().map(run, groups))


def _tap_chunk(B, rows, W, T, budget, es):
    return max(1, min(T, budget // max(1, 2 * B * rows * W * es * config.TAP_WORKERS)))
