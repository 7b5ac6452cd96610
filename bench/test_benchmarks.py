"""The benchmark suite for pytest-benchmark: one test per op x pass x implementation (x dtype).

    pytest bench --benchmark-only                       # CPU: small shapes; CUDA: each op's base shape
    pytest bench --benchmark-only --bench-dtypes float32,bfloat16 --benchmark-save=mine
    pytest bench --benchmark-only --benchmark-compare   # against the last saved run
    pytest bench --benchmark-only --benchmark-histogram=hist

Each timed call is the same step ``python -m bench`` times (:func:`bench.harness.make_step`),
followed by ``torch.cuda.synchronize()`` on CUDA (pytest-benchmark reads a host clock), after a
one-time check of its outputs against the reference (:func:`bench.harness.check_outputs`). On a
CPU, the Triton rows are skipped (no GPU; the interpreter is not timed) and so is
``torch.compile`` unless ``--bench-cpu-compile``. ``python -m bench`` remains the GPU report
(device-event timing, L2 flushes, CUDA graphs, rooflines); this suite is for comparing runs.
Nothing here writes files unless asked (``--benchmark-save``/``--benchmark-autosave``: pytest-
benchmark's own ``.benchmarks/`` folder).
"""
from __future__ import annotations

import pytest
import torch

from bench import cases as C
from bench import harness
from bench.conftest import bench_device

pytest.importorskip("pytest_benchmark")

CASES = [(op, pass_, impl) for op in C.OPS for pass_ in C.PASSES for impl in C.OPS[op].implementations()]


def _case(op: str, dtype: str, size: str) -> C.Case:
    shape = C.quick_shapes(op)[0] if size == "quick" else C.OPS[op].base
    return C.Case(op=op, dtype=dtype, **shape)


def _skip_reason(impl: str, device: torch.device, config) -> str | None:
    if impl == "triton" and device.type != "cuda":
        return "no CUDA device: Triton kernels are timed on a GPU only (the interpreter is not timed)"
    if impl == "compile" and device.type == "cpu" and not config.getoption("--bench-cpu-compile"):
        return "torch.compile on the CPU builds C++ for minutes; pass --bench-cpu-compile"
    return harness.skip_reason(impl, device)


@pytest.mark.parametrize("op,pass_,impl", CASES, ids=[f"{o}-{p}-{i}" for o, p, i in CASES])
def test_op(benchmark, request, op, pass_, impl, dtype):
    device = bench_device(request.config)
    reason = _skip_reason(impl, device, request.config)
    if reason:
        pytest.skip(reason)
    size = request.config.getoption("--bench-size") or ("base" if device.type == "cuda" else "quick")
    case = _case(op, dtype, size)
    spec = C.OPS[op]
    fn = spec.implementations()[impl]
    torch.manual_seed(0)
    inputs = spec.make_inputs(case, device, pass_ == "fwd+bwd")
    ok, err = harness.check_outputs(spec, impl, fn, inputs, pass_)
    assert ok, f"{impl} {op} {pass_} {case.label()} {dtype}: relative error {err:.3g} against the reference"
    step, out_bytes = harness.make_step(spec, impl, fn, inputs, pass_)
    step()  # compiles, autotunes

    def timed():
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    benchmark.group = f"{op} {pass_} {dtype} {case.label()}"
    benchmark.extra_info.update(case.fields())
    benchmark.extra_info.update({"pass": pass_, "impl": impl, "device": harness.device_name(device),
                                 "bytes": C.min_bytes_from_sizes(C.nbytes(inputs), out_bytes, pass_),
                                 "flops": C.flops(case, pass_), "check_rel_err": err})
    benchmark(timed)
