"""Per-kernel device times of the psf ops on a GPU, beside their static estimate.

At the headline shape (B8 C64 128x128 J40 k7), psf_conv's and apply_psf's forward+backward run
under ``torch.profiler``; each psf kernel's device time per call (summed over its launches in
one call, averaged over the calls) is set beside the honest estimate of the same launch from
``python -m bench sass`` (``results/static/sass-*.json`` of the running triton's version, H100
constants; an H200 has the same SMs, clocks and L2), with the ratio measured / estimate and the
estimate's binding roof. This is what checks the estimate, kernel by kernel (the model's
constants, its occupancy factor above all, come from public figures, not from this code on a
GPU). The headline step of the run book writes it (``kernels.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import cases as C
from .sass import STATIC_DIR
from .sass_model import ROOFS

OPS = ("psf_conv", "apply_psf")
DTYPES = ("float32", "bfloat16")
CALLS = 20  # profiled forward+backward calls per op and dtype (0.18-0.25 ms each at the headline by the static estimate)
KERNEL_PREFIXES = ("_psf_", "_synthesize_")


def per_call(averages, calls: int) -> dict[str, dict]:
    """psf kernel name -> {"us": device time per call, "launches": per call}, from the profiler's
    key averages (``key``, ``count`` and the total device time in us of each kernel name)."""
    out = {}
    for e in averages:
        if e.key.startswith(KERNEL_PREFIXES):
            total = getattr(e, "device_time_total", None)
            total = e.cuda_time_total if total is None else total  # (older torch)
            out[e.key] = {"us": total / calls, "launches": e.count / calls}
    return out


def static_estimates(op: str, dtype: str, triton_version: str, psfops_version: str,
                     static_dir: Path = STATIC_DIR) -> dict[str, dict]:
    """kernel name -> {"estimate_us", "binding"} of ``op``'s forward and backward launches at the
    headline in the static records of these triton and psfops versions (H100); empty when there
    are none."""
    out = {}
    want = (op, dtype, triton_version, psfops_version, "H100")
    for path in sorted(static_dir.glob("sass-*.json")):
        for r in json.loads(path.read_text()):
            if (r["op"], r["dtype"], r["triton"], r["psfops"], r["gpu"]) == want and r["pass"] in ("fwd", "bwd"):
                for k in r["kernels"]:
                    out[k["kernel"]] = {"estimate_us": max(k[f"{roof}_us"] for roof in ROOFS), "binding": k["binding"]}
    return out


def compare(measured: dict[str, dict], estimates: dict[str, dict], **fields) -> list[dict]:
    """One record per measured kernel: ``fields``, its time and launches, and where the static
    records have it, the estimate, its binding roof and measured / estimate."""
    recs = []
    for kernel, m in sorted(measured.items()):
        rec = {**fields, "kernel": kernel, "measured_us": m["us"], "launches": m["launches"]}
        est = estimates.get(kernel)
        if est:
            rec.update(estimate_us=est["estimate_us"], binding=est["binding"],
                       measured_over_estimate=m["us"] / est["estimate_us"])
        recs.append(rec)
    return recs


def profile(fn, calls: int = CALLS) -> dict[str, dict]:
    """:func:`per_call` of ``calls`` calls of ``fn`` (after one unprofiled call: compiled, warm)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return per_call(prof.key_averages(), calls)


def run(device: torch.device, dtypes=DTYPES, log=print) -> list[dict]:
    """The records of every op and dtype at the headline (see the module docstring), logged as a table."""
    import triton

    import psfops
    shape = {k: v for k, v in C.HEADLINE.items() if k != "op"}
    recs = []
    for op in OPS:
        for dtype in dtypes:
            case = C.Case(op=op, dtype=dtype, **shape)
            spec = C.OPS[op]
            args = spec.make_inputs(case, device, requires_grad=True)
            out = spec.info.function(*args)
            dy = torch.randn_like(out)
            leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

            def step():
                torch.autograd.grad(spec.info.function(*args), leaves, dy)

            recs += compare(profile(step), static_estimates(op, dtype, triton.__version__, psfops.__version__),
                            op=op, dtype=dtype, label=case.label(), device=torch.cuda.get_device_name(device),
                            triton=triton.__version__)
    log(f"{'op':<10} {'dtype':<9} {'kernel':<24} {'measured us':>11} {'estimate us':>11} {'ratio':>6}  binding")
    for r in recs:
        est = f"{r['estimate_us']:11.1f} {r['measured_over_estimate']:6.2f}  {r['binding']}" if "estimate_us" in r else \
            f"{'-':>11} {'-':>6}"
        log(f"{r['op']:<10} {r['dtype']:<9} {r['kernel']:<24} {r['measured_us']:11.1f} {est}")
    return recs
