"""``python -m bench cpu-fit``: the CPU path's cost constants (``psfops.cpu.config.COST``) from
micro-timings on this machine, then every algorithm forced on the ``python -m bench cpu`` shapes
next to the cost model's choice.

    python -m bench cpu-fit [--shapes 0,1,...] [--no-check] [--json OUT]

Each constant is the best of a few CPU-time (``time.process_time``: steadier than wall clock on a
shared machine) runs of one op, one intra-op thread, float32, divided by its work count:
``conv`` a 1-input-channel ``conv2d`` per multiply-add, ``mm`` a ``bmm`` per multiply-add, ``tap``
an ``addcmul_`` over a shifted strip per element, ``mix`` an ``addcmul_`` over a stack plane per
element, ``fft`` an ``rfft2`` + ``irfft2`` pair per element x log2(size) / 2, ``call`` a
one-element ``addcmul_``. The check times ``forward_pass``/``adjoint_pass``/``weight_grads`` per algorithm
(one call each above a second) and marks the model's pick.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from psfops import cpu


def _best(fn, reps: int = 5) -> float:
    """Best CPU seconds of ``fn()`` over ``reps`` runs after one warm-up (``reps`` 0: the warm-up's)."""
    t0 = time.process_time()
    fn()
    best = math.inf if reps else time.process_time() - t0
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _timed(fn) -> float:
    """CPU seconds of one call when it takes over a second, else the best of three more."""
    first = _best(fn, 0)
    return first if first >= 1.0 else min(first, _best(fn, 2))


def fit() -> dict[str, float]:
    """Nanoseconds per unit of work for each of config.COST's keys (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, kern = r(12, 1, 134, 134), r(8, 1, 7, 7)
    bt, w = r(4, 25, 40), r(4, 40, 16384)
    xp, y, K = r(4, 3, 134, 134), r(4, 3, 128, 128), r(4, 1, 128, 128)
    st, wj, z = r(4, 3, 8, 128, 128), r(4, 1, 128, 128), r(4, 3, 270, 270)
    nfft = 4 * 3 * 270 * 270 * math.log2(270 * 270)
    tiny = r(1, 1, 4, 4)
    taps = lambda: cpu._taps_forward(F.pad(tiny, (7, 7, 7, 7)), lambda r0, r1, t0, t1: r(1, t1 - t0, 16),  # noqa: E731
                                     1, 1, 4, 4, 15, 1, 225, 1 << 20)
    ns = lambda sec, n: round(sec / n * 1e9, 4)  # noqa: E731
    return dict(
        conv=ns(_best(lambda: F.conv2d(x, kern)), 12 * 8 * 49 * 128 * 128),
        mm=ns(_best(lambda: torch.bmm(bt, w)), 4 * 25 * 40 * 16384),
        tap=ns(_best(lambda: [y.addcmul_(xp[:, :, u:u + 128, u:u + 128], K) for u in range(7)]), 7 * y.numel()),
        mix=ns(_best(lambda: [y.addcmul_(st[:, :, j], wj) for j in range(8)]), 8 * y.numel()),
        fft=ns(_best(lambda: torch.fft.irfft2(torch.fft.rfft2(z), s=z.shape[-2:])), 2 * nfft),
        call=ns(_best(taps), 225),  # one tap step of the loop on a 4x4 image: views, dispatch, a tiny addcmul_
    )


def check(shapes) -> list[dict]:
    """Each task of each shape timed with every algorithm forced (CPU ms) and the model's pick."""
    from psfops.cpu import adjoint_pass, forward_pass, weight_grads
    recs = []
    for B, C, H, W, J, k in shapes:
        g = torch.Generator().manual_seed(0)
        x, w, dy = (torch.randn(*s, generator=g) for s in ((B, C, H, W), (B, J, H, W), (B, C, H, W)))
        b = torch.randn(J, k, k, generator=g)
        fwd_budget, bwd_budget = cpu.work_budget(x, w, x), cpu.work_budget(x, w, dy, x, w)
        runs = dict(forward=lambda a: forward_pass(x, w, b, 1, "zeros", a, fwd_budget),
                    adjoint=lambda a: adjoint_pass(dy, w, b, 1, "zeros", a, bwd_budget),
                    wgrad=lambda a: weight_grads(x, dy, w, b, 1, "zeros", a, bwd_budget, True, True))
        for task, run in runs.items():
            algos = ("taps", "fft") if task == "wgrad" else cpu.ALGORITHMS
            ms = {a: 1e3 * _timed(lambda: run(a)) for a in algos}
            pick = cpu.choose(task, B, C, H, W, J, k)
            recs.append(dict(shape=[B, C, H, W, J, k], task=task, ms=ms, pick=pick, fastest=min(ms, key=ms.get)))
            print(f"{(B, C, H, W, J, k)} {task:8s} " + " ".join(f"{a} {t:8.1f}" for a, t in ms.items())
                  + f"  model: {pick}{'' if pick == recs[-1]['fastest'] else ' (fastest: ' + recs[-1]['fastest'] + ')'}",
                  flush=True)
    return recs


def main(argv=None) -> int:
    from .cpu import SHAPES
    p = argparse.ArgumentParser(prog="python -m bench cpu-fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))))
    p.add_argument("--no-check", action="store_true", help="only the constants")
    p.add_argument("--json", default=None, help="write {cost, check} here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cost = fit()
    print("COST = " + json.dumps(cost), flush=True)
    recs = [] if a.no_check else check([SHAPES[int(i)] for i in a.shapes.split(",")])
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(dict(cost=cost, check=recs), f, indent=1)
    return 0
