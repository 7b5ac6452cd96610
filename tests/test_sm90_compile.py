"""Every kernel the launchers launch compiles for Hopper (sm_90) with the GPU compiler, ahead of
time on this CPU (bench/sm90.py, with the launchers' own block sizes and the JIT's alignment
hints), none spills registers in float32 or bfloat16, and the PTX has the instructions the
kernels are designed around: tensor cores for the psf synthesis products (bf16 operands for
bfloat16 inputs, tf32 passes for float32) and half-precision gated_fusion (not float32: IEEE),
16-byte loads for the psf tap windows, gated_blend and lstm_cell at their GPU tile sizes. The
interpreter cannot catch a kernel that only fails in, or is slowed by, the real compiler; this
can. (The compile takes minutes: one run serves every test here.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
EXPECTED_KERNELS = {
    "_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel", "_synthesize_fwd_kernel",
    "_synthesize_bwd_kernel", "_normalize_fwd_kernel", "_normalize_bwd_kernel", "_blend_fwd_kernel",
    "_blend_bwd_kernel", "_fusion_fwd_kernel", "_fusion_bwd_gate_kernel", "_fusion_bwd_input_kernel",
    "_fusion_dweight_kernel", "_lstm_fwd_kernel", "_lstm_bwd_kernel",
}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


needs_tools = pytest.mark.skipif(not CUOBJDUMP.exists(), reason="triton ships no NVIDIA tools on this platform")


def _compile(tmp_path, dtypes: str, *options: str, expected=EXPECTED_KERNELS) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "sm90.json"
    run = subprocess.run([sys.executable, "-m", "bench", "sm90", "--dtypes", dtypes, "--json", str(out), *options],
                         env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[1])
    assert out.exists(), run.stdout + run.stderr
    records = json.loads(out.read_text())
    failed = [r for r in records if not r["ok"]]
    assert not failed, failed
    assert {r["kernel"] for r in records} == expected  # every op's forward and backward ran
    assert run.returncode == 0, run.stdout[-2000:]
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("sm90"), "float32,bfloat16")


@needs_tools
def test_all_kernels_compile_for_sm90_without_spills(records):
    spills = [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0]
    assert not spills, spills


@needs_tools
def test_tensor_cores_and_vector_accesses(records):
    for r in records:
        name, dtype, block = r["kernel"], r["dtype"], r["constexprs"].get("BLOCK_P")
        if name.startswith("_fusion"):
            assert r["mma"] == (["mma.bf16"] if dtype == "bfloat16" else []), r
        if name.startswith("_psf") or name.startswith("_synthesize"):
            if r["constexprs"].get("SYNTH", "True") == "True" and not name.startswith("_psf_dk"):
                assert r["mma"] == (["wgmma.bf16"] if dtype == "bfloat16" else ["wgmma.tf32"]), r
            assert r["load_bits"] == 128, r
        gpu_tile = {"_blend": {"float32": "128", "bfloat16": "256"},
                    "_lstm": {"float32": "512", "bfloat16": "1024"}}.get(name[:6], {}).get(dtype)
        if gpu_tile and block == gpu_tile:
            assert r["load_bits"] == r["store_bits"] == 128, r
    assert {r["kernel"] for r in records if r["load_bits"] == 128} >= {"_blend_fwd_kernel", "_blend_bwd_kernel",
                                                                        "_lstm_fwd_kernel", "_lstm_bwd_kernel"}


@needs_tools
@pytest.mark.slow
def test_float64_kernels_compile_for_sm90(tmp_path):
    """float64 is the gradcheck dtype, not a speed target: it only has to compile (it spills)."""
    _compile(tmp_path, "float64")


@needs_tools
@pytest.mark.slow
def test_psf_kernels_with_more_than_64_basis_kernels_compile_without_spills(tmp_path):
    """J = 80 takes two J blocks (BLOCK_J is capped at 64): the blocks are a loop, so registers do
    not grow with J."""
    records = _compile(tmp_path, "float32,bfloat16", "--ops", "psf_conv,synthesize_psf", "--basis", "80",
                       expected={k for k in EXPECTED_KERNELS if k.startswith(("_psf", "_synthesize"))})
    assert {r["constexprs"]["NUM_JB"] for r in records} == {"2"}
    spills = [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0]
    assert not spills, spills
