"""psf_conv_transpose, the padding modes and per-sample bases on the Triton path (the interpreter on
CPU) against the independent float64 loop truth of ``test_reference_psf`` (explicit taps and index
maps, scatter and gather): forward and every gradient in every dtype, the adjoint identity, per-sample
bases against one sample at a time, the GPU's launch plans, large kernels, determinism, NaN and
gradcheck. (psf_conv with zeros and a shared basis: test_psf_ops.py; opcheck, compile, empty
inputs, double backward and forward-mode AD: test_op_table.py.)

The interpreter's cost grows steeply with k (unrolled tap loops, a halo that grows with the
kernel): cases are sized to stay a few seconds each, see the large-kernel tests."""
from __future__ import annotations

import pytest
import torch

import psfops
from psfops import reference
from helpers import assert_rel_close, check_triton_against_truth, rand, value_and_grads
from test_reference_psf import loop_apply_psf, loop_psf_conv, loop_psf_conv_transpose

MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _case_id(case):
    return "B{}C{}H{}W{}J{}k{}d{}".format(*case)


def _inputs(B, C, H, W, J, k, per_sample, dtype=torch.float64, requires_grad=True):
    """Image, weights, basis: fresh standard-normal values (never zeros)."""
    return (rand(B, C, H, W, dtype=dtype, requires_grad=requires_grad),
            rand(B, J, H, W, dtype=dtype, requires_grad=requires_grad, scale=0.5),
            rand(*((B,) if per_sample else ()), J, k, k, dtype=dtype, requires_grad=requires_grad, scale=1.0 / k))


def _check_op(op, loop, case, padding, per_sample, dtype, what=""):
    """``op`` (psfops.psf_conv or psf_conv_transpose) on the Triton path: output and d(image),
    d(weights), d(basis) against the float64 loop, within the dtype's tolerances."""
    B, C, H, W, J, k, d = case
    check_triton_against_truth(lambda x, w, b: op(x, w, b, d, padding), lambda x, w, b: loop(x, w, b, d, padding),
                               _inputs(B, C, H, W, J, k, per_sample, dtype),
                               f"{what}{op.__name__} {padding} {'per-sample' if per_sample else 'shared'} "
                               f"{_case_id(case)}")


# ---- 1. psf_conv_transpose: forward and every gradient against the loop scatter ---------------

# (padding, per-sample basis, (B, C, H, W, J, k, dilation)): every padding with both basis shapes,
# k 1-7, dilation 1-3, H and W never multiples of 4 (one H of 1); several cases have a halo larger than the
# image (reflect/circular then mirror/wrap more than once in the fold-back).
TRANSPOSE_F64 = [
    ("zeros", False, (2, 3, 9, 11, 3, 3, 1)),
    ("zeros", True, (2, 2, 7, 13, 2, 5, 2)),
    ("reflect", False, (1, 2, 9, 11, 3, 7, 1)),
    ("reflect", True, (2, 2, 3, 7, 3, 5, 3)),        # pad 6 > H = 3: mirrored more than once
    ("reflect", True, (2, 1, 1, 5, 2, 3, 2)),        # H = 1: reflect of a single row
    ("replicate", False, (2, 3, 6, 5, 2, 1, 1)),     # k = 1: no halo, only the 16-column alignment
    ("replicate", True, (2, 2, 7, 9, 2, 3, 3)),
    ("circular", False, (1, 3, 10, 9, 4, 5, 1)),
    ("circular", True, (2, 1, 3, 7, 2, 7, 2)),       # pad 6 > H = 3: wrapped more than once
]


@pytest.mark.parametrize("padding,per_sample,case", TRANSPOSE_F64,
                         ids=[f"{p}-{'ps' if s else 'shared'}-{_case_id(c)}" for p, s, c in TRANSPOSE_F64])
def test_transpose_float64(padding, per_sample, case):
    torch.manual_seed(sum(case) * 7 + len(padding) + per_sample)
    _check_op(psfops.psf_conv_transpose, loop_psf_conv_transpose, case, padding, per_sample, torch.float64)


TRANSPOSE_LOW = [
    (torch.float32, "zeros", True, (2, 3, 9, 11, 3, 5, 2)),
    (torch.float32, "reflect", False, (1, 2, 7, 13, 3, 3, 1)),
    (torch.float16, "replicate", True, (2, 2, 9, 7, 4, 3, 1)),
    (torch.float16, "circular", False, (1, 3, 6, 11, 2, 5, 1)),
    (torch.bfloat16, "reflect", True, (2, 2, 7, 10, 3, 3, 2)),
    (torch.bfloat16, "zeros", False, (1, 2, 9, 6, 5, 3, 3)),
]


@pytest.mark.parametrize("dtype,padding,per_sample,case", TRANSPOSE_LOW,
                         ids=[f"{str(t)[6:]}-{p}-{'ps' if s else 'shared'}" for t, p, s, _ in TRANSPOSE_LOW])
def test_transpose_low_precision(dtype, padding, per_sample, case):
    """float32/float16/bfloat16 inputs, every padding across the dtypes, within FWD/GRAD_RTOL."""
    torch.manual_seed(sum(case) * 11 + len(padding))
    _check_op(psfops.psf_conv_transpose, loop_psf_conv_transpose, case, padding, per_sample, dtype)


# ---- 2. psf_conv (per-sample basis, every padding) and apply_psf (non-zero paddings) ------------

GATHER = [  # (padding, the lower dtype, case)
    ("zeros", torch.float32, (2, 3, 9, 11, 3, 3, 2)),
    ("reflect", torch.float16, (2, 2, 7, 10, 2, 3, 1)),
    ("replicate", torch.bfloat16, (2, 3, 5, 9, 3, 3, 3)),
    ("circular", torch.float32, (2, 2, 6, 7, 4, 5, 2)),   # pad 4 > 6 // 2: wraps past the middle
]


@pytest.mark.parametrize("padding,dtype,case", GATHER, ids=[p for p, _, _ in GATHER])
def test_psf_conv_per_sample_and_apply_psf_padded(padding, dtype, case):
    """psf_conv with a per-sample basis in float64 and in a lower dtype; apply_psf (non-zero
    paddings: zeros is test_psf_ops.py's) in float64 (replicate) or the lower dtype (reflect,
    circular). Forward and every gradient."""
    torch.manual_seed(sum(case) * 13 + len(padding))
    for dt in (torch.float64, dtype):
        _check_op(psfops.psf_conv, loop_psf_conv, case, padding, True, dt)
    if padding == "zeros":
        return
    B, C, H, W, J, k, d = case
    dt = torch.float64 if padding == "replicate" else dtype
    x = rand(B, C, H, W, dtype=dt, requires_grad=True)
    psf = rand(B, k * k, H, W, dtype=dt, requires_grad=True, scale=1.0 / k)
    check_triton_against_truth(lambda x, p: psfops.apply_psf(x, p, d, padding),
                               lambda x, p: loop_apply_psf(x, p, d, padding), (x, psf),
                               f"apply_psf {padding} {_case_id(case)}")


# ---- 3. the adjoint identity on the Triton path -----------------------------------------------

def _inner(a, b):
    return (a * b).sum().item()


def test_adjoint_identity_triton_sweep():
    """<psf_conv(x), y> == <x, psf_conv_transpose(y)> in float64 to 1e-12 relative, both on the
    Triton path, over a seeded sweep of random shapes (H, W 1-9, k 1-7, dilation 1-3), each
    padding with both basis shapes."""
    g = torch.Generator().manual_seed(2024)
    randint = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    for trial in range(8):
        mode, per_sample = MODES[trial % 4], bool((trial // 4) % 2)
        B, C, H, W, J = randint(1, 2), randint(1, 3), randint(1, 9), randint(1, 9), randint(1, 4)
        k, d = 2 * randint(0, 3) + 1, randint(1, 3)
        x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        y = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        w = torch.randn(B, J, H, W, generator=g, dtype=torch.float64)
        b = torch.randn(*((B,) if per_sample else ()), J, k, k, generator=g, dtype=torch.float64)
        with psfops.backend("triton"):
            Ax = psfops.psf_conv(x, w, b, d, mode)
            Aty = psfops.psf_conv_transpose(y, w, b, d, mode)
        lhs, rhs = _inner(Ax, y), _inner(x, Aty)
        scale = Ax.norm().item() * y.norm().item()
        assert scale > 0
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1e-3 * scale), (trial, B, C, H, W, J, k, d, mode, per_sample,
                                                                       lhs, rhs)


# ---- 4. a per-sample basis is each sample with its own basis -----------------------------------

@pytest.mark.parametrize("op,padding", [("psf_conv_transpose", "reflect"), ("psf_conv", "circular")])
def test_per_sample_basis_equals_each_sample_alone(op, padding):
    """Forward and d(basis) (and d(image), d(weights)) of a per-sample (B,J,k,k) basis equal B
    separate calls, each with its sample's (J,k,k) basis, on the Triton path (float64)."""
    fn = getattr(psfops, op)
    torch.manual_seed(5)
    x, w, b = _inputs(3, 2, 6, 7, 3, 3, True)
    gout = rand(3, 2, 6, 7, dtype=torch.float64)
    with psfops.backend("triton"):
        outs, grads, _ = value_and_grads(lambda x, w, b: fn(x, w, b, 2, padding), (x, w, b), (gout,))
        for i in range(3):
            alone = (x[i:i + 1], w[i:i + 1], b[i])  # b[i]: this sample's (J,k,k) basis
            alone = tuple(t.detach().requires_grad_(True) for t in alone)
            oi, gi, _ = value_and_grads(lambda x, w, b: fn(x, w, b, 2, padding), alone, (gout[i:i + 1],))
            assert_rel_close(outs[0][i:i + 1], oi[0], 1e-12, f"{op} sample {i}")
            for name, together, by_itself in zip(("image", "weights", "basis"), grads, gi):
                mine = together[i] if name == "basis" else together[i:i + 1]
                assert mine.shape == by_itself.shape
                assert_rel_close(mine, by_itself, 1e-12, f"{op} sample {i} d{name}")


# ---- 5. the GPU's launch plans in the interpreter ---------------------------------------------

@pytest.fixture
def gpu_plans():
    """The GPU's launch plans (8x16 tiles, 64-channel blocks, 128-pixel halo chunks, persistent
    grid) on 2 SMs (2 programs, 4 for d(taps)), in the interpreter (as test_psf_ops.py's fixture)."""
    from psfops.kernels import launch_target
    from psfops.kernels import psf as kernels
    with launch_target(sm_count=2, gpu_plans=True):
        yield kernels


# B2 H5 W69: 10 forward tiles (8x16, the last row and column partial) on 2 programs; 6 d(taps)
# tiles (16x32, k = 3: two 4-warp row groups) on 4 programs (two per SM); 20 tiles (4x16) of the
# synthesize backward that turns d(taps) into d(weights) and d(basis) on 4 programs, each taking
# tiles of both images, so they add into both samples' d(basis) partials. The transpose runs C70 (two
# 64-channel blocks) and J80 (two 64-kernel blocks) through all four kernels; psf_conv, whose kernels
# are the same, runs C19 and J5.
GPU_CASES = [("psf_conv_transpose", "reflect", (2, 70, 5, 69, 80, 3, 1)),
             ("psf_conv", "circular", (2, 19, 5, 69, 5, 3, 2))]


@pytest.mark.parametrize("op,padding,case", GPU_CASES, ids=[o for o, _, _ in GPU_CASES])
def test_gpu_launch_plans_padded_per_sample(op, padding, case, gpu_plans):
    """psf_conv_transpose and padded psf_conv with a per-sample basis under the GPU's plans,
    float64, forward and every gradient against the loop truth. (apply_psf shares these kernels
    with SYNTH off; its GPU plans are covered with zeros in test_psf_ops.py.)"""
    B, C, H, W, J, k, d = case
    p = gpu_plans.plan("fwd", B, C, H, W, J, torch.device("cpu"))
    assert (p.TH, p.TW, p.NUM_JB, p.programs) == (8, 16, 1 + (J > 64), 2)
    assert C <= 64 or -(-C // p.BLOCK_C) > 1  # C=70: several channel blocks, the last one partial
    assert gpu_plans.plan("dk", B, C, H, W, J, torch.device("cpu"), k=k).programs == 4
    assert gpu_plans.plan("synth", B, 1, H, W, J, torch.device("cpu")).programs == 4
    torch.manual_seed(len(op) + d)
    loop = loop_psf_conv_transpose if op == "psf_conv_transpose" else loop_psf_conv
    _check_op(getattr(psfops, op), loop, case, padding, True, torch.float64, "gpu plans ")


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_padded_scatter_folds_inside_the_kernel(padding, gpu_plans, monkeypatch):
    """The scatter's fold of a non-zero padding under the GPU's plans, with a band (RD = 9) wider
    than a tile's 8 rows and an image that ends mid-tile: no tensor is padded on the host (F.pad
    raises here), float32 (bitwise repeatable) and bfloat16 against the float64 truth (replicate
    folds up to 10 x 10 positions onto a corner pixel, summed in float32, rounded once)."""
    import torch.nn.functional as F

    def no_host_pad(*args, **kwargs):
        raise AssertionError("the Triton scatter padded a tensor on the host")

    B, C, H, W, J, k, d = 1, 2, 9, 17, 2, 3, 9  # 4 tiles (8x16, the last row and column 1 pixel) on 2 programs
    torch.manual_seed(len(padding))
    y, w, basis = _inputs(B, C, H, W, J, k, False, requires_grad=False)
    truth = loop_psf_conv_transpose(y, w, basis, d, padding)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.bfloat16, 8e-3)):
        args = (y.to(dtype), w.to(dtype), basis.to(dtype))
        with monkeypatch.context() as m:
            m.setattr(F, "pad", no_host_pad)
            out = gpu_plans.filter_scatter(*args, d, padding)
            again = gpu_plans.filter_scatter(*args, d, padding) if dtype == torch.float32 else out
        assert_rel_close(out, truth, rtol, f"{padding} {dtype}")
        assert torch.equal(out, again)


# ---- 6. large kernels on tiny images ------------------------------------------------------------

LARGE = [  # (op, padding, dtype, (B, C, H, W, J, k, dilation))
    ("psf_conv_transpose", "circular", torch.float64, (1, 2, 2, 9, 2, 15, 1)),
    ("psf_conv", "reflect", torch.float64, (1, 2, 2, 11, 2, 15, 1)),
    ("psf_conv_transpose", "zeros", torch.float32, (1, 2, 3, 5, 2, 15, 1)),
    ("psf_conv_transpose", "replicate", torch.float64, (1, 2, 5, 6, 2, 9, 3)),   # halo 12 > H, W
]


@pytest.mark.parametrize("op,padding,dtype,case", LARGE,
                         ids=[f"{o}-{p}-{str(t)[6:]}-k{c[5]}d{c[6]}" for o, p, t, c in LARGE])
def test_large_kernels(op, padding, dtype, case):
    """k = 15 (float64 and float32) and k = 9 at dilation 3: the halo larger than the image (the
    padded scatter folds back an extension several times the image)."""
    torch.manual_seed(case[5] + len(op))
    loop = loop_psf_conv_transpose if op == "psf_conv_transpose" else loop_psf_conv
    _check_op(getattr(psfops, op), loop, case, padding, False, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("op,padding,k", [("psf_conv_transpose", "zeros", 31), ("psf_conv", "reflect", 31),
                                          ("psf_conv_transpose", "reflect", 41), ("psf_conv", "zeros", 41)])
def test_very_large_kernels(op, padding, k):
    """k = 31 and 41, float64, forward and every gradient on a 1x1x3x4 image. Slow: in the
    interpreter these took 22 s (transpose, zeros) and 91 s (psf_conv, reflect: its d(x) is the
    padded scatter of a 33x34 extension) at k = 31, 133 s and 42 s at k = 41 (shared 2-core
    machine under load), too much for the default run even at k = 31; k = 31's forward stays there
    (test_k31_forward)."""
    torch.manual_seed(k)
    loop = loop_psf_conv_transpose if op == "psf_conv_transpose" else loop_psf_conv
    _check_op(getattr(psfops, op), loop, (1, 1, 3, 4, 2, k, 1), padding, False, torch.float64)


def test_k31_forward():
    """k = 31 in the default run: psf_conv's gather forward with reflect (a pad of 15 on a 5x6
    image, mirrored several times), float64. (The full k = 31 check: test_very_large_kernels.)"""
    torch.manual_seed(31)
    x, w, b = _inputs(1, 2, 5, 6, 2, 31, False, requires_grad=False)
    with psfops.backend("triton"):
        y = psfops.psf_conv(x, w, b, 1, "reflect")
    assert_rel_close(y, loop_psf_conv(x, w, b, 1, "reflect"), 1e-12, "psf_conv k31 reflect")


# ---- 7. determinism and NaN -------------------------------------------------------------------

def test_transpose_gradients_bitwise_deterministic():
    """Two runs of psf_conv_transpose's forward and gradients (float32, reflect, a shared basis, a
    tile per image on 2 programs: d(basis) summed across programs) are bitwise equal."""
    torch.manual_seed(7)
    inputs = _inputs(2, 2, 9, 13, 3, 3, False, torch.float32)
    runs = []
    for _ in range(2):
        with psfops.backend("triton"):
            outs, grads, _ = value_and_grads(lambda y, w, b: psfops.psf_conv_transpose(y, w, b, 1, "reflect"),
                                             inputs, seed=3)
        runs.append(outs + grads)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_transpose_nan_propagates(padding):
    """A NaN in y reaches exactly the outputs it reaches in the reference (no crash); the rest
    matches the reference."""
    torch.manual_seed(8)
    y, w, b = _inputs(1, 2, 7, 9, 3, 3, False, torch.float32, requires_grad=False)
    y[0, 1, 3, 4] = float("nan")
    y[0, 0, 0, 8] = float("nan")  # a corner: folded back by the padding
    with psfops.backend("triton"):
        out = psfops.psf_conv_transpose(y, w, b, 1, padding)
    ref = reference.psf_conv_transpose(y, w, b, 1, padding)
    assert torch.isnan(out[0, 1, 3, 4]) and torch.isnan(ref).any()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = ~torch.isnan(ref)
    assert_rel_close(out[finite], ref[finite], 1e-5, "finite part")


# ---- 8. gradcheck -------------------------------------------------------------------------------

def test_transpose_gradcheck_float64():
    """torch.autograd.gradcheck of psf_conv_transpose on the Triton path: circular padding, a
    per-sample basis, dilation 2, tiny shape."""
    torch.manual_seed(9)
    y, w, b = _inputs(2, 1, 4, 3, 2, 3, True)
    with psfops.backend("triton"):
        assert torch.autograd.gradcheck(lambda y, w, b: psfops.psf_conv_transpose(y, w, b, 2, "circular"),
                                        (y, w, b), fast_mode=True)
