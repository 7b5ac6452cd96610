"""Smoke tests of the benchmark harness (bench/): models, timing, one tiny CPU case, the report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import cases as C
from bench import harness, report
from bench.__main__ import main as bench_main
from helpers import compiled_env

CPU = torch.device("cpu")
FAST = dict(warmup_ms=1.0, rep_ms=5.0, min_reps=3)
TINY = C.Case(op="psf_conv", B=1, C=2, H=8, J=3, k=3)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: steadier on a shared CPU (as ``python -m bench --quick`` does)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env():
    return harness.environment(CPU)


def test_byte_and_flop_models_match_hand_counts():
    c = C.Case(op="psf_conv", B=2, C=3, H=5, J=4, k=3, dtype="bfloat16")
    x, w, basis, *_ = C.OPS["psf_conv"].make_inputs(c, CPU, False)
    y = torch.empty_like(x)
    n_in = 2 * (2 * 3 * 25 + 2 * 4 * 25 + 4 * 9)  # bf16: 2 bytes each
    n_out = 2 * (2 * 3 * 25)
    assert C.min_bytes([x, w, basis], [y], "fwd") == n_in + n_out
    # backward: read cotangent + inputs, write one grad per input
    assert C.min_bytes([x, w, basis], [y], "fwd+bwd") == n_in + n_out + (n_out + n_in + n_in)
    # psf_conv: per pixel J*k*k synthesis MACs + C*k*k filtering MACs, 2 FLOPs per MAC
    assert C.flops(c, "fwd") == 2 * (2 * 25) * (4 * 9 + 3 * 9)
    assert C.flops(c, "fwd+bwd") == 3 * C.flops(c, "fwd")
    with pytest.raises(ValueError, match="pass_"):
        C.min_bytes([x], [y], "bwd")


def test_sweep_is_one_axis_at_a_time_around_the_base():
    got = C.sweep_cases(["psf_conv", "lstm_cell"], ["float32", "bfloat16"])
    for case in got:
        base = C.OPS[case.op].base
        differs = [a for a in C.AXES if a in C.OPS[case.op].axes and getattr(case, a) != base[a]]
        assert len(differs) <= 1, case
    psf = [c for c in got if c.op == "psf_conv" and c.dtype == "float32"]
    assert len(psf) == len(set(psf)) == 1 + 3 + 3 + 3 + 3 + 2  # base + the other values per axis
    assert {c.H for c in psf} == {64, 128, 256, 512} and {c.k for c in psf} == {3, 5, 7}
    assert all(c.J is None and c.k is None for c in got if c.op == "lstm_cell")
    only_h = C.sweep_cases(["psf_conv"], ["float32"], axes=["H"])
    assert [c.H for c in only_h] == [128, 64, 256, 512]
    for kw, name in (({"ops": ["nope"]}, "ops"), ({"dtypes": ["int8"]}, "dtypes"), ({"axes": ["Z"]}, "axes")):
        args = dict(ops=["psf_conv"], dtypes=["float32"]) | kw
        with pytest.raises(ValueError, match=name):
            C.sweep_cases(**args)


def test_time_ms_is_the_median_of_real_calls():
    ms = harness.time_ms(lambda: time.sleep(0.004), CPU, warmup_ms=1.0, rep_ms=20.0, min_reps=3)
    assert 4.0 <= ms < 40.0
    assert harness.peak_mb(lambda: torch.ones(10), CPU) is None  # not measured on CPU
    assert harness.copy_bandwidth_gbps(CPU, nbytes=2 ** 20) > 0.01


def test_fwd_bwd_step_returns_the_reference_gradients():
    from psfops import reference
    from helpers import GRAD_RTOL, assert_rel_close, float64_leaves

    spec = C.OPS["psf_conv"]
    inputs = spec.make_inputs(TINY, CPU, True)
    fn = spec.implementations()["eager-convstack"]
    step, out_bytes = harness.make_step(spec, "eager-convstack", fn, inputs, "fwd+bwd")
    assert out_bytes == 4 * 1 * 2 * 8 * 8
    grads = step()
    # independent truth: the float64 unfold form, same cotangent
    leaves = float64_leaves(*inputs[:3])
    truth = torch.autograd.grad(reference.psf_conv(*leaves, inputs[3]), leaves, step.cotangents[0].double())
    for name, g, t in zip(("x", "weights", "basis"), grads, truth):
        assert_rel_close(g, t, GRAD_RTOL[torch.float32], f"d{name}")
    fwd, _ = harness.make_step(spec, "eager", spec.implementations()["eager"], inputs, "fwd")
    assert not fwd().requires_grad  # the fwd pass runs without autograd


def test_one_tiny_case_end_to_end_then_report(tmp_path, monkeypatch):
    env, roof = _env(), 10.0
    impls = ["eager", "eager-convstack", "triton"]
    recs = harness.run_cases([TINY], CPU, impls, env=env, roofline_gbps=roof, timing=FAST, log=lambda s: None)
    assert len(recs) == 2 * len(impls)
    required = {"op", "pass", "impl", "dtype", "B", "C", "H", "W", "J", "k", "ms", "peak_mb", "gbps",
                "device", "torch", "triton"}
    for r in recs:
        assert required <= set(r), required - set(r)
        assert r["device"].startswith("cpu") and r["op"] == "psf_conv"
        if r["impl"] == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            assert r["status"] == "skipped" and "TRITON_INTERPRET" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["ms"] > 0 and r["peak_mb"] is None
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["ms"] * 1e-3) / 1e9)
        assert r["pct_roofline"] == pytest.approx(100 * r["gbps"] / roof)
    json_path = tmp_path / "cpu-test.json"
    report.save(recs, json_path)
    report.save(recs[:1], json_path)  # same key again: replaced, not duplicated
    assert len(json.loads(json_path.read_text())) == len(recs)

    md = tmp_path / "RESULTS.md"
    assert bench_main(["report", str(json_path), "--md", str(md)]) == 0
    text = md.read_text()
    assert "GPU results are pending" in text and "### psf_conv" in text
    assert "| float32 | B1 C2 8x8 J3 k3 |" in text
    assert "peak MB" not in text.split("### psf_conv")[1]  # no memory column on CPU

    # the run book's folder: its env, check and suite files (JSON objects) are not results
    for name in ("env.json", "check.json", "suite.json"):
        (tmp_path / name).write_text(json.dumps({"device": "cpu", "results": []}))
    assert bench_main(["report", str(tmp_path)]) == 0
    assert md.read_text() == text  # the same report: only cpu-test.json is results
    kernels = [{"device": "NVIDIA H100", "triton": "3.6.0", "op": "psf_conv", "dtype": "float32", "kernel": k,
                "measured_us": 90.0, **est} for k, est in
               (("_psf_fwd_kernel", {"estimate_us": 72.6, "binding": "l2", "measured_over_estimate": 90 / 72.6}),
                ("_psf_new_kernel", {}))]
    (tmp_path / "kernels.json").write_text(json.dumps({"kernels": kernels}))
    assert bench_main(["report", str(tmp_path)]) == 0
    section = md.read_text().split("## Each psf kernel on the GPU beside its static estimate")[1]
    assert "| NVIDIA H100 | 3.6.0 | psf_conv | float32 | `_psf_fwd_kernel` | 90.0 | 72.6 | 1.24 | l2 |" in section
    assert "| `_psf_new_kernel` | 90.0 | - | - | - |" in section
    with pytest.raises(ValueError, match="folder itself"):
        bench_main(["report", str(tmp_path / "check.json"), "--md", str(md)])


def test_headline_targets_are_judged_from_the_records(tmp_path):
    env = {**_env(), "device_type": "cuda"}
    case = C.Case(op="psf_conv", dtype="float32", B=8, C=64, H=128, J=40, k=7)
    recs = []
    for impl, ms, peak in (("triton", 1.0, 100.0), ("eager", 8.0, 900.0), ("eager-convstack", 6.0, 800.0),
                           ("compile", 1.5, 300.0)):
        r = harness.base_record(case, impl, "fwd+bwd", env, roofline_gbps=1000.0)
        r.update(ms=ms, peak_mb=peak, held_mb=300.0, ideal_mb=380.0, gbps=750.0, pct_roofline=75.0)
        recs.append(r)
    lines = report.target_lines({r["impl"]: r for r in recs}, "float32")
    joined = "\n".join(lines)
    assert "vs best eager 6.00x (target >= 5x) PASS" in joined          # 6.0 / 1.0, the faster eager
    assert "torch.compile(reference) 1.50x (target >= 2x) FAIL" in joined
    assert "75.0% of the measured copy bandwidth" in joined and "(target >= 60%) PASS" in joined
    assert "1.05x (target <= 1.1x) PASS" in joined                     # (300 + 100) / 380
    md = report.render({str(tmp_path / "gpu.json"): recs}, tmp_path / "RESULTS.md", tmp_path / "plots")
    assert "GPU results are pending" not in md and "### Headline" in md


def test_model_step_records_a_reference_step():
    from bench import model_step
    rec = model_step.measure_step("tiny", "reference", 1, 16, CPU, _env(), 10.0,
                                  timing=dict(warmup_ms=0.0, rep_ms=0.0, min_reps=1))
    assert rec["status"] == "ok", rec
    assert rec["ms"] > 0 and rec["params"] > 0 and rec["op"] == "sdpsfnet_step:tiny"


def test_headline_check_prints_target_lines(monkeypatch):
    from bench import headline
    monkeypatch.setattr(C, "HEADLINE", dict(op="psf_conv", B=1, C=2, H=8, J=3, k=3))
    monkeypatch.setattr(harness, "copy_bandwidth_gbps", lambda device: 10.0)
    lines = []
    recs = headline.run(CPU, ["float32"], impls=("eager", "eager-convstack"), log=lines.append,
                        timing=FAST)
    # the transpose beside the forward; the conv-stack form exists for psf_conv only
    assert sorted((r["op"], r["impl"]) for r in recs) == [
        ("psf_conv", "eager"), ("psf_conv", "eager-convstack"), ("psf_conv_transpose", "eager")]
    assert all(r["status"] == "ok" and r["B"] == 1 and r["pass"] == "fwd+bwd" for r in recs)
    assert any(line.startswith("psf_conv_transpose fwd+bwd") for line in lines)
    assert any("Triton not measured" in line and "targets cannot be checked" in line for line in lines)


# ---- roofs, checks, CUDA graphs ------------------------------------------------------------

def test_roofs_name_the_binding_roof():
    mem = harness.roofs({"ms": 1.0, "bytes": 2e9, "flops": 1e9}, copy_gbps=4000.0, peak=100.0)
    assert mem["gbps"] == pytest.approx(2000.0) and mem["pct_roofline"] == pytest.approx(50.0)
    assert mem["tflops"] == pytest.approx(1.0) and mem["pct_flops"] == pytest.approx(1.0)
    assert mem["bound"] == "memory" and mem["pct_bound"] == pytest.approx(50.0)
    comp = harness.roofs({"ms": 1.0, "bytes": 1e8, "flops": 8e10}, copy_gbps=4000.0, peak=100.0)
    assert comp["bound"] == "compute" and comp["pct_bound"] == pytest.approx(80.0)
    assert harness.roofs({"ms": 1.0, "bytes": 1e8, "flops": 8e10}, 4000.0, None)["bound"] == "memory"
    assert harness.peak_tflops(CPU, torch.float32) > 0


def test_outputs_are_checked_before_timing(monkeypatch):
    """A wrong implementation is recorded as a mismatch and never timed; a right one carries its
    error against the reference."""
    case = C.Case(op="gated_blend", B=1, C=3, H=8)
    env = _env()
    for pass_ in C.PASSES:
        rec = harness.measure(case, "eager", pass_, CPU, env, 10.0, timing=FAST)
        assert rec["status"] == "ok" and rec["check_rel_err"] == 0.0 and rec["ms"] > 0, rec
    real = C.OpSpec.implementations

    def wrong(self):
        impls = real(self)
        ref = impls["eager"]
        impls["eager"] = lambda cur, prev, gate: ref(cur, prev, gate) * 1.01
        return impls

    monkeypatch.setattr(C.OpSpec, "implementations", wrong)
    for pass_ in C.PASSES:
        rec = harness.measure(case, "eager", pass_, CPU, env, 10.0, timing=FAST)
        assert rec["status"] == "mismatch" and rec["ms"] is None, rec
        assert 5e-3 < rec["check_rel_err"] < 2e-2 and "not timed" in rec["reason"]


def test_graph_timing_needs_cuda():
    ms, why = harness.graph_time_ms(lambda: None, CPU)
    assert ms is None and "CUDA" in why
    rec = harness.measure(C.Case(op="lstm_cell", B=1, C=2, H=8), "eager", "fwd", CPU, _env(), 10.0, timing=FAST)
    assert rec["ms_graph"] is None and rec["graph_reason"]


def test_small_sweep_has_the_target_shapes():
    got = C.sweep_cases(["spatial_normalize", "gated_blend"], ["float32"], sweep="small")
    norm = {(c.B, c.C, c.H) for c in got if c.op == "spatial_normalize"}
    assert {(8, 64, 128), (1, 3, 1024), (1, 40, 128), (8, 40, 64), (8, 40, 256)} <= norm
    assert {c.H for c in got if c.op == "gated_blend"} == {64, 128, 256}
    with pytest.raises(ValueError, match="sweep"):
        C.sweep_cases(["lstm_cell"], ["float32"], sweep="huge")


# ---- where outputs go ------------------------------------------------------------------------

def _tracked_state():
    root = Path(__file__).resolve().parents[1]
    files = [root / "bench" / "RESULTS.md", *sorted((root / "bench" / "results").rglob("*"))]
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file()}


def test_a_run_writes_only_to_its_output_folder(tmp_path, monkeypatch):
    before = _tracked_state()
    monkeypatch.chdir(tmp_path)
    args = ["--quick", "--ops", "lstm_cell", "--impls", "eager", "--passes", "fwd", "--no-model", "--no-graphs"]
    assert bench_main(args) == 0
    out = tmp_path / "runs" / "bench"
    assert len(list(out.glob("cpu-*.json"))) == 1 and (out / "RESULTS.md").exists()
    assert _tracked_state() == before
    with pytest.raises(SystemExit, match="publish"):
        bench_main(args + ["--publish", "--out", str(tmp_path)])


def test_default_test_run_does_not_collect_the_benchmarks():
    import configparser
    root = Path(__file__).resolve().parents[1]
    ini = configparser.ConfigParser()
    ini.read(root / "pytest.ini")
    assert ini["pytest"]["testpaths"].split() == ["tests"]
    assert (root / "bench" / "test_benchmarks.py").exists()


def test_pytest_benchmark_suite_runs_on_cpu():
    """``pytest bench --benchmark-only``: reference rows time, Triton rows skip with a reason, and
    no tracked file changes."""
    pytest.importorskip("pytest_benchmark")
    root = Path(__file__).resolve().parents[1]
    before = _tracked_state()
    run = subprocess.run([sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q", "-p",
                          "no:cacheprovider", "-k", "gated_blend-fwd-", "--benchmark-max-time=0.01",
                          "--benchmark-min-rounds=2"], cwd=root, env=compiled_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout and "no CUDA device" in run.stdout, run.stdout[-2000:]
    assert "test_op[float32-gated_blend-fwd-eager]" in run.stdout
    assert _tracked_state() == before


# ---- the GPU run book ---------------------------------------------------------------------------

def test_gpu_suite_dry_run_fits_a_short_lease_and_writes_nothing(tmp_path, capsys):
    """The plan: install line first, then check, headline, model, sweep, in that order, boxes
    adding up to at most 9 minutes with the archive; sass and report are not GPU steps."""
    from bench import gpu_suite
    out = tmp_path / "suite"
    assert bench_main(["gpu-suite", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    order = [text.index(f"  {s} ") for s in ("env", "check", "headline", "model", "sweep", "archive")]
    assert order == sorted(order) and text.index("pip install --no-deps -e .") < order[0]
    assert "bench gpu-check" in text and "--sweep small" in text and "bench headline" in text
    assert "  tests " not in text and "  sass " not in text and "  report " not in text
    plan = gpu_suite.plan_boxes(gpu_suite.DEFAULT_STEPS, {s.name: s.minutes for s in gpu_suite.STEPS},
                                gpu_suite.BUDGET_MINUTES)
    total_s = 60 * (sum(box for _, box in plan) + gpu_suite.ARCHIVE_MINUTES)
    assert total_s <= 540 and f"({total_s:.0f} s)" in text
    assert [s.name for s, _ in plan] == ["env", "check", "headline", "model", "sweep"]
    assert not out.exists() and not (tmp_path / "suite.tar.gz").exists()


def test_gpu_suite_records_failures_and_timeouts_runs_on_and_archives(tmp_path, monkeypatch):
    """Each step runs in its own box: a failing step (check) and one that runs past its box
    (headline) are recorded and the next steps still run; the folder is packed into one archive
    with suite.json beside it; a step with no time left in the budget is skipped. The steps'
    commands are stand-ins here (no compiles, no GPU)."""
    import tarfile

    from bench import gpu_suite
    stand_ins = {"check": "raise SystemExit(3)", "headline": "import time; time.sleep(60)",
                 "model": "print('model step')", "sweep": "print('sweep')"}
    monkeypatch.setattr(gpu_suite, "command", lambda step, out, sweep, minutes: [sys.executable, "-c", stand_ins[step]])
    out, ship = tmp_path / "suite", tmp_path / "ship"
    t0 = time.monotonic()
    rc = bench_main(["gpu-suite", "--out", str(out), "--archive", str(ship / "gpu-suite.tar.gz"),
                     "--box", "headline=0.05"])
    assert rc == 1 and time.monotonic() - t0 < 120
    steps = json.loads((out / "suite.json").read_text())["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [
        ("env", "ok"), ("check", "failed"), ("headline", "timeout"), ("model", "ok"), ("sweep", "ok")]
    assert steps[1]["exit_code"] == 3 and steps[2]["exit_code"] is None
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["psfops"]["kernels_file"]
    assert sorted(p.name for p in ship.iterdir()) == ["gpu-suite.tar.gz", "suite.json"]
    with tarfile.open(ship / "gpu-suite.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"suite/suite.json", "suite/env.json", "suite/gpu-suite.log", "suite/logs/model.log"} <= names
    assert json.loads((ship / "suite.json").read_text())["steps"] == steps
    # a budget already spent: the steps after env are skipped, and still recorded and archived
    rc = bench_main(["gpu-suite", "--out", str(tmp_path / "late"), "--budget", "0.3", "--steps", "env,model,sweep"])
    steps = json.loads((tmp_path / "late" / "suite.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["ok", "skipped", "skipped"] and "no time left" in steps[1]["reason"]
    assert (tmp_path / "late.tar.gz").exists()


def test_gpu_suite_boxes_a_step():
    from bench import gpu_suite
    lines = []
    t0 = time.monotonic()
    status, rc = gpu_suite.run_boxed([sys.executable, "-c", "print('hi', flush=True); import time; time.sleep(60)"],
                                     0.05, lines.append)
    assert status == "timeout" and rc is None and time.monotonic() - t0 < 30 and lines == ["hi"]
    assert gpu_suite.run_boxed([sys.executable, "-c", "raise SystemExit(3)"], 1.0, lines.append) == ("failed", 3)


def test_gpu_check_runs_the_psf_kernels_against_the_reference(monkeypatch):
    """bench gpu-check's case runner, on a tiny shape in the interpreter (the GPU runs it at full
    size; smoke is the CPU test shape): every gradient set, frozen inputs included, passes; allocations made inside the
    poisoned block are NaN; a kernel that leaves an output element unwritten is caught."""
    from bench import gpu_check
    got = list(gpu_check.run_op("psf_conv", "float32", "smoke", "cpu"))
    assert [(r["passage"], r["needs"]) for r in got] == [
        ("fwd", None), ("bwd", [True, True, True]), ("bwd", [False, True, True]), ("bwd", [True, False, True]),
        ("bwd", [True, True, False])]
    assert all(r["status"] == "ok" and r["bitwise_repeat"] for r in got), got
    with gpu_check.poisoned_allocations():
        assert torch.empty(3).isnan().all() and torch.empty_like(torch.ones(2)).isnan().all()
    assert not torch.zeros(2).isnan().any()
    planned = gpu_check.plan(["psf_conv", "apply_psf"], gpu_check.DTYPES, ["full", "ragged"])
    # (forward + each gradient set) per sample variant, op, dtype and shape; usual uses first
    assert len(planned) == 3 * 2 * 2 * (5 + 4)
    assert [(c["op"], c["variant"]) for c in planned[:10:5]] == [("psf_conv", "usual"), ("apply_psf", "usual")]
    padded = list(gpu_check.run_op("apply_psf", "float32", "smoke", "cpu", variant=1))
    assert padded[0]["variant"] != "usual" and all(r["status"] == "ok" for r in padded), padded
    ops, skipped = gpu_check.available_ops()
    assert set(ops) == set(gpu_check.PSF_OPS) and not skipped  # psf_conv_transpose included
    assert set(ops) | set(skipped) == set(gpu_check.PSF_OPS)
    from psfops.kernels import psf as kpsf
    real = kpsf.filter_forward

    def skips_a_pixel(*args, **kwargs):  # as if the kernel never wrote pixel (0, 0): poisoned NaN stays
        y = real(*args, **kwargs)
        y[..., 0, 0] = float("nan")
        return y
    monkeypatch.setattr(kpsf, "filter_forward", skips_a_pixel)
    bad = next(gpu_check.run_op("apply_psf", "float32", "smoke", "cpu"))
    assert bad["status"] == "nan" and bad["nan"], bad


def test_sass_estimate_counts_loops_bytes_and_flops_of_a_listing(tmp_path):
    """bench sass on a hand-made nvdisasm listing: the backward branch on the ``for c0`` line
    multiplies its body by C/BLOCK_C, a branch to itself (the trap after EXIT) is no loop, and the
    counts, bytes (loads and stores, L1 and L2), barriers, wgmma waits, FLOPs and roofs (four-roof
    and honest) are those worked out by hand."""
    from bench import sass
    src = tmp_path / "kernel.py"
    src.write_text("def k(C):\n    x = 0\n    for c0 in range(0, C, 8):\n        x += 1\n    return x\n")
    listing = f"""
        //## File "{src}", line 2
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        //## File "{src}", line 4
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R5, R4, R4, R5 ;
        /*0030*/                   STS.64 [R7], R4 ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/                   STG.E.U16 desc[UR4][R8.64], R5 ;
        //## File "{src}", line 3
        /*0060*/              @P0 BRA `(.L_x_0) ;
        //## File "{src}", line 5
        /*0070*/                   HGMMA.64x64x8.F32.TF32 R24, gdesc[UR4], R24 ;
        /*0080*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0090*/                   EXIT ;
.L_x_1:
        /*00a0*/                   BRA `(.L_x_1) ;
"""
    instrs = sass.parse_listing(listing)
    assert [(a, op) for a, op, _, _ in instrs] == [
        (0, "MOV"), (16, "LDG.E.128"), (32, "FFMA"), (48, "STS.64"), (64, "BAR.SYNC.DEFER_BLOCKING"),
        (80, "STG.E.U16"), (96, "BRA"), (112, "HGMMA.64x64x8.F32.TF32"), (128, "WARPGROUP.DEPBAR.LE"),
        (144, "EXIT"), (160, "BRA")]
    assert instrs[6][2].strip() == "0x10" and instrs[1][3] == (str(src), 4)
    assert sass.loops(instrs) == [(16, 96, "c0")]
    # a barrier in the c0 loop (an inner loop: not the persistent tile loop)
    assert sass.barrier_counts(instrs) == {"total": 1, "in_loops": 1, "inner": 1, "by_loop": {"c0": 1}}
    mult = sass.loop_multipliers(instrs, {"C": 64, "BLOCK_C": 8, "n_tiles": 4}, programs=2)
    assert mult == [2, 16, 16, 16, 16, 16, 16, 2, 2, 2, 2]  # 2 programs; the c0 loop runs 64 / 8 times
    prof = sass.kernel_profile(instrs, mult, num_warps=4)
    assert prof["warp_instructions"] == 4 * (2 + 16 * 6 + 2 * 4)
    assert prof["load_bytes"] == 4 * 16 * 32 * 16  # warps x executions x lanes x 16-byte loads
    assert prof["store_bytes"] == 4 * 16 * 32 * (8 + 2)  # STS.64 and STG.E.U16
    # L2: the global accesses alone, each warp's in whole sectors (32 lanes x 2 bytes = 2 sectors)
    assert prof["l2_bytes"] == 4 * 16 * (32 * 16 + 2 * 32)
    assert prof["barriers"] == 16 and prof["wgmma_waits"] == 2  # events, per program, summed over programs
    assert prof["fp32_flops"] == 4 * 16 * 32 * 2
    assert prof["tensor_flops"] == {"tf32": 4 * 2 * 2 * 64 * 64 * 8 / 4}  # a warpgroup shares the HGMMA
    assert prof["tensor_core_instructions"] == 8 and prof["static_tensor_core_instructions"] == 1
    gpu = dict(sms=1, clock_ghz=1.0, fp32_tflops=1.0, tensor_tflops={"tf32": 2.0}, l2_tbs=0.001)
    got = sass.roofs(prof, gpu, num_warps=4, resident=1, programs=2)
    issue = 1e6 * prof["warp_instructions"] / 4e9
    assert got["issue_4roof_us"] == pytest.approx(issue)
    assert got["l1_4roof_us"] == pytest.approx(1e6 * prof["load_bytes"] / 128e9)
    # 4 warps on 4 schedulers: 1 warp each, a quarter of the HIDING_WARPS; 16 barriers and 2 waits
    # stall the one SM (both programs run on it, one after the other)
    assert got["occupancy"] == pytest.approx(1 / sass.HIDING_WARPS) and got["warps_per_scheduler"] == 1
    sync = 1e6 * (16 * sass.BAR_SYNC_CYCLES + 2 * sass.WGMMA_WAIT_CYCLES) / 1e9
    assert got["sync_us"] == pytest.approx(sync)
    assert got["issue_us"] == pytest.approx(issue * sass.HIDING_WARPS + sync)
    assert got["l1_us"] == pytest.approx(1e6 * (prof["load_bytes"] + prof["store_bytes"]) / 128e9)
    assert got["l2_us"] == pytest.approx(1e6 * prof["l2_bytes"] / 1e9)
    assert got["math_us"] == pytest.approx(1e6 * (prof["fp32_flops"] / 1e12 + prof["tensor_flops"]["tf32"] / 2e12))
    # two resident programs of 8 warps: 4 warps per scheduler hide latency, and halve the stalls
    two = sass.roofs(prof, gpu, num_warps=8, resident=2, programs=2)
    assert two["occupancy"] == 1.0 and two["sync_us"] == pytest.approx(sync / 2)
    assert sass.binding_roof(got) == "l2"  # a slow L2 (1 GB/s) binds
    h100 = sass.GPUS["H100"]
    assert sass.resident_programs(h100, 8, 255, 1024, 132) == 1      # one program per SM in the grid
    assert sass.resident_programs(h100, 8, 128, 1024, 1000) == 2     # registers: 128 x 32 x 8 x 2 = 64 K
    assert sass.resident_programs(h100, 4, 32, 120 * 1024, 1000) == 1  # shared memory
    # the modelled L2 traffic of a d(taps) launch: halo rows start WPAD columns left of an
    # aligned tile column (partial sectors); its d(psf) tile is written once with the sums held in
    # registers, read-modified-written per channel block in the row loop (large k)
    f32 = torch.empty(0)
    args = dict(n_tiles=1, TH=1, TW=8, KSIZE=3, C=4, BLOCK_C=4, RD=1, WPAD=4, HALO_W=16, HALO=48, ROW_LOOP=False,
                x_ptr=f32, stage_ptr=f32, dpsf_ptr=f32)
    halo = 4 * 3 * 96   # 4 channels x 3 rows x 64 bytes from 16 bytes into a sector: 3 sectors
    staged = 4 * 192    # 48 values a plane, written and read back
    plane, dpsf = 4 * 32, 9 * 32
    assert sass.l2_traffic("_psf_dk_kernel", args) == halo + 2 * staged + plane + dpsf
    two_blocks = dict(args, BLOCK_C=2, ROW_LOOP=True)  # written by the first block, read and written by the second
    assert sass.l2_traffic("_psf_dk_kernel", two_blocks) == halo + 2 * staged + plane + 3 * dpsf
    # half inputs staged in float32: the halo and dy in 2-byte values, the staged block in 4-byte ones
    half = dict(args, x_ptr=torch.empty(0, dtype=torch.bfloat16))
    assert sass.l2_traffic("_psf_dk_kernel", half) == 4 * 3 * 64 + 2 * staged + 4 * 32 + dpsf
    assert sass.l2_traffic("_blend_fwd_kernel", args) is None
    fn = SimpleNamespace(arg_names=["x_ptr", "taps_ptr", "part_ptr"])  # work areas: taps, and partials if used
    args = [torch.empty(10), torch.empty(4), torch.empty(3, dtype=torch.float64)]
    assert sass.scratch_bytes(fn, args, {"NEED_DBASIS": True}) == 4 * 4 + 3 * 8
    assert sass.scratch_bytes(fn, args, {"NEED_DBASIS": False}) == sass.scratch_bytes(fn, args, {}) == 4 * 4
    # the HBM roof's bytes: a launch's tensors beyond its work areas, each once (a placeholder
    # argument that is another argument is not counted twice)
    x = torch.empty(10)
    fn = SimpleNamespace(arg_names=["x_ptr", "dy_ptr", "stage_ptr", "dpsf_ptr"])
    assert sass.io_bytes(fn, [x, x, torch.empty(7), torch.empty(3, dtype=torch.float64)]) == 10 * 4 + 3 * 8
    assert sass.roofs(dict(prof, hbm_bytes=2e6), dict(gpu, hbm_tbs=0.5))["hbm_us"] == pytest.approx(1e6 * 2e6 / 0.5e12)


def test_static_table_has_before_and_after_columns(tmp_path):
    """RESULTS.md's static table: per (psfops, triton) the four-roof estimate ("before") and, for
    records that have it, the honest one ("after"), each with its binding roof; older records
    (four roofs only) get a before column alone."""
    from bench import sass
    base = dict(op="psf_conv", dtype="float32", gpu="H100", hbm_floor_us=50.0, spill_bytes=0)
    old = [dict(base, **{"pass": "fwd+bwd"}, psfops="0.1.0", triton="3.9.0", estimate_us=500.0, binding="issue")]
    new = [dict(base, **{"pass": "fwd+bwd"}, psfops="0.2.0", triton="3.9.0", estimate_us=300.0, binding="l2",
                estimate_4roof_us=100.0, binding_4roof="l1")]
    (tmp_path / "sass-old.json").write_text(json.dumps(old))
    (tmp_path / "sass-new.json").write_text(json.dumps(new))
    lines = sass.static_table(sorted(tmp_path.glob("sass-*.json")))
    header = next(line for line in lines if line.startswith("| op |"))
    assert header.count("before") == 2 and header.count("after") == 1
    row = next(line for line in lines if line.startswith("| psf_conv | fwd+bwd |"))
    assert "500 us (10.0x, issue)" in row and "100 us (2.0x, l1)" in row and "300 us (6.0x, l2)" in row
    assert row.index("100 us") < row.index("300 us")
    assert "occupancy" in lines[0] and "L2" in lines[0]  # the preamble names the model


def test_gpu_check_workers_report_every_planned_case(tmp_path):
    """gpu-check's plumbing on the CPU (interpreter, the smoke shape): a worker process per dtype,
    their JSON lines merged into one report that accounts for every planned case."""
    from bench import gpu_check
    out = tmp_path / "check.json"
    report = gpu_check.check(out, ops=["apply_psf"], dtypes=["float32"], shapes=["smoke"], max_minutes=4,
                             log=lambda line: None, device="cpu")
    assert json.loads(out.read_text())["summary"] == report["summary"]
    assert report["summary"] == {"ok": 8, "not_reached": 0, "planned": 8}, report
    assert {r["variant"] for r in report["results"]} == {"usual", "circular"}


@pytest.mark.slow
def test_bench_sass_end_to_end(tmp_path):
    """``python -m bench sass`` compiles the headline's psf launches for sm_90 and writes a record
    per op, pass and dtype with the fields the README and RESULTS.md read (minutes from a cold
    Triton cache: a slow test)."""
    pytest.importorskip("triton")
    out = tmp_path / "sass.json"
    env = compiled_env()
    run = subprocess.run([sys.executable, "-m", "bench", "sass", "--dtypes", "bfloat16", "--gpus", "H100",
                          "--json", str(out)], env=env, capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads(out.read_text())
    assert {(r["op"], r["pass"]) for r in records} == {(op, p) for op in ("psf_conv", "psf_conv_transpose",
                                                                           "synthesize_psf", "apply_psf")
                                                      for p in ("fwd", "bwd", "fwd+bwd")}
    for r in records:
        assert r["estimate_us"] >= r["hbm_floor_us"] > 0 and r["scratch_bytes"] >= 0, r
        assert r["estimate_us"] >= r["estimate_4roof_us"] and r["binding"] in ("issue", "l1", "l2", "math", "hbm")
    conv = {r["pass"]: r for r in records if r["op"] == "psf_conv"}
    assert conv["fwd+bwd"]["tensor_core_instructions"] > 0 and conv["bwd"]["scratch_bytes"] > 0


def test_cpu_model_restores_an_image_and_reports_time_and_memory():
    """``python -m bench.cpu_model BACKEND H W`` (the README's SD-PSFNet-on-the-CPU figures) on a
    tiny image: both backends give the same image (checksum) and report seconds and peak memory."""
    from bench import cpu_model
    runs = [cpu_model.main([backend, "16", "24"]) for backend in ("cpu", "reference")]
    for r in runs:
        assert {"seconds", "peak_extra_mb", "checksum"} <= set(r) and r["seconds"] > 0
    assert abs(runs[0]["checksum"] - runs[1]["checksum"]) <= 1e-4 * abs(runs[1]["checksum"])


def test_kernel_times_set_each_kernel_beside_its_static_estimate(monkeypatch):
    """The run book's per-kernel GPU times: the profiler's averages per call (psf kernels only; the
    older torch's field name too), each beside the static estimate of the same launch at the
    running triton's version, and the whole step on a tiny shape with the profiler stood in for
    (no GPU here)."""
    import types

    import triton

    from bench import kernel_times as kt
    ev = lambda key, count, **t: types.SimpleNamespace(key=key, count=count, **t)  # noqa: E731
    got = kt.per_call([ev("_psf_fwd_kernel", 40, device_time_total=2000.0),
                       ev("_synthesize_bwd_kernel", 20, device_time_total=None, cuda_time_total=600.0),
                       ev("aten::softmax", 20, device_time_total=99.0)], calls=20)
    assert got == {"_psf_fwd_kernel": {"us": 100.0, "launches": 2.0}, "_synthesize_bwd_kernel": {"us": 30.0, "launches": 1.0}}

    est = kt.static_estimates("psf_conv", "float32", "3.6.0", "0.3.0")
    assert set(est) == {"_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel", "_synthesize_bwd_kernel"}
    assert est["_psf_fwd_kernel"]["binding"] == "l2" and 60 < est["_psf_fwd_kernel"]["estimate_us"] < 90
    assert kt.static_estimates("psf_conv", "float32", "0.0", "0.3.0") == {}
    recs = kt.compare({"_psf_fwd_kernel": {"us": 146.0, "launches": 1.0}, "_other": {"us": 1.0, "launches": 1.0}},
                      est, op="psf_conv")
    by = {r["kernel"]: r for r in recs}
    assert by["_psf_fwd_kernel"]["measured_over_estimate"] == pytest.approx(146.0 / est["_psf_fwd_kernel"]["estimate_us"])
    assert by["_psf_fwd_kernel"]["op"] == "psf_conv" and "estimate_us" not in by["_other"]

    monkeypatch.setattr(kt.C, "HEADLINE", dict(op="psf_conv", B=1, C=2, H=8, J=3, k=3))
    monkeypatch.setattr(kt, "profile", lambda fn: (fn(), {"_psf_fwd_kernel": {"us": 7.0, "launches": 1.0}})[1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "stand-in")
    lines = []
    recs = kt.run(torch.device("cpu"), ("float32",), log=lines.append)
    assert [(r["op"], r["kernel"]) for r in recs] == [("psf_conv", "_psf_fwd_kernel"), ("apply_psf", "_psf_fwd_kernel")]
    assert all(r["triton"] == triton.__version__ and r["device"] == "stand-in" for r in recs)
    assert len(lines) == 3 and "binding" in lines[0]
