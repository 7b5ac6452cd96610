"""Smoke tests of the benchmark harness (bench/): models, timing, one tiny CPU case, the report."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from bench import cases as C
from bench import harness, report
from bench.__main__ import main as bench_main

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
    x, w, basis, _ = C.OPS["psf_conv"].make_inputs(c, CPU, False)
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
    assert "75.0% of copy roofline" in joined and "(target >= 70%) PASS" in joined
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
    assert {r["impl"] for r in recs} == {"eager", "eager-convstack"}
    assert all(r["status"] == "ok" and r["B"] == 1 and r["pass"] == "fwd+bwd" for r in recs)
    assert any("Triton not measured" in line and "targets cannot be checked" in line for line in lines)
