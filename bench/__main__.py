"""``python -m bench``: run the benchmark suite, the headline check, or regenerate the report.

    python -m bench [--quick | --sweep small|full] [--ops psf_conv,...] [--dtypes float32,...]
                    [--impls ...] [--axes B,C,H,J,k] [--compile dynamic|static] [--out runs/bench]
                    [--publish] [--resume] [--max-minutes M] [--no-model] [--no-graphs]
    python -m bench headline [--dtypes float32,bfloat16] [--out DIR]   (on a GPU also DIR/kernels.json:
                    each psf kernel's measured time beside its static estimate, bench.kernel_times)
    python -m bench model [--quick] [--out DIR]        (the SD-PSFNet training step alone)
    python -m bench report [JSON or DIR ...] [--md OUT.md]
    python -m bench sm90 [--dtypes ...] [--ops ...] [--json OUT]   (compile every kernel for sm_90, no GPU)
    python -m bench sass [--dtypes ...] [--json OUT]   (psf kernels' SASS and a static time estimate)
    python -m bench cpu [--out DIR] [--shapes 0,1] [--impls ...]   (psf_conv CPU path vs peers and deepinv)
    python -m bench cpu-fit [--shapes 0,1] [--json OUT]   (the CPU cost constants; each algorithm forced)
    python -m bench gpu-suite --out DIR [--archive FILE.tar.gz] [--dry-run]   (the GPU run book, <= 9 min)
    python -m bench gpu-check --out FILE.json [--dtypes ...] [--max-minutes M]   (psf kernels vs reference, on a GPU)

Results go to ``<out>/<device>-<date>.json`` (merged into an existing file of that name, so the
suite can run in pieces), then ``<out>/RESULTS.md`` and ``<out>/plots/*.png`` are regenerated from
every results file in ``<out>``. ``<out>`` is ``runs/bench`` under the current directory unless
given: a run never touches the checked-in ``bench/results/`` and ``bench/RESULTS.md`` unless asked
with ``--publish`` (which writes there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sdpsfnet.files import atomic_write

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


DEFAULT_OUT = Path("runs") / "bench"  # relative to the current directory; not tracked


def results_path(out: Path, device: torch.device, env: dict) -> Path:
    return out / f"{harness.device_slug(device)}-{env['date']}.json"


def output_paths(out: Path | None, md: Path | None, publish: bool) -> tuple[Path, Path]:
    """(results folder, report file): ``--publish`` -> the checked-in bench/results and
    bench/RESULTS.md; else ``out`` (default :data:`DEFAULT_OUT`) and ``md`` (default
    ``<out>/RESULTS.md``)."""
    if publish:
        if out is not None or md is not None:
            raise SystemExit("--publish writes to bench/results and bench/RESULTS.md: drop --out/--md")
        return report.RESULTS_DIR, report.RESULTS_MD
    out = DEFAULT_OUT if out is None else out
    return out, (out / "RESULTS.md" if md is None else md)


def _quick_cpu_skip(case: C.Case, impl: str) -> str | None:
    if impl == "compile" and case.op not in C.QUICK_CPU_COMPILE_OPS:
        return (f"--quick on CPU compiles only {', '.join(C.QUICK_CPU_COMPILE_OPS)} "
                "(CPU compile time); run without --quick for the rest")
    return None


def main_run(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run the psfops benchmark suite.")
    p.add_argument("--quick", action="store_true", help="small shapes, float32, CPU-friendly smoke subset")
    p.add_argument("--sweep", choices=C.SWEEPS, default="full",
                   help="full: every axis value of bench/cases.py's SWEEP; small: sizes 64..256 only")
    p.add_argument("--ops", type=_csv(C.OPS), default=list(C.OPS))
    p.add_argument("--dtypes", type=_csv(C.DTYPES), default=None,
                   help="default: all three (float32 only with --quick)")
    p.add_argument("--impls", type=_csv(C.IMPLS), default=list(C.IMPLS))
    p.add_argument("--passes", type=_csv(C.PASSES), default=list(C.PASSES))
    p.add_argument("--axes", type=_csv(C.AXES), default=list(C.AXES), help="which axes to sweep")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--md", type=Path, default=None, help="report file (default <out>/RESULTS.md)")
    p.add_argument("--publish", action="store_true",
                   help="write into the checked-in bench/results and bench/RESULTS.md instead")
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
    p.add_argument("--no-graphs", action="store_true", help="no CUDA-graph timings")
    a = p.parse_args(argv)
    out, md = output_paths(a.out, a.md, a.publish)

    t0 = time.monotonic()
    deadline = None if a.max_minutes is None else t0 + 60 * a.max_minutes
    device = _device(a.device)
    dtypes = a.dtypes or (["float32"] if a.quick else list(C.DTYPES))
    threads = a.threads or (1 if a.quick and device.type == "cpu" else None)
    if threads:  # one thread: far steadier CPU medians on a shared machine
        torch.set_num_threads(threads)
    env = harness.environment(device)
    path = results_path(out, device, env)
    roof = harness.copy_bandwidth_gbps(device)
    print(f"device {env['device']}; torch {env['torch']}, triton {env['triton']}; "
          f"copy roofline {roof:.1f} GB/s; results -> {path}")
    done = set()
    if a.resume and path.exists():
        done = {harness.record_key(r) for r in report.load([path])[str(path)] if r["status"] != "error"}
    case_list = C.sweep_cases(a.ops, dtypes, a.axes, quick=a.quick, sweep=a.sweep)
    # CPU: short timing windows (the quick suite must stay under 2 minutes)
    timing = None if device.type == "cuda" else dict(warmup_ms=20.0, rep_ms=60.0, min_reps=3)
    skip = _quick_cpu_skip if a.quick and device.type == "cpu" else None
    harness.run_cases(case_list, device, a.impls, a.passes, env=env, roofline_gbps=roof, done=done,
                      deadline=deadline, on_record=lambda r: report.save([r], path), timing=timing,
                      skip=skip, compile_dynamic=a.compile == "dynamic", graphs=not a.no_graphs)
    if not a.no_model and (deadline is None or time.monotonic() < deadline):
        backends = [b for b in ("triton", "reference") if b != "triton" or "triton" in a.impls]
        recs = model_step.run(device, env, roof, a.quick, backends, timing=timing)
        report.save(recs, path)
    if not a.no_report and path.exists():
        print(f"report -> {report.write_report(sorted(out.glob('*.json')), md, out / 'plots')}")
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0


def main_headline(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench headline",
                                description="psf_conv and psf_conv_transpose fwd+bwd B8 C64 128x128 J40 k7: targets vs measured.")
    p.add_argument("--dtypes", type=_csv(C.DTYPES), default=list(headline.DTYPES))
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="also merge the records into today's results file here")
    a = p.parse_args(argv)
    device = _device(a.device)
    path = None if a.out is None else results_path(a.out, device, harness.environment(device))
    headline.run(device, a.dtypes, on_record=None if path is None else lambda r: report.save([r], path))
    if path is not None:
        print(f"records -> {path}")
    if device.type != "cuda":
        return 0
    from . import kernel_times  # per-kernel device times beside the static estimate
    kernels = kernel_times.run(device, a.dtypes)
    if a.out is not None:  # a JSON object, not a results list: `bench report DIR` leaves it out
        with atomic_write(a.out / "kernels.json") as f:
            f.write((json.dumps({"kernels": kernels}, indent=1) + "\n").encode())
        print(f"kernel times -> {a.out / 'kernels.json'}")
    return 0


def main_report(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report",
                                description="Regenerate RESULTS.md and plots from results files.")
    p.add_argument("json", nargs="*", type=Path,
                   help="results files, or folders of them (the gpu-suite's DIR: its env, check and suite "
                        "files are left out); default: every bench/results/*.json (then --publish is implied)")
    p.add_argument("--md", type=Path, default=None,
                   help="default: RESULTS.md beside the first JSON file; bench/RESULTS.md without JSON files")
    p.add_argument("--plots", type=Path, default=None, help="default: <first json's folder>/plots")
    a = p.parse_args(argv)
    first = a.json[0] if a.json else None
    md = a.md or (report.RESULTS_MD if first is None else (first if first.is_dir() else first.parent) / "RESULTS.md")
    print(f"report -> {report.write_report(a.json or None, md, a.plots)}")
    return 0


def main_model(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench model",
                                description="One SD-PSFNet training step, Triton ops vs reference ops.")
    p.add_argument("--quick", action="store_true", help="the tiny model at 32x32 (CPU smoke size)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    device = _device(a.device)
    env = harness.environment(device)
    timing = None if device.type == "cuda" else dict(warmup_ms=20.0, rep_ms=60.0, min_reps=3)
    recs = model_step.run(device, env, harness.copy_bandwidth_gbps(device), a.quick, timing=timing)
    path = results_path(a.out, device, env)
    report.save(recs, path)
    print(f"records -> {path}")
    return 0 if all(r["status"] != "error" for r in recs) else 1


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
    if argv and argv[0] == "cpu":
        from . import cpu
        return cpu.main(argv[1:])
    if argv and argv[0] == "cpu-fit":
        from . import cpu_fit
        return cpu_fit.main(argv[1:])
    if argv and argv[0] == "model":
        return main_model(argv[1:])
    if argv and argv[0] == "gpu-check":
        from . import gpu_check
        return gpu_check.main(argv[1:])
    if argv and argv[0] == "gpu-suite":
        from . import gpu_suite
        return gpu_suite.main(argv[1:])
    return main_run(argv)


if __name__ == "__main__":
    sys.exit(main())
