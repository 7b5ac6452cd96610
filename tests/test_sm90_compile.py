"""Every kernel the launchers launch compiles for Hopper (sm_90) with the GPU compiler, ahead of
time on this CPU (bench/sm90.py, with the launchers' own block sizes and the JIT's alignment
hints), none spills registers in float32 or bfloat16, and the PTX has the instructions the
kernels are designed around: tensor cores for the psf synthesis products (bf16 operands for
bfloat16 inputs, tf32 passes for float32) and half-precision gated_fusion (not float32: IEEE),
16-byte loads for the psf tap windows, gated_blend and lstm_cell at their GPU tile sizes. The
interpreter cannot catch a kernel that only fails in, or is slowed by, the real compiler; this
can. (The compile takes minutes: one run serves every test here.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import compiled_env

triton = pytest.importorskip("triton")
EXPECTED_KERNELS = {
    "_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel", "_synthesize_fwd_kernel",
    "_synthesize_bwd_kernel", "_normalize_fwd_kernel", "_normalize_bwd_kernel", "_blend_fwd_kernel",
    "_blend_bwd_kernel", "_fusion_fwd_kernel", "_fusion_bwd_gate_kernel", "_fusion_bwd_input_kernel",
    "_fusion_dweight_kernel", "_lstm_fwd_kernel", "_lstm_bwd_kernel",
}
PSF_OPS = "psf_conv,psf_conv_transpose,apply_psf,synthesize_psf"
PSF_KERNELS = {k for k in EXPECTED_KERNELS if k.startswith(("_psf", "_synthesize"))}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


needs_tools = pytest.mark.skipif(not CUOBJDUMP.exists(), reason="triton ships no NVIDIA tools on this platform")


def _compile(tmp_path, dtypes: str, *options: str, expected=EXPECTED_KERNELS) -> list[dict]:
    env = compiled_env()
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
    """Each op's usual launch (the padding and per-sample-basis variants: the slow test below)."""
    return _compile(tmp_path_factory.mktemp("sm90"), "float32,bfloat16", "--variants", "first")


@pytest.mark.slow
@needs_tools
def test_every_psf_variant_compiles_for_sm90_without_spills(tmp_path):
    """Every sample variant of the psf ops (padding modes, per-sample bases, the scatter's padding
    fold) in float32 and bfloat16."""
    records = _compile(tmp_path, "float32,bfloat16", "--ops", PSF_OPS, expected=PSF_KERNELS | {"_psf_fold_kernel"})
    spills = [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0]
    assert not spills, spills


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
                # half products on their dtype; float32 ones (psf_conv's d(basis) from the float32
                # d(taps) too) as tf32 passes
                half = dtype == "bfloat16" and r["constexprs"]["DOT"] == "half"
                assert r["mma"] == (["wgmma.bf16"] if half else ["wgmma.tf32"]), r
            # a quad of 4 pixels per vector: 16 bytes in float32 (d(taps) stages half inputs in float32)
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
    """float64 is the gradcheck dtype, not a speed target: it only has to compile (it spills).
    Every sample variant, so the padding fold's kernel too."""
    _compile(tmp_path, "float64", expected=EXPECTED_KERNELS | {"_psf_fold_kernel"})


@needs_tools
@pytest.mark.slow
def test_psf_kernels_with_more_than_64_basis_kernels_compile_without_spills(tmp_path):
    """J = 80 takes two J blocks (BLOCK_J is capped at 64): the blocks are a loop, so registers do
    not grow with J. One known exception: the padding fold's float32 launch (border tiles only)
    keeps 56 bytes on the stack at 255 registers (189 registers, none, at J = 40); more fails."""
    records = _compile(tmp_path, "float32,bfloat16", "--ops", "psf_conv,synthesize_psf", "--basis", "80",
                       expected=PSF_KERNELS | {"_psf_fold_kernel"})
    assert {r["constexprs"]["NUM_JB"] for r in records if r["kernel"] != "_psf_dk_kernel"} == {"2"}  # (d(taps): no J)
    spills = [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0]
    assert [s for s in spills if s[0] != "_psf_fold_kernel"] == [], spills
    assert all(s[2] <= 56 for s in spills), spills


def _large_kernel_records(tmp_path, k: int) -> list[dict]:
    """The psf ops' usual launches at kernel size k, float32 and bfloat16: the tap loops unroll a
    row of k taps inside a loop over the rows, and the products take the taps in 64-tap blocks."""
    records = _compile(tmp_path, "float32,bfloat16", "--ops", PSF_OPS, "--variants", "first", "--ksize", str(k),
                       expected=PSF_KERNELS)
    assert {r["constexprs"]["ROW_LOOP"] for r in records if r["kernel"].startswith("_psf")} == {"True"}
    assert {r["constexprs"]["KB"] for r in records if "KB" in r["constexprs"]} == {"64"}  # (d(taps) has no products)
    return records


def _spills(records, synthesized: bool) -> list:
    """(kernel, dtype, bytes) of the spilling launches among those with synthesized taps (psf_conv,
    psf_conv_transpose, synthesize_psf) or among apply_psf's (taps loaded from the psf)."""
    return [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0
            and (r["constexprs"].get("SYNTH", "True") == "True") == synthesized]


@needs_tools
def test_large_kernel_tap_gradients_compile(tmp_path):
    """The large-k path of every psf kernel (rows in a loop; d(taps) adds channel blocks into its
    planes) compiles, quickly checked at k = 9 on apply_psf's launches (no products): a type error
    the interpreter accepted once failed only here (a loop-carried ``_`` of two types)."""
    records = _compile(tmp_path, "float32,bfloat16", "--ops", "apply_psf", "--variants", "first", "--ksize", "9",
                       expected={"_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel"})
    assert {r["constexprs"]["ROW_LOOP"] for r in records} == {"True"}
    assert not [(r["kernel"], r["dtype"], r["stack"]) for r in records if r.get("stack", 0) > 0]


@pytest.fixture(scope="module")
def k15_records(tmp_path_factory):
    return _large_kernel_records(tmp_path_factory.mktemp("sm90k15"), 15)


@needs_tools
@pytest.mark.slow  # about 4 minutes of compiling on a 2-core machine
def test_psf_kernels_at_k15_compile_without_spills(k15_records):
    """k = 15 (225 taps; the fully unrolled tap loops did not compile in 15 minutes)."""
    assert not _spills(k15_records, synthesized=True)


@needs_tools
@pytest.mark.slow
def test_apply_psf_kernels_at_k15_compile_without_spills(k15_records):
    """apply_psf's launches (taps loaded, not synthesized) at k = 15: before the large-k launches
    set an explicit register limit, ptxas kept a few values on the stack at 80-128 registers."""
    assert not _spills(k15_records, synthesized=False)


@pytest.fixture(scope="module")
def k31_records(tmp_path_factory):
    """k = 31 (961 taps), several minutes of compiling on a 2-core machine."""
    return _large_kernel_records(tmp_path_factory.mktemp("sm90k31"), 31)


@needs_tools
@pytest.mark.slow
def test_psf_kernels_at_k31_compile_without_spills(k31_records):
    """k = 31: d(taps) takes a row's taps in groups of 8 (with the whole row, 31 x 4 sums, a
    36-value window and 8 channels' dy quads, the float32 launch spilled 16 bytes at 255 registers)."""
    assert {r["constexprs"]["TAP_GROUP"] for r in k31_records if r["kernel"] == "_psf_dk_kernel"} == {"8"}
    assert not _spills(k31_records, synthesized=True)


@needs_tools
@pytest.mark.slow
def test_apply_psf_kernels_at_k31_compile_without_spills(k31_records):
    assert not _spills(k31_records, synthesized=False)


MAX_INNER_BARRIERS = 4  # a handful: one before and one after the staged block, a few for the taps
# The loops a psf kernel runs per channel block, channel or tap row (the channel-block loop holds the
# staging loop, d(taps)' channel loop, the tap-row loop above k = 7 and d(taps)' tap groups: its
# count includes theirs).
CHANNEL_LOOPS = ("c0", "chunk0", "c", "u", "v0")
# The loops it runs once per tile: the synthesis chunks and the epilogue's J-block, tap-block and
# pixel-chunk products.
TILE_PRODUCT_LOOPS = ("pix0", "jb", "t0", "epi0")


def _heavy_loops(records, loops) -> list:
    return [(r["kernel"], r["dtype"], loop, n) for r in records if r["kernel"].startswith(("_psf", "_synthesize"))
            for loop, n in r["barriers"]["by_loop"].items() if loop in loops and n > MAX_INNER_BARRIERS]


@needs_tools
def test_psf_channel_and_tap_loops_hold_a_handful_of_barriers(records):
    """Each ``BAR.SYNC`` inside a psf kernel's channel-block or tap loop runs once per channel
    block per tile and stalls the whole program: more than :data:`MAX_INNER_BARRIERS` there, in
    float32 or bfloat16 under the installed triton, is a regression (``python -m bench sm90``
    prints the counts per loop)."""
    assert {r["kernel"] for r in records if "c0" in r["barriers"]["by_loop"]} >= \
        {"_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel"}  # the loops are found at all
    assert not _heavy_loops(records, CHANNEL_LOOPS)


@needs_tools
@pytest.mark.xfail(strict=True, reason=(
    "the per-tile product loops hold more: d(x)'s synthesis-chunk loop 6-10 (its products' operands "
    "and results through shared memory; the d(weights) and d(basis) loops, 10-12 while d(taps) ran them, "
    "hold none in the synthesize backward). Strict: once they drop this XPASSes and fails, so the marker "
    "goes then."))
def test_psf_tile_product_loops_hold_a_handful_of_barriers(records):
    """The same bound for the loops a psf kernel runs once per tile (:data:`TILE_PRODUCT_LOOPS`)."""
    assert not _heavy_loops(records, TILE_PRODUCT_LOOPS)


@needs_tools
def test_every_kernel_reports_its_barriers(records):
    """The barrier counts the test above reads are there for every kernel, consistent, and agree
    with the PTX's (ptxas may add or merge a few, never lose them all)."""
    for r in records:
        bars = r["barriers"]
        assert bars["total"] >= bars["in_loops"] >= bars["inner"] >= 0, r
        assert (bars["total"] == 0) == (r["bar_sync"] == 0), r
