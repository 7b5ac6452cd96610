"""The cost model: which algorithm runs a call (no timing at run time)."""
from __future__ import annotations

import contextlib
import math

from . import config
from ._util import _fft_len, _n_strips

_forced: list[str] = []


@contextlib.contextmanager
def forced(name: str):
    """Inside the block every call runs algorithm ``name`` (tests; apply_psf always runs taps)."""
    if name not in config.ALGORITHMS:
        raise ValueError(f"algorithm must be one of {config.ALGORITHMS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def choose(task: str, B: int, C: int, H: int, W: int, J: int, k: int, dilation: int = 1,
           algorithm: str | None = None) -> str:
    """Which algorithm runs ``task`` ("forward": psf_conv's output or the transpose's d(y);
    "adjoint": the transpose's output or psf_conv's d(x); "wgrad": d(weights) and/or d(basis)).

    Estimated time of each, from the work counts below times :data:`config.COST` (no timing at run time);
    ``algorithm`` (or an enclosing :func:`forced`) overrides. With n = B*H*W and T = k*k:

    - stack: conv J*C*T*n (+ J*C*n mix); for wgrad it answers "taps" (that is what it runs).
    - taps: synthesis J*T*n (matrix product) + C*T*n tap passes + a call per tap per strip;
      wgrad: C*T*n tap passes + 2*J*T*n matrix products.
    - fft: transforms of size N = (H+2P')(W+2P') (P' = dilation*(k//2), 5-smooth):
      forward (C + J*C) planes, adjoint (J*C + C), wgrad (C + 2*J*C), plus the mixing passes.

    The tap loops run single-threaded (see :data:`config.TAP_WORKERS`), the convolutions and transforms
    with torch's threads: config.COST's tap and mm constants are single-thread figures.
    """
    if algorithm is None and _forced:
        algorithm = _forced[-1]
    if algorithm is not None:
        return "taps" if task == "wgrad" and algorithm == "stack" else algorithm
    n, T = B * H * W, k * k
    P = dilation * (k // 2)
    Nh, Nw = _fft_len(H + 2 * P), _fft_len(W + 2 * P)
    N = B * Nh * Nw
    logn = math.log2(max(2, Nh * Nw))
    strips = _n_strips(B * C * H * W * 4, H, T)
    tap_calls = T * strips
    c = config.COST
    wgrad_taps = c["tap"] * C * T * n + c["mm"] * 2 * J * T * n + c["call"] * tap_calls * 2
    if task == "forward":
        costs = {"stack": c["conv"] * J * C * T * n + c["mix"] * J * C * n + c["call"] * 2 * J,
                 "taps": c["mm"] * J * T * n + c["tap"] * C * T * n + c["call"] * tap_calls,
                 "fft": c["fft"] * N * logn * (C + J * C) + c["mix"] * J * C * n * 3 + c["call"] * 4 * J}
    elif task == "adjoint":
        costs = {"stack": c["conv"] * J * C * T * n + c["mix"] * J * C * n + c["call"] * 2 * J,
                 "taps": c["mm"] * J * T * n + c["tap"] * C * T * n + c["call"] * tap_calls,
                 "fft": c["fft"] * N * logn * (C + J * C) + c["mix"] * J * C * (n + 2 * N) + c["call"] * 4 * J}
    else:
        costs = {"taps": wgrad_taps,  # (stack has no wgrad of its own: it uses the tap gradients)
                 "fft": c["fft"] * N * logn * (C + 2 * J * C) + c["mix"] * J * C * (n + 4 * N) + c["call"] * 6 * J}
    return min(costs, key=costs.get)
