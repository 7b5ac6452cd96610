"""``python -m bench``: run the benchmark suite, the headline check, or regenerate the report.

    python -m bench [--quick] [--ops psf_conv,...] [--dtypes float32,...] [--impls ...]
                    [--axes B,C,H,J,k] [--compile dynamic|static] [--out bench/results]
                    [--resume] [--max-minutes M] [--no-model]
    python -m bench headline [--dtypes float32,bfloat16] [--out bench/results]
    python -m bench report [JSON ...] [--md bench/RESULTS.md]
    python -m bench sm90 [--dtypes ...] [--json OUT]   (compile every kernel for sm_90, no GPU needed)
    python -m bench sass [--dtypes ...] [--json OUT]   (psf kernels' SASS and a static time estimate)

Results go to ``<out>/<device>-<date>.json`` (merged into an existing file of that name, so the
suite can run in pieces), then ``bench/RESULTS.md`` and ``<out>/plots/*.png`` are regenerated from
every results file in ``<out>``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import cases as C
from . import harness, headline, model_step, report


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return items
    return parse


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def results_path(out: Path, device: torch.device, env: dict) -> Path:
    return out / f"{harness.device_slug(device)}-{env['date']}.json"


def _quick_cpu_skip(case: C.Case, impl: str) -> str | None:
    if impl == "compile" and case.op not in C.QUICK_CPU_COMPILE_OPS:
        return (f"--quick on CPU compiles only {', '.join(C.QUICK_CPU_COMPILE_OPS)} "
                "(CPU compile time); run without --quick for the rest")
    return None


def main_run(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run the psfops benchmark suite.")
    p.add_argument("--quick", action="store_true", help="small shapes, float32, CPU-friendly smoke subset")
    p.add_argument("--ops", type=_csv(C.OPS), default=list(C.OPS))
    p.add_argument("--dtypes", type=_csv(C.DTYPES), default=None,
                   help="default: all three (float32 only with --quick)")
    p.add_argument("--impls", type=_csv(C.IMPLS), default=list(C.IMPLS))
    p.add_argument("--passes", type=_csv(C.PASSES), default=list(C.PASSES))
    p.add_argument("--axes", type=_csv(C.AXES), default=list(C.AXES), help="which axes to sweep")
    p.add_argument("--out", type=Path, default=report.RESULTS_DIR)
    p.add_argument("--md", type=Path, default=report.RESULTS_MD)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--resume", action="store_true", help="skip cases already in today's results file")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this long")
    p.add_argument("--compile", choices=("dynamic", "static"), default="dynamic",
                   help="torch.compile mode of the reference: dynamic (default: one graph per "
                        "op/dtype/pass for all shapes) or static (one graph per shape: slower to run)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 with --quick on CPU, else torch's default)")
    p.add_argument("--no-model", action="store_true", help="skip the SD-PSFNet training step")
    p.add_argument("--no-report", action="store_true", help="do not regenerate RESULTS.md")
    a = p.parse_args(argv)

    t0 = time.monotonic()
    deadline = None if a.max_minutes is None else t0 + 60 * a.max_minutes
    device = _device(a.device)
    dtypes = a.dtypes or (["float32"] if a.quick else list(C.DTYPES))
    threads = a.threads or (1 if a.quick and device.type == "cpu" else None)
    if threads:  # one thread: far steadier CPU medians on a shared machine
        torch.set_num_threads(threads)
    env = harness.environment(device)
    path = results_path(a.out, device, env)
    roof = harness.copy_bandwidth_gbps(device)
    print(f"device {env['device']}; torch {env['torch']}, triton {env['triton']}; "
          f"copy roofline {roof:.1f} GB/s; results -> {path}")
    done = set()
    if a.resume and path.exists():
        done = {harness.record_key(r) for r in report.load([path])[str(path)] if r["status"] != "error"}
    case_list = C.sweep_cases(a.ops, dtypes, a.axes, quick=a.quick)
    # CPU: short timing windows (the quick suite must stay under 2 minutes)
    timing = None if device.type == "cuda" else dict(warmup_ms=20.0, rep_ms=60.0, min_reps=3)
    skip = _quick_cpu_skip if a.quick and device.type == "cpu" else None
    harness.run_cases(case_list, device, a.impls, a.passes, env=env, roofline_gbps=roof, done=done,
                      deadline=deadline, on_record=lambda r: report.save([r], path), timing=timing,
                      skip=skip, compile_dynamic=a.compile == "dynamic")
    if not a.no_model and (deadline is None or time.monotonic() < deadline):
        backends = [b for b in ("triton", "reference") if b != "triton" or "triton" in a.impls]
        recs = model_step.run(device, env, roof, a.quick, backends, timing=timing)
        report.save(recs, path)
    if not a.no_report and path.exists():
        md = report.write_report(sorted(a.out.glob("*.json")), a.md, a.out / "plots")
        print(f"report -> {md}")
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0


def main_headline(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench headline",
                                description="psf_conv fwd+bwd B8 C64 128x128 J40 k7: targets vs measured.")
    p.add_argument("--dtypes", type=_csv(C.DTYPES), default=list(headline.DTYPES))
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="also merge the records into today's results file here")
    a = p.parse_args(argv)
    device = _device(a.device)
    recs = headline.run(device, a.dtypes)
    if a.out is not None:
        path = results_path(a.out, device, harness.environment(device))
        report.save(recs, path)
        print(f"records -> {path}")
    return 0


def main_report(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report",
                                description="Regenerate RESULTS.md and plots from results files.")
    p.add_argument("json", nargs="*", type=Path, help="default: every bench/results/*.json")
    p.add_argument("--md", type=Path, default=report.RESULTS_MD)
    p.add_argument("--plots", type=Path, default=None, help="default: <first json's folder>/plots")
    a = p.parse_args(argv)
    md = report.write_report(a.json or None, a.md, a.plots)
    print(f"report -> {md}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return main_report(argv[1:])
    if argv and argv[0] == "headline":
        return main_headline(argv[1:])
    if argv and argv[0] == "sm90":
        from . import sm90
        return sm90.main(argv[1:])
    if argv and argv[0] == "sass":
        from . import sass
        return sass.main(argv[1:])
    return main_run(argv)


if __name__ == "__main__":
    sys.exit(main())
