"""Tunables of the CPU path, read at call time (set ``psfops.cpu.config.NAME`` to change one)."""
from __future__ import annotations

ALGORITHMS = ("stack", "taps", "fft")
MIN_WORK_BYTES = 1 << 18  # a call may always use this much scratch (tiny calls need no loops)
STRIP_BYTES = 1 << 20     # output rows per tap-loop strip: B*C*rows*W elements of about this size
MAX_TAP_CALLS = 20000     # strips are merged so that taps * strips stays under this (call overhead)

# Cost model constants: nanoseconds per unit of work on one core, one intra-op thread, float32 (only
# their ratios matter). Fitted by ``python -m bench cpu-fit``: each is the best CPU time
# (process_time, steadier than wall clock on a shared machine) of one micro-op divided by its work
# count, on the development machine (2-core Intel Xeon, AVX-512; 1-min load ~8 from other jobs while
# fitting); the same command then times every algorithm forced on the ``python -m bench cpu`` shapes
# and marks the model's pick (it picked the fastest on each, see docs/benchmarks.md).
COST = dict(
    conv=0.078,    # one multiply-add inside oneDNN's 1-input-channel direct convolution (conv2d)
    mm=0.025,      # one multiply-add inside a matrix product (synthesis, dw, dbasis; bmm)
    tap=0.39,      # one element of an elementwise tap pass (addcmul_ over a shifted view)
    mix=0.55,      # one element of the weight mix (addcmul_ over a stack plane)
    fft=0.22,      # one element * log2(size) of an rfft2/irfft2
    call=11000.0,  # one tap step of the tap loop (views, dispatch, a tiny addcmul_)
)

# The tap loops issue thousands of small ops (k*k per strip). Run with torch's OpenMP team, each op
# waits at a barrier for every thread, and as soon as another process holds a core (a shared
# machine) that costs up to a scheduler slice per op: measured 5-20x slower on a loaded 2-core
# machine than one thread. So they run with ONE intra-op thread; TAP_WORKERS > 1 splits the rows
# over that many Python worker threads (one intra-op thread each), which pays on an idle machine
# but lost to one thread under load here (the GIL hand-offs); it is kept, tested, off by default.
TAP_WORKERS = 1
# The same stall hits the conv-stack and FFT ops under load (measured 5-20x on a shared 2-core
# machine at load 5 for 2 threads vs 1). On an idle machine torch's own threads win (2 cores, load
# 0.3, psf_conv fwd+bwd: B4 C3 128x128 J40 k7 95 vs 118 ms, B1 C3 256x256 J8 k15 34 vs 49 ms,
# B8 C40 64x64 J40 k7 199 vs 214 ms), so by default the CPU path leaves the thread count to torch
# (None); an int makes the whole path run with that many intra-op threads. On a busy machine,
# OMP_NUM_THREADS=1 (or 1 here) avoids the stall.
INTRAOP_THREADS: int | None = None
