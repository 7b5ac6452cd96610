"""What the GPU compiler makes of the memory-bound kernels, read from their sm_90 PTX on this CPU
(bench/sm90.py, with the launchers' own block sizes and the JIT's alignment hints): half-precision
gated_fusion multiplies on the tensor cores (``mma`` on bf16 operands), float32 gated_fusion
does not (IEEE float32, no TF32), and gated_blend / lstm_cell move 16 bytes per thread and
instruction at their GPU tile sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sm90 import ptx_facts

triton = pytest.importorskip("triton")
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def test_ptx_facts_reads_vector_widths_and_mma():
    ptx = """
    ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    @%p1 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];
    st.global.v2.b32 [ %rd3 + 0 ], { %r5, %r6 };
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 { %f1 }, { %r1 }, { %r2 }, { %f2 };
    """
    assert ptx_facts(ptx) == {"load_bits": 128, "store_bits": 64, "mma": ["mma.bf16"]}
    assert ptx_facts("ld.global.f32 %f1, [%rd1];") == {"load_bits": 32, "store_bits": 0, "mma": []}


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="triton ships no NVIDIA tools on this platform")
def test_tensor_cores_and_vector_accesses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "sm90.json"
    run = subprocess.run([sys.executable, "-m", "bench", "sm90", "--dtypes", "float32,bfloat16", "--ops",
                          "gated_fusion,gated_blend,lstm_cell", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert run.returncode == 0 and out.exists(), run.stdout[-2000:] + run.stderr[-2000:]
    records = json.loads(out.read_text())
    for r in records:
        name, dtype, block = r["kernel"], r["dtype"], r["constexprs"].get("BLOCK_P")
        if name.startswith("_fusion"):
            assert r["mma"] == (["mma.bf16"] if dtype == "bfloat16" else []), r
        gpu_tile = {"_blend": {"float32": "128", "bfloat16": "256"},
                    "_lstm": {"float32": "512", "bfloat16": "1024"}}.get(name[:6], {}).get(dtype)
        if gpu_tile and block == gpu_tile:
            assert r["load_bits"] == r["store_bits"] == 128, r
    assert {r["kernel"] for r in records if r["load_bits"] == 128} >= {"_blend_fwd_kernel", "_blend_bwd_kernel",
                                                                        "_lstm_fwd_kernel", "_lstm_bwd_kernel"}
