"""The GPU run book in one command, for a short lease: ``python -m bench gpu-suite --out DIR``.

On a CUDA machine with torch and triton already installed, from the root of a clone, after
``pip install --no-deps -e .`` (the one install: ``import psfops`` finds the kernels through it),
in this order, each step in its own process under its own time box (a step that fails or runs
over is recorded and the next one starts), all within a budget of ``--budget`` minutes (default
9) of wall time:

    env       the environment record: GPU, driver, CUDA, torch, triton, SMs, L2, where psfops and
              its kernels import from                                             -> env.json
    check     ``python -m bench gpu-check``: every psf kernel at full size (the headline's
              launches), on a ragged shape and at k = 15, float32/bfloat16/float16, forward and every
              gradient set (frozen inputs too), run twice and compared bitwise, outputs poisoned
              with NaN, against the float64 reference                            -> check.json
    headline  ``python -m bench headline``: psf_conv and its transpose fwd+bwd vs eager and
              torch.compile, with peak memory                                     -> <device>-<date>.json;
              then each psf kernel's device time (torch.profiler) beside its static estimate
                                                                                  -> kernels.json
    model     ``python -m bench model``: the SD-PSFNet training step, Triton vs reference ops
    sweep     ``python -m bench --sweep small``, with whatever time is left (stops cleanly)

After every step, ``suite.json`` (each step's command, status, exit code, seconds) is rewritten
and the whole folder is packed into one archive (``--archive``, default ``DIR.tar.gz``) with a
copy of ``suite.json`` beside it: two files to bring back. The static estimate (``bench sass``)
and the report (``bench report``) are not GPU work: run them afterwards on any machine, from the
unpacked archive. ``--steps`` runs a subset (``tests``, ``pytest -m gpu``, only when named),
``--box STEP=MINUTES`` changes a box, ``--dry-run`` prints the plan and its total box time
without running or writing anything.
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

from sdpsfnet.files import atomic_write

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    name: str
    minutes: float  # the time box
    what: str


BUDGET_MINUTES = 9.0    # the whole suite's wall time: a 15-minute lease less the machine's start
ARCHIVE_MINUTES = 0.25  # kept back from the budget for the last archive
STEPS = (
    Step("env", 0.25, "environment record"),
    Step("check", 3.25, "psf kernels vs the float64 reference: full size, ragged and k = 15, 3 dtypes, "
                        "every gradient set, bitwise repeat, NaN-poisoned outputs"),
    Step("headline", 3.0, "psf_conv and psf_conv_transpose fwd+bwd headline vs eager and torch.compile, "
                           "peak memory; each psf kernel's time beside its static estimate"),
    Step("model", 1.25, "SD-PSFNet training step, Triton vs reference ops"),
    Step("sweep", 1.0, "benchmark sweep (small), with the time left"),
    Step("tests", 4.0, "pytest -m gpu (only when named in --steps)"),
)
STEP_NAMES = tuple(s.name for s in STEPS)
DEFAULT_STEPS = ("env", "check", "headline", "model", "sweep")
MIN_STEP_MINUTES = 0.2  # a step with less time than this left in the budget is skipped
INSTALL = "pip install --no-deps -e ."


def command(step: str, out: Path, sweep: str, minutes: float) -> list[str] | None:
    """The step's command line (None: run in this process, or nothing to run)."""
    py = sys.executable
    if step == "check":  # stop the workers a little before the box closes, so the report is written
        return [py, "-m", "bench", "gpu-check", "--out", str(out / "check.json"),
                "--max-minutes", f"{max(minutes - 0.3, 0.2):g}"]
    if step == "tests":
        return [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                f"--junitxml={out / 'pytest-gpu.xml'}"]
    if step == "headline":
        return [py, "-m", "bench", "headline", "--out", str(out)]
    if step == "sweep":
        # stop starting cases a little before the box closes, so the records are saved
        return [py, "-m", "bench", "--sweep", sweep, "--out", str(out), "--resume", "--no-model",
                "--no-report", "--max-minutes", f"{max(minutes - 0.5, 0.2):g}"]
    if step == "model":
        return [py, "-m", "bench", "model", "--out", str(out)]
    return None


def skip_reason(step: str, out: Path, sweep: str) -> str | None:
    if step == "sweep" and sweep == "none":
        return "--sweep none"
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
    rec.update(psfops_location())
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


def psfops_location() -> dict:
    """Where ``psfops`` and its kernels import from (in a fresh process, as the steps see them),
    and whether psfops is installed: the run book's first line installs it."""
    probe = ("import json, importlib.metadata as m, psfops, psfops.kernels as k\n"
             "try:\n    v = m.version('psfops')\nexcept m.PackageNotFoundError:\n    v = None\n"
             "print(json.dumps({'psfops_file': psfops.__file__, 'kernels_file': k.__file__, 'installed': v}))")
    try:
        run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
        if run.returncode == 0:
            return {"psfops": json.loads(run.stdout.strip().splitlines()[-1])}
        return {"psfops": {"error": (run.stderr.strip().splitlines() or ["?"])[-1],
                           "hint": f"run `{INSTALL}` in the clone first"}}
    except (OSError, subprocess.TimeoutExpired, ValueError) as err:
        return {"psfops": {"error": f"{type(err).__name__}: {err}"}}


def write_archive(out: Path, archive: Path) -> None:
    """Pack ``out`` into ``archive`` (.tar.gz, replaced atomically) and copy ``suite.json`` beside
    it (unless the archive lies in ``out``)."""
    import shutil
    import tarfile
    with atomic_write(archive) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        for p in sorted(out.rglob("*")):  # not the archive itself, nor a temporary file being written
            if p.is_file() and p.resolve() != archive.resolve() and not p.name.endswith(".tmp"):
                tar.add(p, arcname=str(Path(out.name) / p.relative_to(out)))
    if (out / "suite.json").exists() and archive.parent.resolve() != out.resolve():
        shutil.copyfile(out / "suite.json", archive.parent / "suite.json")


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


def plan_boxes(steps, boxes: dict, budget: float) -> list[tuple[Step, float]]:
    """(step, box minutes) in running order; the sweep's box is what the budget leaves (at most
    its own box when the others use theirs: it gets more at run time if they finish early)."""
    chosen = [s for s in STEPS if s.name in steps]
    fixed = sum(boxes[s.name] for s in chosen if s.name != "sweep")
    return [(s, min(boxes[s.name], max(budget - ARCHIVE_MINUTES - fixed, 0.0)) if s.name == "sweep"
             else boxes[s.name]) for s in chosen]


def save_suite(suite: dict, out: Path, archive: Path) -> None:
    """suite.json (atomically) and the archive, rewritten after every step."""
    with atomic_write(out / "suite.json") as f:
        f.write((json.dumps(suite, indent=1) + "\n").encode())
    try:
        write_archive(out, archive)
    except OSError as err:  # the records stay in the folder
        print(f"archive not written: {err}", flush=True)


def parse_args(argv) -> tuple[argparse.Namespace, list[tuple[Step, float]], Path, Path]:
    """The command line: (arguments, plan of (step, time box), output folder, archive)."""
    p = argparse.ArgumentParser(prog="python -m bench gpu-suite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, required=True, help="folder for everything the suite writes")
    p.add_argument("--archive", type=Path, default=None,
                   help="the .tar.gz of the folder, rewritten after every step (default DIR.tar.gz); "
                        "suite.json is copied beside it")
    p.add_argument("--budget", type=float, default=BUDGET_MINUTES,
                   help=f"minutes of wall time for the whole suite (default {BUDGET_MINUTES:g})")
    p.add_argument("--sweep", choices=("small", "full", "none"), default="small",
                   help="sweep size (full takes hours: give it --steps sweep and a larger budget, "
                        "repeatedly; it resumes)")
    p.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                   help=f"subset of {','.join(STEP_NAMES)}, run in the order above (default {','.join(DEFAULT_STEPS)})")
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
    return a, plan_boxes(wanted, boxes, a.budget), out, (a.archive or out.with_name(out.name + ".tar.gz")).resolve()


def print_plan(plan, out: Path, archive: Path, a: argparse.Namespace) -> None:
    """The dry run: each step's time box and command, and the boxes' total."""
    print(f"gpu-suite plan (dry run: nothing runs, nothing is written), output folder {out}, "
          f"archive {archive}, budget {a.budget:g} min:")
    print(f"  (first, once, in the clone: {INSTALL})")
    for s, box in plan:
        cmd = command(s.name, out, a.sweep, box)
        shown = "(in this process)" if cmd is None else shlex.join(cmd)
        print(f"  {s.name:<9} <= {box:4.2f} min  {s.what}: {shown}")
    print(f"  archive   <= {ARCHIVE_MINUTES:4.2f} min  {archive} and suite.json beside it")
    total = sum(box for _, box in plan) + ARCHIVE_MINUTES
    print(f"time boxes add up to {total:.2f} min ({60 * total:.0f} s) of a {a.budget:g} min budget")
    print("afterwards, on any machine (no GPU): tar xzf the archive, then "
          "`python -m bench report DIR` (DIR/RESULTS.md) and `python -m bench sass`")


def env_step(out: Path, rec: dict, log) -> None:
    """The env step, in this process: env.json, and a failure if psfops does not import."""
    try:
        env = environment()
        (out / "env.json").write_text(json.dumps(env, indent=1) + "\n", encoding="utf-8")
        log(json.dumps(env, indent=1))
        rec["status"] = "ok"
        if "error" in env.get("psfops", {}):
            rec.update(status="failed", reason=f"psfops does not import: {env['psfops']['error']} "
                                               f"(run `{INSTALL}` first)")
    except Exception as err:  # noqa: BLE001  (the other steps still run)
        rec.update(status="failed", reason=f"{type(err).__name__}: {err}")


def run_step(s: Step, box: float, left: float, out: Path, a: argparse.Namespace, log) -> dict:
    """One step of the plan within ``box`` minutes (``left``: the budget's minutes left); its record."""
    log(f"=== {s.name}: {s.what} (time box {box:.2f} min)")
    rec = {"step": s.name, "what": s.what, "box_minutes": round(box, 2), "command": None,
           "status": None, "exit_code": None, "reason": None}
    why = skip_reason(s.name, out, a.sweep)
    if why is None and left < MIN_STEP_MINUTES and s.name != "env":  # (env: seconds, and always useful)
        why = f"no time left in the {a.budget:g}-minute budget ({max(left, 0):.2f} min)"
    if why:
        rec.update(status="skipped", reason=why)
    elif s.name == "env":
        env_step(out, rec, log)
    else:
        cmd = command(s.name, out, a.sweep, box)
        rec["command"] = shlex.join(cmd)
        log("$ " + rec["command"])
        rec["status"], rec["exit_code"] = run_boxed(cmd, box, log)
    return rec


def main(argv=None) -> int:
    a, plan, out, archive = parse_args(argv)
    if a.dry_run:
        print_plan(plan, out, archive, a)
        return 0
    t_start = time.monotonic()
    deadline = t_start + 60 * (a.budget - ARCHIVE_MINUTES)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    suite = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "budget_minutes": a.budget, "sweep": a.sweep, "archive": str(archive), "steps": []}
    main_log = open(out / "gpu-suite.log", "a", encoding="utf-8")
    for s, box in plan:
        t0 = time.monotonic()
        left = (deadline - t0) / 60
        box = min(left if s.name == "sweep" else box, left)  # the sweep takes whatever time is left
        with open(out / "logs" / f"{s.name}.log", "w", encoding="utf-8") as step_log:
            def log(line, step_log=step_log):
                for f in (step_log, main_log):
                    f.write(line + "\n")
                    f.flush()
                print(line, flush=True)

            rec = run_step(s, box, left, out, a, log)
            rec["seconds"] = round(time.monotonic() - t0, 1)
            log(f"=== {s.name}: {rec['status']}" + (f" ({rec['reason']})" if rec["reason"] else "")
                + f" in {rec['seconds']} s")
        suite["steps"].append(rec)
        suite["seconds"] = round(time.monotonic() - t_start, 1)
        save_suite(suite, out, archive)
    main_log.close()
    print("\nstep       status    seconds")
    for rec in suite["steps"]:
        print(f"{rec['step']:<10} {rec['status']:<9} {rec['seconds']:>7}  {rec['reason'] or ''}")
    print(f"everything is in {out}, packed in {archive} (suite.json beside it); "
          f"{suite.get('seconds', 0)} s in all")
    return 0 if all(r["status"] in ("ok", "skipped") for r in suite["steps"]) else 1
