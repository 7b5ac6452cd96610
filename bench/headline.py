"""The headline check: psf_conv and its transpose, fwd+bwd at B8 C64 128x128 J40 k7, float32 and
bfloat16 (the transpose beside the forward: the same shape, its forward is psf_conv's d(x) pass).

Prints target-vs-measured lines (medians: >= 5x the faster eager form and >= 2x
torch.compile(reference) in both dtypes, >= 60% of the measured copy bandwidth in float32, peak
memory <= 1.1x inputs+outputs+gradients; :data:`bench.report.TARGETS`) with the binding roof,
and returns the records. ``torch.compile`` is static here (``dynamic=False``: the strongest
baseline for one shape).
"""
from __future__ import annotations

import torch

from . import cases as C
from . import harness, report

DTYPES = ("float32", "bfloat16")


def run(device: torch.device, dtypes=DTYPES, impls=None, log=print, timing: dict | None = None,
        on_record=None, ops=C.HEADLINE_OPS) -> list[dict]:
    """Measure the headline case per op and dtype (``impls``: default every implementation of the
    op), print the target lines, return the records (``on_record(rec)`` after each one)."""
    env = harness.environment(device)
    roof = harness.copy_bandwidth_gbps(device)
    log(f"device {env['device']}; torch {env['torch']}, triton {env['triton']}; "
        f"copy roofline {roof:.1f} GB/s")
    shape = {k: v for k, v in C.HEADLINE.items() if k != "op"}
    records = []
    for op in ops:
        for dtype in dtypes:
            case = C.Case(op=op, dtype=dtype, **shape)
            available = C.OPS[op].implementations()
            recs = harness.run_cases([case], device, [i for i in impls or available if i in available],
                                     ("fwd+bwd",), env=env, roofline_gbps=roof, compile_dynamic=False,
                                     timing=timing, log=log, on_record=on_record)
            records += recs
            log(f"{op} fwd+bwd {case.label()} {dtype}:")
            for line in report.target_lines({r["impl"]: r for r in recs}, dtype):
                log("  " + line)
    return records
