"""``python -m bench cpu``: psf_conv on CPU tensors, side by side in one run: the CPU path
(``psfops.cpu``), the reference (unfold form), the conv-stack form
(``psfops.reference.psf_conv_convstack``) and deepinv's ``SpaceVaryingBlur`` (direct and FFT;
skipped with the reason when deepinv does not import), forward and fwd+bwd, float32.

    python -m bench cpu [--out runs/bench] [--shapes 0,1,...] [--impls cpu,reference,...] [--reps 5]

Method. Each (shape, implementation) runs in a fresh subprocess (glibc's default allocator: its
heap slack counts, as it would for a user). Per pass it makes the
inputs (and the cotangent), runs one warm-up call, ``malloc_trim``s, resets the resident-set
high-water mark (``/proc/self/clear_refs`` 5), reads VmRSS, runs the call once more and reads
VmHWM: **peak extra memory = VmHWM - VmRSS before the call**: everything the call made resident
(outputs, gradients, saved tensors, oneDNN/FFT scratch). ``io`` is the bytes of the call's inputs
and outputs (gradients included for fwd+bwd); the memory target is extra <= 2 x io. Time: the
median of at least 3 calls (the measured call and more, at most ``--reps``; one where a call takes
over :data:`SLOW_MS`), wall clock, torch's threads or ``--threads``.
deepinv is compared on the same math: ``SpaceVaryingBlur(mask_first=False, padding="constant")``
with filters ``basis.flip(-1, -2)`` (deepinv convolves; psf_conv correlates), checked against the
CPU path (``rel_err``) in the same subprocess after the measurements.
The reference is skipped (with the reason) where its estimated peak passes :data:`REF_LIMIT_GB`.

deepinv next to a CPU torch (what worked with torch 2.13.0+cpu; no CUDA torch is pulled in):

    pip install --no-deps deepinv==0.5.0 "torchvision==0.28.*" einops natsort tqdm h5py torchmetrics lightning-utilities

(numpy, scipy, pillow, matplotlib, requests were already there). The PyPI torchvision wheel is a
CUDA build: its C ops do not load, and :func:`_import_deepinv` defines the two ops its import needs.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [  # (B, C, H, W, J, k)
    (1, 3, 256, 256, 8, 15),
    (1, 1, 512, 512, 16, 31),
    (4, 3, 128, 128, 40, 7),
    (8, 40, 128, 128, 40, 7),
    (1, 40, 512, 512, 40, 7),
]
IMPLS = ("cpu", "reference", "convstack", "deepinv", "deepinv_fft")
PASSES = ("fwd", "fwd+bwd")
REF_LIMIT_GB = 6.0  # the machine is shared: the reference's unfold runs only below this estimate
MB = 2.0 ** 20
SLOW_MS = 8000.0  # a call slower than this is timed once (after its warm-up): the machine is shared


# ---- worker (one subprocess per shape and implementation) --------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak_rss() -> int:
    """``malloc_trim``, reset the resident-set high-water mark (``/proc/self/clear_refs`` 5) and
    return VmRSS now (kB): :func:`peak_extra_kb` of it after a call is what the call made resident."""
    _trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def peak_extra_kb(before: int) -> int:
    """VmHWM (kB) over ``before``, a :func:`reset_peak_rss` reading."""
    return _status_kb("VmHWM") - before


def _import_deepinv():
    """deepinv imports torchvision; the PyPI torchvision wheel is a CUDA build whose C ops cannot
    load next to a CPU torch, and its ``_meta_registrations`` then fails on ``torchvision::nms`` and
    ``qnms``: define those two (never called here) so the pure-Python parts import."""
    import torch
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in list(sys.modules):
            if name.startswith("torchvision"):
                del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_deepinv.lib = lib  # keep the definitions alive
    from deepinv.physics import SpaceVaryingBlur
    return SpaceVaryingBlur


def _ref_estimate_gb(shape, pass_) -> float:
    B, C, H, W, J, k = shape
    unfold = B * C * k * k * H * W * 4
    return unfold * (2 if pass_ == "fwd" else 4) / 2 ** 30


def _make(impl, shape):
    import psfops
    from psfops import cpu
    B, C, H, W, J, k = shape
    if impl == "cpu":
        return lambda x, w, b: cpu.psf_conv(x, w, b)
    if impl == "reference":
        return lambda x, w, b: psfops.reference.psf_conv.unchecked(x, w, b, 1)
    if impl == "convstack":
        return lambda x, w, b: psfops.reference.psf_conv_convstack.unchecked(x, w, b, 1)
    SVB = _import_deepinv()
    phys = SVB(padding="constant", use_fft=impl == "deepinv_fft", mask_first=False)

    def run(x, w, b):
        return phys.A(x, filters=b.flip(-1, -2).view(1, 1, J, k, k), multipliers=w.view(B, 1, J, H, W))
    return run


def _inputs(shape, grad: bool):
    """Seeded x, weights, basis (leaves that require grad for fwd+bwd), dy (fwd+bwd) and the bytes of
    the call's inputs and outputs (and gradients)."""
    import torch
    B, C, H, W, J, k = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).requires_grad_(grad)
    w = torch.randn(B, J, H, W, generator=g).requires_grad_(grad)
    b = torch.randn(J, k, k, generator=g).requires_grad_(grad)
    dy = torch.randn(B, C, H, W, generator=g) if grad else None
    io = (2 * x.numel() + w.numel() + b.numel()) * 4 * (2 if grad else 1)  # + y (+ dy, grads)
    return (x, w, b), dy, io


def _timed(fn, inputs, dy, reps: int) -> dict:
    """Median ms of ``fn`` (forward, or forward+backward with ``dy``) after a warm-up call, the first
    timed call's peak extra memory (KB), and the number of timed calls: at least 3 unless the first
    takes over SLOW_MS, at most ``reps`` within about 3 s."""
    import torch

    def step():
        if dy is not None:
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(dy)
            return None
        with torch.no_grad():
            return fn(*inputs)

    step()  # warm-up (libraries, oneDNN primitives, FFT plans)
    for t in inputs:
        t.grad = None
    before = reset_peak_rss()
    t0 = time.perf_counter()
    out = step()
    times = [(time.perf_counter() - t0) * 1e3]  # the measured call is the first sample
    peak = peak_extra_kb(before)
    del out
    t_start = time.perf_counter()
    while (len(times) < 3 and times[0] < SLOW_MS) or (len(times) < reps and time.perf_counter() - t_start < 3.0):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(ms=statistics.median(times), samples=len(times), peak_kb=peak)


def _errors_vs_cpu(fn, inputs, dy, impl: str) -> dict:
    """Relative errors of ``fn``'s output (and, for fwd+bwd, its gradients, left in ``.grad`` by the
    timed calls) against the CPU path's."""
    import torch
    from psfops import cpu
    plain = [t.detach() for t in inputs]
    errs = {}
    with torch.no_grad():
        y, yt = fn(*plain), cpu.psf_conv(*plain)
        errs["rel_err_vs_cpu"] = ((y - yt).norm() / yt.norm()).item()
    if dy is not None and impl != "cpu":
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        truth = torch.autograd.grad(cpu.psf_conv(*leaves), leaves, dy)
        errs["grad_rel_err_vs_cpu"] = max(((t.grad - c).norm() / c.norm()).item() for t, c in zip(inputs, truth))
    return errs


def worker(shape, impl, reps: int, threads: int | None) -> list[dict]:
    """Records of one implementation on one shape, each pass: time, peak memory, errors vs the CPU path."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from psfops import cpu
    recs = []
    for pass_ in PASSES:
        rec = dict(shape=list(shape), impl=impl, pass_=pass_)
        recs.append(rec)
        if impl == "reference" and _ref_estimate_gb(shape, pass_) > REF_LIMIT_GB:
            rec.update(status="skipped", reason=f"reference would need ~{_ref_estimate_gb(shape, pass_):.1f} GB "
                                                 f"(> {REF_LIMIT_GB} GB on a shared machine)")
            continue
        try:
            fn = _make(impl, shape)
        except Exception as e:  # deepinv missing or broken
            rec.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            continue
        inputs, dy, io = _inputs(shape, pass_ == "fwd+bwd")
        t = _timed(fn, inputs, dy, reps)
        rec.update(status="ok", ms=t["ms"], samples=t["samples"], peak_extra_mb=t["peak_kb"] * 1024 / MB,
                   io_mb=io / MB, peak_over_io=t["peak_kb"] * 1024 / io, **_errors_vs_cpu(fn, inputs, dy, impl))
        if impl == "cpu":
            rec["algorithms"] = {t: cpu.choose(t, *shape) for t in ("forward", "adjoint", "wgrad")}
    return recs


# ---- driver -------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _fmt(r) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return "skip"
    return f"{r['ms']:.1f}" + ("*" if r.get("samples", 3) < 3 else "")


def markdown(doc: dict) -> str:
    recs = doc["records"]
    by = {(tuple(r["shape"]), r["impl"], r["pass_"]): r for r in recs}
    impls = [i for i in IMPLS if any(r["impl"] == i for r in recs)]
    lines = [f"# CPU psf_conv benchmark ({doc['date']})", "",
             f"CPU: {doc['cpu']} ({doc['cores']} cores, torch threads {doc['threads']}); load average "
             f"{doc['load_before'][0]:.2f} before, {doc['load_after'][0]:.2f} after (1-min); torch {doc['torch']}, "
             f"deepinv {doc['deepinv']}. float32, median ms (lower is better); memory = peak extra RSS "
             "(VmHWM - VmRSS before the call) / bytes of inputs+outputs(+grads). * = one timed call "
             f"(slower than {SLOW_MS / 1e3:.0f} s).", ""] + ([doc["note"], ""] if doc.get("note") else [])
    for pass_ in PASSES:
        lines += [f"## {pass_}", "",
                  "| B C H W J k | " + " | ".join(f"{i} ms" for i in impls) + " | cpu vs best peer | cpu mem MB (x io) | peers' mem MB |",
                  "|---|" + "---|" * (len(impls) + 3)]
        for s in doc["shapes"]:
            s = tuple(s)
            rs = {i: by.get((s, i, pass_)) for i in impls}
            peers = [r["ms"] for i, r in rs.items() if i in ("convstack", "deepinv", "deepinv_fft") and r and r["status"] == "ok"]
            c = rs.get("cpu")
            speed = f"{min(peers) / c['ms']:.2f}x" if peers and c and c["status"] == "ok" else "-"
            mem = f"{c['peak_extra_mb']:.0f} ({c['peak_over_io']:.2f})" if c and c["status"] == "ok" else "-"
            pm = ", ".join(f"{i} {r['peak_extra_mb']:.0f}" for i, r in rs.items() if i != "cpu" and r and r["status"] == "ok")
            lines.append(f"| {' '.join(map(str, s))} | " + " | ".join(_fmt(rs[i]) for i in impls)
                         + f" | {speed} | {mem} | {pm} |")
        lines.append("")
    skips = sorted({f"{r['impl']} {r['pass_']} {tuple(r['shape'])}: {r['reason']}" for r in recs if r["status"] != "ok"})
    if skips:
        lines += ["Skipped:", ""] + [f"- {s}" for s in skips] + [""]
    errs = [f"{r['impl']} {r['pass_']} {tuple(r['shape'])}: out {r.get('rel_err_vs_cpu', 0):.1e}"
            + (f", grads {r['grad_rel_err_vs_cpu']:.1e}" if "grad_rel_err_vs_cpu" in r else "")
            for r in recs if r["status"] == "ok" and r["impl"] != "cpu"]
    lines += ["Relative error vs the CPU path: " + "; ".join(errs), ""]
    algos = [f"{tuple(r['shape'])}: {r['algorithms']}" for r in recs if r["impl"] == "cpu" and r["pass_"] == "fwd" and "algorithms" in r]
    lines += ["CPU path algorithms (cost model): " + "; ".join(algos), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs") / "bench")
    p.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))),
                   help="indices into SHAPES: " + "; ".join(f"{i}: {s}" for i, s in enumerate(SHAPES)))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--reps", type=int, default=7, help="at most this many timed calls (at least 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in every worker (default: torch's; the CPU path itself "
                        "uses psfops.cpu.INTRAOP_THREADS)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        print("RESULT " + json.dumps(worker(tuple(spec["shape"]), spec["impl"], spec["reps"], spec["threads"])))
        return 0
    import torch
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")]
    impls = [i for i in a.impls.split(",") if i]
    try:
        import importlib.metadata as md
        dv = md.version("deepinv")
    except Exception:
        dv = None
    doc = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), cpu=_cpu_model(),
               cores=os.cpu_count(), threads=a.threads or torch.get_num_threads(), torch=torch.__version__, deepinv=dv,
               load_before=os.getloadavg(), shapes=[list(s) for s in shapes], records=[],
               method=__doc__.split("Method. ", 1)[1].strip())
    env = dict(os.environ)
    t0 = time.monotonic()
    for s in shapes:
        for impl in impls:
            spec = json.dumps(dict(shape=list(s), impl=impl, reps=a.reps, threads=a.threads))
            proc = subprocess.run([sys.executable, "-m", "bench.cpu", "--worker", spec], capture_output=True,
                                  text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                recs = [dict(shape=list(s), impl=impl, pass_=ps, status="error", reason=tail[0][:300]) for ps in PASSES]
            else:
                recs = json.loads(line[0][7:])
            doc["records"] += recs
            _save(a.out, doc)  # after every case: an interrupted run keeps what it measured
            for r in recs:
                print(f"{s} {impl:12s} {r['pass_']:8s} " + (f"{r['ms']:9.1f} ms  peak +{r['peak_extra_mb']:.0f} MB "
                      f"({r['peak_over_io']:.2f} x io)" if r["status"] == "ok" else f"{r['status']}: {r.get('reason')}"),
                      flush=True)
            doc["seconds"] = time.monotonic() - t0
    stem = _save(a.out, doc)
    print(f"results -> {stem.with_suffix('.json')}, {stem.with_suffix('.md')}")
    return 0


def _save(out: Path, doc: dict) -> Path:
    doc["load_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-psf-{doc['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    stem.with_suffix(".md").write_text(markdown(doc))
    return stem


if __name__ == "__main__":
    sys.exit(main())
