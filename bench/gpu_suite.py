"""The GPU run book in one command: ``python -m bench gpu-suite --out DIR``.

On a fresh CUDA machine with torch and triton already installed, from the root of a clone
(nothing is installed: ``import psfops`` there finds the clone's ``kernels/``), in this order, each
step in its own process under its own time box (a step that fails or runs over is recorded and
the next one starts):

    env       the environment record: GPU, driver, CUDA, torch, triton, SMs, L2  -> env.json
    tests     ``pytest -m gpu``                                                    -> pytest-gpu.xml
    headline  ``python -m bench headline``: psf_conv fwd+bwd targets             -> <device>-<date>.json
    sweep     ``python -m bench --sweep small`` (or full; stops cleanly in its box) -> the same JSON
    model     ``python -m bench model``: SD-PSFNet training step, Triton vs reference ops
    sass      ``python -m bench sass --json`` (the static SASS estimate), if bench/sass.py exists
    report    RESULTS.md and plots/ from the JSON records

Everything lands under DIR: ``suite.json`` (each step's command, status, exit code and seconds,
rewritten after every step), ``gpu-suite.log`` (all output), ``logs/<step>.log``, ``env.json``,
the records, ``RESULTS.md``, ``plots/``. The default time boxes add up to under 20 minutes.
``--steps`` runs a subset (e.g. two calls of under 10 minutes each; records merge in DIR), and
``--dry-run`` prints the plan without running or writing anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    name: str
    minutes: float  # the time box
    what: str


STEPS = (
    Step("env", 0.5, "environment record"),
    Step("tests", 4.0, "pytest -m gpu"),
    Step("headline", 4.0, "psf_conv fwd+bwd headline targets"),
    Step("sweep", 4.5, "benchmark sweep"),
    Step("model", 2.0, "SD-PSFNet training step, Triton vs reference ops"),
    Step("sass", 1.5, "static SASS estimate"),
    Step("report", 1.0, "RESULTS.md fragment and plots"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def command(step: str, out: Path, sweep: str, minutes: float) -> list[str] | None:
    """The step's command line (None: run in this process, or nothing to run)."""
    py = sys.executable
    if step == "tests":
        return [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                f"--junitxml={out / 'pytest-gpu.xml'}"]
    if step == "headline":
        return [py, "-m", "bench", "headline", "--out", str(out)]
    if step == "sweep":
        # stop starting cases a little before the box closes, so the records are saved
        return [py, "-m", "bench", "--sweep", sweep, "--out", str(out), "--resume", "--no-model",
                "--no-report", "--max-minutes", f"{max(minutes - 0.75, 0.5):g}"]
    if step == "model":
        return [py, "-m", "bench", "model", "--out", str(out)]
    if step == "sass":
        return [py, "-m", "bench", "sass", "--json", str(out / "sass.json")]
    if step == "report":
        return [py, "-m", "bench", "report", *sorted(str(p) for p in results_files(out)),
                "--md", str(out / "RESULTS.md"), "--plots", str(out / "plots")]
    return None


def results_files(out: Path) -> list[Path]:
    """The benchmark record files in ``out`` (not the suite's own JSON files)."""
    own = {"suite.json", "env.json", "sass.json"}
    return [p for p in out.glob("*.json") if p.name not in own]


def skip_reason(step: str, out: Path, sweep: str) -> str | None:
    if step == "sweep" and sweep == "none":
        return "--sweep none"
    if step == "sass" and not (REPO / "bench" / "sass.py").exists():
        return "bench/sass.py is not on this branch: no static SASS estimate to record"
    if step == "report" and not results_files(out):
        return "no benchmark records in the output folder"
    return None


def environment() -> dict:
    """GPU, driver, CUDA, torch, triton and Python versions, SM count and L2 size."""
    import torch

    rec = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    try:
        import triton
        rec["triton"] = triton.__version__
    except ImportError:
        rec["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rec.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2 ** 30, 1),
                   l2_mib=round(getattr(props, "L2_cache_size", 0) / 2 ** 20, 1))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                              "clocks.max.mem,power.limit,persistence_mode", "--format=csv"],
                             capture_output=True, text=True, timeout=30)
        rec["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        rec["nvidia_smi"] = f"not available: {err}"
    return rec


def run_boxed(cmd: list[str], minutes: float, log) -> tuple[str, int | None]:
    """Run ``cmd`` in its own process group from the repository root, its output to ``log``;
    kill the group when the box closes. (status, exit code)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    deadline = time.monotonic() + 60 * minutes

    def pump():
        for line in proc.stdout:
            log(line.rstrip("\n"))
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        return "timeout", None
    reader.join(5)
    return ("ok" if rc == 0 else "failed"), rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu-suite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, required=True, help="folder for everything the suite writes")
    p.add_argument("--sweep", choices=("small", "full", "none"), default="small",
                   help="sweep size (full takes hours: give it --steps sweep and a larger box, "
                        "repeatedly; it resumes)")
    p.add_argument("--steps", default=",".join(STEP_NAMES), help=f"subset of {','.join(STEP_NAMES)}, run in the order above")
    p.add_argument("--box", action="append", default=[], metavar="STEP=MINUTES",
                   help="another time box for a step, e.g. --box sweep=9")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run and write nothing")
    a = p.parse_args(argv)
    wanted = [s.strip() for s in a.steps.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STEP_NAMES]
    if bad:
        p.error(f"unknown steps {bad}; choose from {STEP_NAMES}")
    boxes = {s.name: s.minutes for s in STEPS}
    for item in a.box:
        name, _, minutes = item.partition("=")
        if name not in boxes:
            p.error(f"--box {item}: unknown step {name!r}")
        boxes[name] = float(minutes)
    out = a.out.resolve()
    plan = [s for s in STEPS if s.name in wanted]

    if a.dry_run:
        print(f"gpu-suite plan (dry run: nothing runs, nothing is written), output folder {out}:")
        for s in plan:
            cmd = command(s.name, out, a.sweep, boxes[s.name])
            shown = "(in this process)" if cmd is None else shlex.join(cmd)
            print(f"  {s.name:<9} <= {boxes[s.name]:4.1f} min  {s.what}: {shown}")
        print(f"time boxes add up to {sum(boxes[s.name] for s in plan):.1f} min")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    suite = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "sweep": a.sweep, "steps": []}
    main_log = open(out / "gpu-suite.log", "a", encoding="utf-8")

    def save():
        tmp = out / "suite.json.tmp"
        tmp.write_text(json.dumps(suite, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, out / "suite.json")

    for s in plan:
        t0 = time.monotonic()
        step_log = open(out / "logs" / f"{s.name}.log", "w", encoding="utf-8")

        def log(line, step_log=step_log):
            for f in (step_log, main_log):
                f.write(line + "\n")
                f.flush()
            print(line, flush=True)

        log(f"=== {s.name}: {s.what} (time box {boxes[s.name]:g} min)")
        rec = {"step": s.name, "what": s.what, "box_minutes": boxes[s.name], "command": None,
               "status": None, "exit_code": None, "reason": None}
        why = skip_reason(s.name, out, a.sweep)
        if why:
            rec.update(status="skipped", reason=why)
        elif s.name == "env":
            try:
                env = environment()
                (out / "env.json").write_text(json.dumps(env, indent=1) + "\n", encoding="utf-8")
                log(json.dumps(env, indent=1))
                rec["status"] = "ok"
            except Exception as err:  # noqa: BLE001  (the other steps still run)
                rec.update(status="failed", reason=f"{type(err).__name__}: {err}")
        else:
            cmd = command(s.name, out, a.sweep, boxes[s.name])
            rec["command"] = shlex.join(cmd)
            log("$ " + rec["command"])
            rec["status"], rec["exit_code"] = run_boxed(cmd, boxes[s.name], log)
        rec["seconds"] = round(time.monotonic() - t0, 1)
        log(f"=== {s.name}: {rec['status']}" + (f" ({rec['reason']})" if rec["reason"] else "")
            + f" in {rec['seconds']} s")
        step_log.close()
        suite["steps"].append(rec)
        save()
    main_log.close()
    print("\nstep       status    seconds")
    for rec in suite["steps"]:
        print(f"{rec['step']:<10} {rec['status']:<9} {rec['seconds']:>7}  {rec['reason'] or ''}")
    print(f"everything is in {out}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in suite["steps"]) else 1
