"""How things are measured: timing, peak memory, the copy roofline, and one record per case.

Timing (:func:`time_ms`): on CUDA ``triton.testing.do_bench(fn, return_mode="median")`` (it
synchronizes, warms up and flushes L2 between runs); on CPU a warm-up then repeated
``time.perf_counter`` calls, median. Peak memory (:func:`peak_mb`): on CUDA
``max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before the
call (inputs and cotangents are allocated before, so this is what the call itself adds); on CPU
``None`` (not measured). CUDA-graph timing (:func:`graph_time_ms`): for cases whose plain median
is under :data:`GRAPH_BELOW_MS`, the step is captured once in a ``torch.cuda.CUDAGraph`` and its
replays are timed the same way (L2 flushed between replays), so launch gaps leave the number.

Two roofs (:func:`roofs`): the copy roof, a large device-to-device copy (bytes read + written over
the median time, :func:`copy_bandwidth_gbps`), and the FLOP roof of the case's dtype, a large
matrix product in that dtype (:func:`peak_tflops`; float32 without TF32), each measured once per
run. A record's ``bound`` is the roof whose floor (bytes / bandwidth or FLOPs / peak) is longer,
and ``pct_bound`` the share of that roof it reaches.

Before anything is timed, each implementation's outputs (and, for fwd+bwd, its input gradients)
are compared once with ``psfops.reference`` run on the same inputs in float32 (float64 for
float64): :func:`check_outputs`. A mismatch is recorded (status ``mismatch``) and not timed.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Iterable

import torch

import psfops

from . import cases as C

MB = 2.0 ** 20
GRAPH_BELOW_MS = 0.2  # cases faster than this are also timed as CUDA-graph replays
# Relative error (||out - ref|| / ||ref||) above which an implementation's output is wrong: far
# above rounding (TF32 convolutions in the float32 references included), far below a real bug.
CHECK_RTOL = {"float32": 5e-3, "float64": 1e-8, "float16": 1e-2, "bfloat16": 4e-2}


# ---- environment --------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    """Human-readable device name: the CUDA device name, or ``cpu: <model>`` (clearly a CPU run)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model} ({os.cpu_count()} threads)"


def device_slug(device: torch.device) -> str:
    """File-name form of the device: ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").replace("--", "-")


def environment(device: torch.device) -> dict:
    """Fields shared by every record of a run: device, versions, date."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    interpret = device.type != "cuda" and psfops.env.interpreting()
    return {"device": device_name(device), "device_type": device.type, "triton_interpret": interpret,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "psfops": psfops.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


# ---- measurement --------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25.0,
            rep_ms: float = 100.0, min_reps: int = 5) -> float:
    """Median wall time of ``fn()`` in ms (see the module docstring for the method per device)."""
    if device.type == "cuda":
        from triton.testing import do_bench
        times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        if len(times) < min_reps:  # do_bench sizes its repeats from an estimate: one sample for a
            est = statistics.median(times)  # case slower than rep_ms; never report a single run
            times = do_bench(fn, warmup=max(warmup_ms, est), rep=1.2 * min_reps * est, return_mode="all")
        return float(statistics.median(times))
    t_end = time.perf_counter() + warmup_ms / 1e3
    fn()  # at least one warm-up call, whatever it costs
    while time.perf_counter() < t_end:
        fn()
    samples: list[float] = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(samples) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory ``fn()`` allocates on top of what is already allocated, in MiB (None on CPU)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return peak / MB


def copy_bandwidth_gbps(device: torch.device, nbytes: int | None = None) -> float:
    """Measured device copy bandwidth in GB/s (1e9 B/s), counting bytes read + written.

    Default size: 1 GiB on CUDA (far beyond L2), 64 MiB on CPU.
    """
    if nbytes is None:
        nbytes = 2 ** 30 if device.type == "cuda" else 2 ** 26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


_PEAKS: dict = {}


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP rate of a large matrix product in ``dtype`` (TFLOP/s): 8192^3 on CUDA
    (float16/bfloat16 on the tensor cores, float32 with TF32 off), 1024^3 on CPU. Cached per run."""
    key = (str(device), dtype)
    if key not in _PEAKS:
        n = 8192 if device.type == "cuda" else 1024
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            ms = time_ms(lambda: a @ b, device, min_reps=3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        _PEAKS[key] = 2.0 * n ** 3 / (ms * 1e-3) / 1e12
    return _PEAKS[key]


def roofs(rec: dict, copy_gbps: float, peak: float | None) -> dict:
    """The roofline fields of a timed record: achieved GB/s and TFLOP/s, each as a share of its
    roof, and the binding roof (``bound``: "memory" or "compute") with its share."""
    ms = rec["ms"]
    out = {"gbps": rec["bytes"] / (ms * 1e-3) / 1e9, "tflops": rec["flops"] / (ms * 1e-3) / 1e12}
    out["pct_roofline"] = 100.0 * out["gbps"] / copy_gbps
    out["pct_flops"] = None if not peak else 100.0 * out["tflops"] / peak
    compute = out["pct_flops"] is not None and out["pct_flops"] > out["pct_roofline"]
    out["bound"] = "compute" if compute else "memory"
    out["pct_bound"] = out["pct_flops"] if compute else out["pct_roofline"]
    out["roof_note"] = roof_note({**rec, **out})
    return out


def roof_note(rec: dict) -> str | None:
    """Why a record is above 100% of the copy roof, or None when it is not. The roof is a copy far
    larger than any cache (64 MiB on CPU, 1 GiB on CUDA); a case whose bytes fit in the caches
    (the CPU smoke cases move a few MB) is served from them, faster than that copy."""
    pct = rec.get("pct_roofline")
    if pct is None or pct <= 100.0:
        return None
    return (f"{pct:.0f}% of the copy roof: the case moves {rec['bytes'] / 1e6:.1f} MB, which fits in the "
            f"{'L2' if rec.get('device_type') == 'cuda' else 'CPU'} caches, while the roof "
            f"({rec['roofline_gbps']:.1f} GB/s) is a copy from {'HBM' if rec.get('device_type') == 'cuda' else 'DRAM'}; "
            "not a bound for this case")


def graph_time_ms(fn: Callable[[], object], device: torch.device, **timing) -> tuple[float | None, str | None]:
    """(median ms of replaying ``fn`` captured in a CUDA graph, None) or (None, why not)."""
    if device.type != "cuda":
        return None, "no CUDA graphs on this device"
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up on a side stream, as capture wants
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            held = fn()  # outputs live in the graph's pool
        ms = time_ms(graph.replay, device, **timing)
        del held, graph
        return ms, None
    except Exception as err:  # noqa: BLE001  (e.g. an op that synchronizes cannot be captured)
        return None, f"capture failed: {type(err).__name__}: {err}"[:300]


# ---- correctness ----------------------------------------------------------------------------

def _upcast(t):
    if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
        return t.detach().float().requires_grad_(t.requires_grad)
    return t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t


def _outputs_and_grads(fn: Callable, inputs: tuple, pass_: str, cotangents=None):
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    if pass_ == "fwd":
        return [o.detach() for o in outs], None
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if cotangents is None:
        gen = torch.Generator(device=outs[0].device).manual_seed(1)
        cotangents = [torch.randn(o.shape, device=o.device, generator=gen).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, [c.to(o.dtype) for c, o in zip(cotangents, outs)])
    return [o.detach() for o in outs] + list(grads), cotangents


def check_outputs(spec: C.OpSpec, impl: str, fn: Callable, inputs: tuple, pass_: str,
                  compile_dynamic: bool = True) -> tuple[bool, float]:
    """(ok, worst relative error): ``impl``'s outputs (fwd) or outputs and input gradients
    (fwd+bwd) against ``psfops.reference`` on the same inputs upcast to float32, with the same
    random cotangents; ok when the worst error is within :data:`CHECK_RTOL` of the dtype."""
    dtype = next(t for t in inputs if isinstance(t, torch.Tensor)).dtype
    run = compiled(fn, compile_dynamic) if impl == "compile" else fn
    with psfops.backend("triton" if impl == "triton" else "reference"), \
            torch.set_grad_enabled(pass_ != "fwd"):
        got, cot = _outputs_and_grads(run, inputs, pass_)
        with psfops.backend("reference"):
            want, _ = _outputs_and_grads(spec.info.reference, tuple(_upcast(t) for t in inputs), pass_, cot)
    err = 0.0
    for g, w in zip(got, want):
        g, w = g.double(), w.double()
        if torch.isnan(g).any() and not torch.isnan(w).any():
            return False, float("inf")
        denom = w.norm().item()
        err = max(err, (g - w).norm().item() / (denom if denom > 0 else 1.0))
    return err <= CHECK_RTOL[str(dtype).replace("torch.", "")], err


# ---- implementations ----------------------------------------------------------------------

def _set_recompile_limit(n: int = 256) -> None:
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed in newer torch
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)


_COMPILED: dict = {}


def compiled(fn: Callable, dynamic: bool) -> Callable:
    """``torch.compile(fn, dynamic=dynamic)``, cached so a run compiles each graph once."""
    key = (fn, dynamic)
    if key not in _COMPILED:
        _set_recompile_limit()
        _COMPILED[key] = torch.compile(fn, dynamic=dynamic)
    return _COMPILED[key]


def skip_reason(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` is not run here, or None if it runs."""
    if impl == "triton":
        if not psfops.env.TRITON_AVAILABLE:
            return "triton is not installed"
        if device.type != "cuda" and not psfops.env.interpreting():
            return "no CUDA device (the Triton interpreter is far too slow to time; set TRITON_INTERPRET=1 to force)"
    return None


def make_step(spec: C.OpSpec, impl: str, fn: Callable, inputs: tuple, pass_: str,
              compile_dynamic: bool = True) -> tuple[Callable[[], object], int]:
    """A zero-argument callable running one forward (``fwd``) or forward + backward (``fwd+bwd``),
    and the op's output size in bytes.

    The backward is ``torch.autograd.grad`` of all outputs w.r.t. all inputs with fixed random
    cotangents (created here, before any measurement), so no ``.grad`` accumulates between calls.
    """
    if impl == "compile":
        fn = compiled(fn, compile_dynamic)

    def forward():
        if impl == "triton":
            with psfops.backend("triton"):
                return fn(*inputs)
        return fn(*inputs)

    with torch.no_grad():
        probe = forward()  # first call: compiles / autotunes the forward
    outs = probe if isinstance(probe, tuple) else (probe,)
    out_bytes = C.nbytes(outs)
    if pass_ == "fwd":
        del probe, outs

        def step():
            with torch.no_grad():
                return forward()
        return step, out_bytes

    cotangents = tuple(torch.randn_like(o) for o in outs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    del probe, outs

    def step():
        out = forward()
        out = out if isinstance(out, tuple) else (out,)
        return torch.autograd.grad(out, leaves, cotangents)

    step.cotangents = cotangents  # for tests
    return step, out_bytes


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def base_record(case: C.Case, impl: str, pass_: str, env: dict, roofline_gbps: float,
                compile_dynamic: bool = True) -> dict:
    """A record for (case, impl, pass) with nothing measured yet (status "ok")."""
    return {**case.fields(), "pass": pass_, "impl": impl, "ms": None, "ms_graph": None,
            "graph_reason": None, "peak_mb": None, "gbps": None, "tflops": None, "pct_roofline": None,
            "pct_flops": None, "bound": None, "pct_bound": None, "peak_tflops": None,
            "check_rel_err": None, "bytes": None, "flops": C.flops(case, pass_), "held_mb": None,
            "ideal_mb": None, "roofline_gbps": roofline_gbps,
            "compile": (("dynamic" if compile_dynamic else "static") if impl == "compile" else None),
            "status": "ok", "reason": None, **env}


def measure(case: C.Case, impl: str, pass_: str, device: torch.device, env: dict,
            roofline_gbps: float, *, compile_dynamic: bool = True, timing: dict | None = None,
            graphs: bool = True, peak: float | None = None) -> dict:
    """Benchmark one (case, impl, pass) and return its record (status ok/skipped/oom/error/
    mismatch): check the outputs, then peak memory, plain timing, CUDA-graph timing (cases under
    :data:`GRAPH_BELOW_MS`, if ``graphs``) and the roofs (``peak``: the dtype's TFLOP/s)."""
    spec = C.OPS[case.op]
    fn = spec.implementations().get(impl, "absent")
    rec = base_record(case, impl, pass_, env, roofline_gbps, compile_dynamic)
    rec["peak_tflops"] = peak
    if fn == "absent":
        return {**rec, "status": "skipped", "reason": f"{impl} does not exist for {case.op}"}
    reason = skip_reason(impl, device)
    if reason:
        return {**rec, "status": "skipped", "reason": reason}
    inputs = step = None
    try:
        torch.manual_seed(0)
        inputs = spec.make_inputs(case, device, pass_ == "fwd+bwd")
        ok, rec["check_rel_err"] = check_outputs(spec, impl, fn, inputs, pass_, compile_dynamic)
        if not ok:
            return {**rec, "status": "mismatch",
                    "reason": f"relative error {rec['check_rel_err']:.3g} against the reference "
                              f"(> {CHECK_RTOL[case.dtype]:g}): not timed"}
        step, out_bytes = make_step(spec, impl, fn, inputs, pass_, compile_dynamic)
        step()  # first full call: compiles / autotunes the backward too
        in_bytes = C.nbytes(inputs)
        # held before each call: the inputs (+ the cotangents); ideal: that + outputs (+ input grads)
        held = in_bytes + (out_bytes if pass_ == "fwd+bwd" else 0)
        ideal = held + out_bytes + (in_bytes if pass_ == "fwd+bwd" else 0)
        rec.update(held_mb=held / MB, ideal_mb=ideal / MB,
                   bytes=C.min_bytes_from_sizes(in_bytes, out_bytes, pass_))
        rec["peak_mb"] = peak_mb(step, device)
        rec["ms"] = time_ms(step, device, **(timing or {}))
        if graphs and rec["ms"] < GRAPH_BELOW_MS:
            rec["ms_graph"], rec["graph_reason"] = graph_time_ms(step, device, **(timing or {}))
        elif graphs:
            rec["graph_reason"] = f"not taken: {rec['ms']:.3g} ms >= {GRAPH_BELOW_MS} ms"
    except Exception as err:  # one failing case must not end the run
        if not is_oom(err):
            return {**rec, "status": "error", "reason": f"{type(err).__name__}: {err}"[:500]}
        rec.update(status="oom", reason="out of memory", ms=None, peak_mb=None)
    finally:
        del inputs, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rec["ms"]:
        rec.update(roofs(rec, roofline_gbps, peak))
    return rec


RECORD_KEY = ("op", "pass", "impl", "dtype", "B", "C", "H", "W", "J", "k", "device", "compile")


def record_key(rec: dict) -> tuple:
    """Identity of a record: a newer record with the same key replaces an older one."""
    return tuple(rec.get(k) for k in RECORD_KEY)


def run_cases(case_list: Iterable[C.Case], device: torch.device, impls: Iterable[str],
              passes: Iterable[str] = C.PASSES, *, env: dict, roofline_gbps: float,
              done: set | None = None, deadline: float | None = None,
              on_record: Callable[[dict], None] | None = None, compile_dynamic: bool = True,
              timing: dict | None = None, skip: Callable[[C.Case, str], str | None] | None = None,
              log: Callable[[str], None] = print, graphs: bool = True,
              peaks: dict | None = None) -> list[dict]:
    """Measure every (case, pass, impl); skip keys in ``done``; stop cleanly at ``deadline``
    (a ``time.monotonic()`` value). ``skip(case, impl)`` may return a reason not to run a pair
    (recorded as skipped). Calls ``on_record`` after each record (for incremental saves).
    ``peaks``: dtype name -> TFLOP/s roof (default: :func:`peak_tflops`, measured when first
    needed)."""
    peaks = {} if peaks is None else peaks
    records = []
    for case in case_list:
        for pass_ in passes:
            for impl in impls:
                if impl not in C.OPS[case.op].implementations():
                    continue
                key = record_key({**case.fields(), "pass": pass_, "impl": impl, "device": env["device"]})
                if done and key in done:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    log("time limit reached: stopping (rerun with --resume to continue)")
                    return records
                t0 = time.monotonic()
                why = skip(case, impl) if skip else None
                if why:
                    rec = {**base_record(case, impl, pass_, env, roofline_gbps, compile_dynamic),
                           "status": "skipped", "reason": why}
                else:
                    if case.dtype not in peaks:
                        peaks[case.dtype] = peak_tflops(device, case.torch_dtype)
                    rec = measure(case, impl, pass_, device, env, roofline_gbps,
                                  compile_dynamic=compile_dynamic, timing=timing, graphs=graphs,
                                  peak=peaks[case.dtype])
                rec["wall_s"] = round(time.monotonic() - t0, 2)  # includes compile and warm-up
                records.append(rec)
                log(format_record(rec))
                if on_record:
                    on_record(rec)
    return records


def format_record(rec: dict) -> str:
    """One log line for a record."""
    head = f"{rec['op']:<17} {rec['pass']:<7} {rec['impl']:<15} {rec['dtype']:<8} " \
           f"B{rec['B']} C{rec['C']} {rec['H']}x{rec['W']}" \
           + (f" J{rec['J']}" if rec.get("J") is not None else "") \
           + (f" k{rec['k']}" if rec.get("k") is not None else "")
    if rec.get("wall_s") is not None:
        head += f" [{rec['wall_s']:.1f}s]"
    if rec["status"] != "ok":
        return f"{head:<80} {rec['status']}: {rec['reason']}"
    graph = "" if rec.get("ms_graph") is None else f" (graph {rec['ms_graph']:.3f})"
    bw = "" if rec.get("gbps") is None else f"  {rec['gbps']:8.1f} GB/s ({rec['pct_roofline']:5.1f}%)"
    bound = "" if rec.get("bound") is None else f"  {rec['bound']}-bound {rec['pct_bound']:5.1f}%"
    mem = "" if rec["peak_mb"] is None else f"  {rec['peak_mb']:9.1f} MB"
    note = roof_note(rec)
    return f"{head:<80} {rec['ms']:9.3f} ms{graph}{bw}{bound}{mem}" + (f"\n    ({note})" if note else "")
