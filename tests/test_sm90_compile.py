"""Every kernel the launchers launch compiles for Hopper (sm_90) with the GPU compiler, ahead of
time on this CPU (bench/sm90.py), and none spills registers in float32 or bfloat16. The
interpreter cannot catch a kernel that only fails in the real compiler; this can."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
EXPECTED_KERNELS = {
    "_filter_fwd_kernel", "_filter_dx_kernel", "_filter_dtap_kernel", "_synthesize_fwd_kernel",
    "_synthesize_bwd_kernel", "_normalize_fwd_kernel", "_normalize_bwd_kernel", "_blend_fwd_kernel",
    "_blend_bwd_kernel", "_fusion_fwd_kernel", "_fusion_bwd_gate_kernel", "_fusion_bwd_input_kernel",
    "_fusion_dweight_kernel", "_lstm_fwd_kernel", "_lstm_bwd_kernel",
}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="triton ships no NVIDIA tools on this platform")
def test_all_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "sm90.json"
    run = subprocess.run([sys.executable, "-m", "bench", "sm90", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert out.exists(), run.stdout + run.stderr
    records = json.loads(out.read_text())
    failed = [r for r in records if not r["ok"]]
    assert not failed, failed
    assert {r["kernel"] for r in records} == EXPECTED_KERNELS  # every op's forward and backward ran
    spills = [(r["kernel"], r["dtype"], r["stack"]) for r in records
              if r["dtype"] in ("float32", "bfloat16") and r.get("stack", 0) > 0]
    assert not spills, spills
    assert run.returncode == 0, run.stdout[-2000:]
