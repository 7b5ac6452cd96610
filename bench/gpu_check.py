"""The psf kernels' correctness on a GPU, without pytest: ``python -m bench gpu-check --out FILE``.

For every psf op of the op table (psf_conv, psf_conv_transpose, apply_psf, synthesize_psf; an op
psfops does not have is recorded as skipped), each of its sample variants (the usual use, then
e.g. a per-sample basis with reflect padding), dtype (float32, bfloat16, float16) and shape (``full``: the headline's B8 C64 128x128 J40 k7, so exactly the launches the
benchmarks time; ``ragged``: B4 C36 130x100, image sides that are not multiples of the tiles, C
not a multiple of the channel blocks, more tiles than programs in every kernel):

- the forward, and the backward for every input's gradient and with each input frozen in turn
  (the ``needs`` flags: the kernels' NEED_* paths, e.g. frozen basis or weights), each run twice
  on the same inputs and cotangents and compared bitwise (the kernels are deterministic);
- every tensor the launchers allocate while the kernels run (outputs, gradients, scratch, d(basis)
  partials) is filled with NaN first, so an output element the kernels never write, or scratch
  read before it is written, shows as NaN (the inputs are finite: any NaN is a failure);
- outputs and the needed gradients against ``psfops.reference`` in float64 on the same GPU, same
  inputs and cotangents: relative error (norm of the difference / norm of the reference) within
  :data:`FWD_RTOL` / :data:`GRAD_RTOL` of the dtype (the test suite's tolerances).

The cases run in worker processes, one per dtype and shape, all at once (the sm_90 compiles are
CPU-bound and the GPU is mostly idle meanwhile); each worker writes a JSON line per case as it
finishes. The parent stops the workers at ``--max-minutes`` and writes FILE: every case's verdict
(``ok``, ``mismatch``, ``nan``, ``nondeterministic``, ``error``), the cases not reached, and a
summary. Exit status 0 only when every planned case ran and passed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

PSF_OPS = ("psf_conv", "psf_conv_transpose", "apply_psf", "synthesize_psf")
DTYPES = ("float32", "bfloat16", "float16")
# large: k = 15, the large-kernel launches (tap rows in a loop, d(taps)' tap groups, apply_psf's smaller
# forward blocks), which the interpreter tests run but only a GPU runs compiled
SHAPES = {"full": dict(B=8, C=64, H=128, W=128, J=40, k=7), "ragged": dict(B=4, C=36, H=130, W=100, J=40, k=7),
          "large": dict(B=2, C=20, H=70, W=68, J=12, k=15),
          "smoke": dict(B=1, C=3, H=9, W=10, J=3, k=3)}  # smoke: the CPU test of the plumbing (interpreter)
DEFAULT_SHAPES = ("full", "ragged", "large")
FWD_RTOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
GRAD_RTOL = {"float32": 1e-4, "float16": 1e-3, "bfloat16": 8e-3}
REPO = Path(__file__).resolve().parents[1]


def available_ops(ops=PSF_OPS) -> tuple[list[str], dict[str, str]]:
    """(ops of the op table to check, {op: why skipped} for the others)."""
    from psfops.testing import OPS
    return [o for o in ops if o in OPS], {o: "not in psfops' op table (psfops has no such op yet)"
                                          for o in ops if o not in OPS}


def needs_variants(op: str) -> list[tuple[bool, ...]]:
    """Every gradient, then each tensor input frozen in turn."""
    from psfops.testing import OPS, tensor_inputs
    n = len(tensor_inputs(OPS[op]))
    return [(True,) * n] + [tuple(j != i for j in range(n)) for i in range(n)]


def variants(op: str) -> list[str]:
    """The labels of the op's sample variants (``usual`` for the first, unlabelled one)."""
    from psfops.testing import OPS, Shape
    return [s.label or "usual" for s in OPS[op].samples(Shape(), torch.float32, "meta")]


def order(ops) -> list[tuple[str, int]]:
    """(op, variant index) in running order: every op's usual use first, then the other variants."""
    n = {op: len(variants(op)) for op in ops}
    return [(op, v) for v in range(max(n.values(), default=0)) for op in ops if v < n[op]]


def plan(ops, dtypes, shapes) -> list[dict]:
    """The cases, in the order each worker (one per dtype and shape) runs them."""
    cases = []
    for dtype in dtypes:
        for shape in shapes:
            for op, v in order(ops):
                variant = variants(op)[v]
                cases.append(dict(op=op, variant=variant, dtype=dtype, shape=shape, passage="fwd", needs=None))
                cases += [dict(op=op, variant=variant, dtype=dtype, shape=shape, passage="bwd", needs=list(n))
                          for n in needs_variants(op)]
    return cases


def case_key(c: dict) -> tuple:
    return (c["op"], c.get("variant"), c["dtype"], c["shape"], c["passage"],
            None if c["needs"] is None else tuple(c["needs"]))


@contextlib.contextmanager
def poisoned_allocations():
    """Within the block, ``torch.empty`` and ``torch.empty_like`` return floating-point tensors
    filled with NaN (what the launchers allocate: outputs, gradients, scratch)."""
    real_empty, real_like = torch.empty, torch.empty_like

    def fill(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            t.fill_(float("nan"))
        return t

    torch.empty = lambda *a, **k: fill(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: fill(real_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_like


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same_bits(a, b) -> bool:
    return all(x.shape == y.shape and torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    if torch.isnan(got).any() or torch.isinf(got).any():
        return float("inf")
    denom = want.norm().item()
    return (got - want).norm().item() / (denom if denom > 0 else 1.0)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run_op(op: str, dtype: str, shape: str, device: str = "cuda", variant: int = 0):
    """Yield one result dict per case of (op, sample variant, dtype, shape): the forward, then each
    gradient set."""
    from psfops.testing import OPS, Shape
    info = OPS[op]
    torch.manual_seed(0)
    sample = info.samples(Shape(**SHAPES[shape]), getattr(torch, dtype), device)[variant]
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in sample.args)
    # the truth: float64 reference on the same inputs
    leaves = [t.double().requires_grad_(True) for t in sample.tensors]
    with torch.enable_grad():
        ref_outs = _as_tuple(info.reference(*sample.with_tensors(leaves)))
    base = dict(op=op, variant=sample.label or "usual", dtype=dtype, shape=shape, sizes=SHAPES[shape])

    t0 = time.monotonic()
    with poisoned_allocations():
        outs = _as_tuple(info.forward(*args))
        again = _as_tuple(info.forward(*args))
    _sync(device)
    errs = [_rel_err(o, r) for o, r in zip(outs, ref_outs)]
    yield dict(base, passage="fwd", needs=None, **_verdict(outs, again, errs, FWD_RTOL[dtype]),
               seconds=round(time.monotonic() - t0, 2))

    n_diff = info.differentiable_outputs
    torch.manual_seed(1)
    cots = tuple(torch.randn_like(o) for o in outs[:n_diff])
    for needs in needs_variants(op):
        t0 = time.monotonic()
        bargs = (*info.make_backward_args(args, outs, cots), list(needs))
        with poisoned_allocations():
            grads = _as_tuple(info.backward(*bargs))
            grads2 = _as_tuple(info.backward(*bargs))
        _sync(device)
        wanted = [g for g, need in zip(grads, needs) if need]
        wanted2 = [g for g, need in zip(grads2, needs) if need]
        ref = torch.autograd.grad(ref_outs[:n_diff], [leaf for leaf, need in zip(leaves, needs) if need],
                                  [c.double() for c in cots], retain_graph=True)
        errs = [_rel_err(g, r) for g, r in zip(wanted, ref)]
        yield dict(base, passage="bwd", needs=list(needs), **_verdict(wanted, wanted2, errs, GRAD_RTOL[dtype]),
                   seconds=round(time.monotonic() - t0, 2))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _verdict(outs, again, errs, rtol) -> dict:
    nan = any(torch.isnan(o).any().item() for o in outs)
    same = _same_bits(outs, again)
    worst = max(errs) if errs else 0.0
    status = "nan" if nan else "nondeterministic" if not same else "ok" if worst <= rtol else "mismatch"
    return dict(status=status, rel_err=worst if worst != float("inf") else None, rtol=rtol, bitwise_repeat=same,
                nan=nan)


def worker(dtype: str, shape: str, ops, jsonl: Path, device: str = "cuda") -> int:
    """Run every case of one dtype and shape, a JSON line each in ``jsonl`` as it finishes."""
    with open(jsonl, "a", encoding="utf-8") as f:
        for op, v in order(ops):
            try:
                for rec in run_op(op, dtype, shape, device, v):
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
            except Exception as err:  # noqa: BLE001  (record it; the next op still runs)
                f.write(json.dumps(dict(op=op, variant=variants(op)[v], dtype=dtype, shape=shape, passage="error",
                                        needs=None, status="error", error=f"{type(err).__name__}: {err}"[:2000],
                                        traceback=traceback.format_exc()[-3000:])) + "\n")
                f.flush()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 0


def check(out: Path, ops=PSF_OPS, dtypes=DTYPES, shapes=DEFAULT_SHAPES, max_minutes: float = 3.5,
          log=print, device: str = "cuda") -> dict:
    """Run the workers (one per dtype and shape, at once), stop them at ``max_minutes``, write and
    return the report."""
    ops, skipped = available_ops(ops)
    planned = plan(ops, dtypes, shapes)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.parent / (out.stem + "-parts")
    parts.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" or device != "cuda"}
    procs = []
    t0 = time.monotonic()
    for dtype in dtypes:
        for shape in shapes:
            jsonl = parts / f"{dtype}-{shape}.jsonl"
            jsonl.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "bench.gpu_check", "--worker", dtype, shape, "--ops", ",".join(ops),
                   "--out", str(jsonl), "--device", device]
            procs.append((jsonl, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=open(parts / f"{dtype}-{shape}.err", "w"),
                                                  start_new_session=True)))
    deadline = t0 + 60 * max_minutes
    stopped = []
    for jsonl, proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            stopped.append(jsonl.stem)
    results = []
    for jsonl, _ in procs:
        if jsonl.exists():
            results += [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    done = {case_key(r) for r in results}
    not_reached = [c for c in planned if case_key(c) not in done]
    errored = {(r["op"], r["variant"], r["dtype"], r["shape"]) for r in results if r["status"] == "error"}
    not_reached = [c for c in not_reached if (c["op"], c["variant"], c["dtype"], c["shape"]) not in errored]
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else device,
              "seconds": round(time.monotonic() - t0, 1), "max_minutes": max_minutes,
              "skipped_ops": skipped, "workers_stopped_at_deadline": stopped,
              "summary": {**counts, "not_reached": len(not_reached), "planned": len(planned)},
              "results": results, "not_reached": not_reached}
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for r in results:
        needs = "" if r.get("needs") is None else "needs=" + "".join("1" if n else "0" for n in r["needs"])
        err = r.get("rel_err")
        log(f"{r['status']:16} {r['op']:18} {r['variant'][:20]:20} {r['dtype']:9} {r['shape']:7} {r['passage']:4} "
            f"{needs:10} "
            f"rel err {'-' if err is None else f'{err:.2e}'} (tol {r.get('rtol', '-')})"
            f"{'  ' + r['error'] if r.get('error') else ''}")
    for op, why in skipped.items():
        log(f"skipped          {op}: {why}")
    log(f"gpu-check: {report['summary']} in {report['seconds']} s -> {out}")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the report (JSON); a worker's JSON lines with --worker")
    p.add_argument("--ops", default=",".join(PSF_OPS))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES))
    p.add_argument("--max-minutes", type=float, default=3.5, help="stop the workers after this long")
    p.add_argument("--worker", nargs=2, metavar=("DTYPE", "SHAPE"), help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # (cpu: the plumbing's test)
    a = p.parse_args(argv)
    ops = [o for o in a.ops.split(",") if o]
    if a.worker:
        return worker(*a.worker, ops, a.out, a.device)
    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device", file=sys.stderr)
        return 2
    report = check(a.out, ops, a.dtypes.split(","), a.shapes.split(","), a.max_minutes)
    s = report["summary"]
    return 0 if s.get("ok", 0) == s["planned"] else 1


if __name__ == "__main__":
    sys.exit(main())
