"""psf_conv, synthesize_psf, apply_psf: the Triton path (interpreter on CPU, compiled on GPU) and
the reference against an independent float64 implementation of the ops' definitions, plus gradients,
determinism, layouts and bad input (opcheck, torch.compile and empty input: test_op_table.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

import psfops
from psfops import reference
from psfops.kernels._common import matmul_add
from helpers import (FWD_RTOL, GRAD_RTOL, DTYPES, assert_rel_close, check_triton_against_truth, rand, value_and_grads)


# ---- independent float64 truth: explicit shifted slices of a zero-padded image -------------

def shifted(x: torch.Tensor, u: int, v: int, k: int, d: int) -> torch.Tensor:
    """x[..., h+(u-k//2)d, w+(v-k//2)d] with zeros outside (works for k larger than the image)."""
    H, W = x.shape[-2:]
    p = (k // 2) * d
    xp = F.pad(x, (p, p, p, p))
    return xp[..., u * d:u * d + H, v * d:v * d + W]


def truth_synthesize(weights, basis):
    J, k, _ = basis.shape
    return torch.stack([(weights * basis[:, u, v].view(1, J, 1, 1)).sum(1)
                        for u in range(k) for v in range(k)], dim=1)


def truth_apply(x, psf, d=1):
    k = int(round(psf.shape[1] ** 0.5))
    return sum(psf[:, u * k + v:u * k + v + 1] * shifted(x, u, v, k, d) for u in range(k) for v in range(k))


def truth_psf_conv(x, weights, basis, d=1):
    return truth_apply(x, truth_synthesize(weights, basis), d)


def psf_inputs(B, C, H, W, J, k, dtype, device, requires_grad=True):
    return (rand(B, C, H, W, dtype=dtype, device=device, requires_grad=requires_grad),
            rand(B, J, H, W, dtype=dtype, device=device, requires_grad=requires_grad, scale=0.5),
            rand(J, k, k, dtype=dtype, device=device, requires_grad=requires_grad, scale=0.5))


def check_against_truth(op, truth, inputs, dtype, what):
    assert inputs[0].dtype == dtype
    check_triton_against_truth(op, truth, inputs, what)


# ---- parity -------------------------------------------------------------------------------

SHAPES = [  # B, C, H, W, J, k, dilation
    (2, 3, 9, 11, 5, 3, 1),
    (1, 4, 13, 8, 7, 5, 2),
    (2, 2, 6, 5, 3, 7, 1),       # k larger than the image
    (1, 3, 10, 10, 40, 7, 1),    # the paper's J
    (1, 35, 8, 9, 4, 3, 3),      # C over one channel block
    (1, 1, 5, 7, 2, 1, 1),       # k = 1
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}H{}W{}J{}k{}d{}".format(*s))
def test_psf_conv_matches_truth_fp32(shape, device):
    B, C, H, W, J, k, d = shape
    check_against_truth(lambda x, w, b: psfops.psf_conv(x, w, b, d), lambda x, w, b: truth_psf_conv(x, w, b, d),
                        psf_inputs(B, C, H, W, J, k, torch.float32, device), torch.float32, "psf_conv")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_psf_ops_dtypes(dtype, device):
    x, w, b = psf_inputs(2, 3, 10, 9, 6, 5, dtype, device)
    check_against_truth(lambda x, w, b: psfops.psf_conv(x, w, b, 2), lambda x, w, b: truth_psf_conv(x, w, b, 2),
                        (x, w, b), dtype, "psf_conv")
    check_against_truth(psfops.synthesize_psf, truth_synthesize, (w, b), dtype, "synthesize_psf")
    psf = rand(2, 25, 10, 9, dtype=dtype, device=device, requires_grad=True, scale=0.3)
    check_against_truth(lambda x, p: psfops.apply_psf(x, p, 2), lambda x, p: truth_apply(x, p, 2),
                        (x, psf), dtype, "apply_psf")


@pytest.mark.parametrize("k,d", [(3, 1), (5, 3), (9, 1)])
def test_apply_psf_matches_truth(k, d, device):
    x = rand(2, 3, 11, 12, device=device, requires_grad=True)
    psf = rand(2, k * k, 11, 12, device=device, requires_grad=True, scale=0.3)
    check_against_truth(lambda x, p: psfops.apply_psf(x, p, d), lambda x, p: truth_apply(x, p, d),
                        (x, psf), torch.float32, "apply_psf")


def test_reference_matches_truth():
    x, w, b = psf_inputs(2, 3, 9, 8, 4, 5, torch.float64, "cpu")
    for d in (1, 2):
        assert_rel_close(reference.psf_conv(x, w, b, d), truth_psf_conv(x, w, b, d), 1e-13, "reference.psf_conv")
        assert_rel_close(reference.psf_conv_convstack(x, w, b, d), truth_psf_conv(x, w, b, d), 1e-13, "convstack")
    assert_rel_close(reference.synthesize_psf(w, b), truth_synthesize(w, b), 1e-13, "reference.synthesize_psf")


@triton.jit
def _product_kernel(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr, DOT: tl.constexpr):
    m, kk, n = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    product = matmul_add(tl.full((M, N), 1.0, tl.float32), tl.load(a_ptr + m[:, None] * K + kk[None, :]),
                         tl.load(b_ptr + kk[:, None] * N + n[None, :]), DOT)
    tl.store(out_ptr + m[:, None] * N + n[None, :], product)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tf32x2_products_keep_float32_accuracy(dtype):
    """psf_conv's half-input d(weights)/d(basis) products: a half operand times a float32 one in two
    tf32 passes, the float32 operand split into its leading tf32 bits and the rest. Both passes
    count: the leading bits alone are more than 1e-4 off (relative) on these operands, the two passes
    within float32 rounding here (the split is plain float32 arithmetic, the same on a GPU, whose
    tf32 rounding of the rest adds at most 2**-20 relative)."""
    a, b = rand(32, 64, dtype=dtype, device="cpu"), rand(64, 16, dtype=torch.float32, device="cpu")
    out = torch.empty(32, 16)
    _product_kernel[(1,)](a, b, out, 32, 64, 16, DOT="tf32x2")
    truth = 1 + a.double() @ b.double()
    lead = (b.view(torch.int32) & -8192).view(torch.float32)
    assert (1 + a.double() @ lead.double() - truth).abs().max() > 1e-4 * truth.abs().max()
    torch.testing.assert_close(out.double(), truth, rtol=2e-6, atol=2e-6 * truth.abs().max().item())


def test_half_inputs_take_tf32x2_for_float32_gradient_products(monkeypatch):
    """On a GPU a half input's products run on its dtype and its products with the float32 d(taps)
    in tf32x2; float32 takes tf32x3 for both, float64 multiply-adds; the interpreter exact float32."""
    from psfops.kernels.psf import _dot_modes
    assert _dot_modes(torch.bfloat16) == ("ieee", "ieee")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _dot_modes(torch.bfloat16) == _dot_modes(torch.float16) == ("half", "tf32x2")
    assert _dot_modes(torch.float32) == ("tf32x3", "tf32x3") and _dot_modes(torch.float64) == ("fma", "fma")


def test_psf_conv_equals_apply_of_synthesized(device):
    x, w, b = psf_inputs(1, 2, 8, 10, 3, 3, torch.float64, device, requires_grad=False)
    with psfops.backend("triton"):
        direct = psfops.psf_conv(x, w, b)
        composed = psfops.apply_psf(x, psfops.synthesize_psf(w, b))
    assert_rel_close(direct, composed, 1e-13, "psf_conv == apply_psf(synthesize_psf)")


@pytest.fixture
def gpu_plans():
    """The GPU's launch plans (8x16-pixel tiles, 64-channel blocks, 128-pixel halo chunks) on 2
    SMs (2 programs; d(taps) 4), in the interpreter: so tile edges, interior tiles, several tiles per program, several
    channel blocks and the cross-program d(basis) reduction all run as a GPU runs them."""
    from psfops.kernels import launch_target
    from psfops.kernels import psf as kernels
    with launch_target(sm_count=2, gpu_plans=True):
        yield kernels


@pytest.mark.parametrize("k,d,J,B,H", [(3, 1, 40, 2, 9), (7, 1, 5, 1, 9), (5, 2, 1, 1, 9), (1, 1, 3, 2, 9),
                                       (9, 1, 2, 1, 5), (3, 1, 80, 2, 9), (3, 3, 128, 2, 9)], ids=lambda v: str(v))
def test_gpu_launch_plans(k, d, J, B, H, gpu_plans, device):
    """Odd sizes (the last row and column of tiles partial), 3 to 12 tiles on 2 programs, C = 19
    in one 32-channel block (13 channels clamped), J of 1, not a power of two, and over 64 (several
    basis blocks), k from 1 to 9, dilation up to 3."""
    p = gpu_plans.plan("fwd", B, 19, H, 40, J, torch.device(device))
    assert (p.TH, p.TW, p.programs) == (8, 16, 2)
    x, w, b = psf_inputs(B, 19, H, 40, J, k, torch.float64, device)
    check_against_truth(lambda x, w, b: psfops.psf_conv(x, w, b, d), lambda x, w, b: truth_psf_conv(x, w, b, d),
                        (x, w, b), torch.float64, "psf_conv")
    check_against_truth(psfops.synthesize_psf, truth_synthesize, (w, b), torch.float64, "synthesize_psf")
    psf = rand(B, k * k, H, 40, dtype=torch.float64, device=device, requires_grad=True)
    check_against_truth(lambda x, p: psfops.apply_psf(x, p, d), lambda x, p: truth_apply(x, p, d),
                        (x, psf), torch.float64, "apply_psf")


def test_gpu_launch_plans_float32(gpu_plans, device):
    """The same in float32, where the matrix products are tl.dot (float64 multiplies and sums)."""
    x, w, b = psf_inputs(1, 20, 9, 40, 40, 7, torch.float32, device)
    check_against_truth(psfops.psf_conv, truth_psf_conv, (x, w, b), torch.float32, "psf_conv")
    check_against_truth(psfops.synthesize_psf, truth_synthesize, (w, b), torch.float32, "synthesize_psf")


def test_plan_tiles_hold_pairs_of_quads():
    """The tap loops take a thread's two adjacent quads from one row: a tile width that is not a
    multiple of 8 is refused, not filtered wrong."""
    from psfops.kernels.psf import Plan
    assert Plan(8, 16, 64, 64, 1, 128, 128, 8, 132).TW == 16
    with pytest.raises(ValueError, match="TW=12"):
        Plan(8, 12, 64, 64, 1, 128, 128, 8, 132)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_launch_plans_half(dtype, gpu_plans, device):
    """Half inputs on the GPU's tiles, where a thread's two adjacent quads share their windows' vectors
    (loaded once, each quad's odd vectors taken from its neighbour's even ones): psf_conv's 8 x 16
    tiles (C = 20 in one 32-channel block, 12 clamped) and apply_psf's forward on 4 x 32 (three
    8-channel blocks, the last partial), with interior, edge and partial tiles (40 x 20 pixels),
    k = 7 and, at dilation 2, windows of five vectors."""
    x, w, b = psf_inputs(1, 20, 20, 40, 6, 7, dtype, device)
    conv = gpu_plans.plan("fwd", 1, 20, 20, 40, 6, torch.device(device), k=7)
    apply = gpu_plans.plan("fwd", 1, 20, 20, 40, 6, torch.device(device), synth=False, k=7)
    assert (conv.TH, conv.TW, conv.BLOCK_C, apply.TH, apply.TW, apply.BLOCK_C) == (8, 16, 32, 4, 32, 8)
    for d in (1, 2):
        check_against_truth(lambda x, w, b: psfops.psf_conv(x, w, b, d), lambda x, w, b: truth_psf_conv(x, w, b, d),
                            (x, w, b), dtype, "psf_conv")
    psf = rand(1, 49, 20, 40, dtype=dtype, device=device, requires_grad=True, scale=0.3)
    check_against_truth(psfops.apply_psf, truth_apply, (x, psf), dtype, "apply_psf")


@pytest.mark.parametrize("k,C,groups", [(7, 30, 4), (5, 36, 4), (3, 19, 2), (1, 3, 1)])
def test_gpu_launch_plans_tap_gradients_held_in_row_groups(k, C, groups, gpu_plans, device):
    """d(taps) up to k = 7 splits the tap rows over thread groups (at most two rows each: at k = 7
    the last group's second row and at k = 5 its last group's both rows repeat row k-1, never
    stored) and sums every channel in registers: C = 30 in one 32-channel block (its loop stops at
    C), C = 36 in three blocks, the last partial; d(psf) of apply_psf straight from the sums,
    psf_conv's through the synthesize backward."""
    assert gpu_plans.dk_row_groups(k) == groups
    p = gpu_plans.plan("dk", 1, C, 9, 40, 6, torch.device(device), k=k)
    assert p.num_warps == 4 * groups and (p.TH, p.TW) == (16, 32)
    if C == 30:
        assert p.BLOCK_C == 32
    if C == 36:
        assert p.BLOCK_C == 16
    x, w, b = psf_inputs(1, C, 9, 40, 6, k, torch.float64, device)
    check_against_truth(psfops.psf_conv, truth_psf_conv, (x, w, b), torch.float64, "psf_conv")
    psf = rand(1, k * k, 9, 40, dtype=torch.float64, device=device, requires_grad=True)
    check_against_truth(psfops.apply_psf, truth_apply, (x, psf), torch.float64, "apply_psf")


@settings(max_examples=12, deadline=None)
@given(B=st.integers(1, 2), C=st.integers(1, 6), H=st.integers(1, 14), W=st.integers(1, 14),
       J=st.integers(1, 9), r=st.integers(0, 3), d=st.integers(1, 3))
def test_psf_conv_hypothesis(B, C, H, W, J, r, d):
    from conftest import DEVICE
    k = 2 * r + 1
    check_against_truth(lambda x, w, b: psfops.psf_conv(x, w, b, d), lambda x, w, b: truth_psf_conv(x, w, b, d),
                        psf_inputs(B, C, H, W, J, k, torch.float32, DEVICE), torch.float32, "psf_conv")


# ---- gradcheck ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_gradcheck_float64(backend, device):
    dev = device if backend == "triton" else "cpu"
    x, w, b = psf_inputs(1, 2, 4, 3, 2, 3, torch.float64, dev)
    psf = rand(1, 9, 4, 3, dtype=torch.float64, device=dev, requires_grad=True)
    fast = backend == "triton"  # random projections: far fewer calls of the interpreted kernels
    with psfops.backend(backend):
        assert torch.autograd.gradcheck(lambda x, w, b: psfops.psf_conv(x, w, b, 2), (x, w, b), fast_mode=fast)
        assert torch.autograd.gradcheck(psfops.synthesize_psf, (w, b), fast_mode=fast)
        assert torch.autograd.gradcheck(psfops.apply_psf, (x, psf), fast_mode=fast)


# ---- layouts, determinism, edge cases ------------------------------------------------------

def test_noncontiguous_and_channels_last(device):
    x, w, b = psf_inputs(2, 4, 9, 7, 3, 3, torch.float32, device, requires_grad=False)
    expect = truth_psf_conv(x.double(), w.double(), b.double())
    variants = {
        "channels_last": (x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last), b),
        "transposed": (x.transpose(2, 3).contiguous().transpose(2, 3), w.transpose(2, 3).contiguous().transpose(2, 3),
                       b.transpose(1, 2).contiguous().transpose(1, 2)),
        "strided": (torch.stack([x, -x], 2).flatten(1, 2)[:, ::2], torch.stack([w, -w], 2).flatten(1, 2)[:, ::2], b),
    }
    for name, (xv, wv, bv) in variants.items():
        assert not (xv.is_contiguous() and wv.is_contiguous() and bv.is_contiguous()), name
        with psfops.backend("triton"):
            assert_rel_close(psfops.psf_conv(xv, wv, bv), expect, 1e-5, name)


def test_gradients_bitwise_deterministic(device):
    x, w, b = psf_inputs(2, 3, 12, 11, 6, 5, torch.float32, device)
    runs = []
    for _ in range(2):
        with psfops.backend("triton"):
            _, grads, _ = value_and_grads(lambda x, w, b: psfops.psf_conv(x, w, b), (x, w, b), seed=3)
            _, sgrads, _ = value_and_grads(psfops.synthesize_psf, (w, b), seed=4)
        runs.append(grads + sgrads)
    for g0, g1 in zip(*runs):
        assert torch.equal(g0, g1)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("B,C", [(0, 3), (2, 0)])
def test_empty_inputs(B, C, backend, device):
    device = device if backend == "triton" else "cpu"
    x, w, b = psf_inputs(B, C, 6, 5, 3, 3, torch.float32, device)
    with psfops.backend(backend):
        y = psfops.psf_conv(x, w, b)
        assert y.shape == x.shape
        y.sum().backward()
        assert psfops.synthesize_psf(w, b).shape == (B, 9, 6, 5)
        assert psfops.apply_psf(x, rand(B, 9, 6, 5, device=device)).shape == x.shape
    assert b.grad is not None and torch.all(b.grad == 0)


def test_nan_propagates_like_reference(device):
    x, w, b = psf_inputs(1, 2, 7, 7, 3, 3, torch.float32, device, requires_grad=False)
    x[0, 1, 3, 3] = float("nan")
    w[0, 2, 0, 0] = float("inf")
    with psfops.backend("triton"):
        y = psfops.psf_conv(x, w, b)
    ref = reference.psf_conv(x, w, b)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert_rel_close(y[finite], ref[finite], 1e-5, "finite part")


# ---- bad input -----------------------------------------------------------------------------

def _good():
    return rand(1, 2, 6, 6), rand(1, 3, 6, 6), rand(3, 3, 3)


BAD_PSF_CONV = [
    ("x", TypeError, lambda x, w, b: (x.numpy(), w, b, 1)),
    ("x", ValueError, lambda x, w, b: (x[0], w, b, 1)),
    ("weights", ValueError, lambda x, w, b: (x, w[:, :, :5], b, 1)),
    ("weights", ValueError, lambda x, w, b: (x, torch.cat([w, w]), b, 1)),
    ("basis", ValueError, lambda x, w, b: (x, w, b[:2], 1)),
    ("basis", ValueError, lambda x, w, b: (x, w, rand(3, 4, 4), 1)),
    ("basis", ValueError, lambda x, w, b: (x, w, rand(3, 3, 5), 1)),
    ("basis", ValueError, lambda x, w, b: (x, w, rand(3, 0, 0), 1)),
    ("dilation", ValueError, lambda x, w, b: (x, w, b, 0)),
    ("dilation", ValueError, lambda x, w, b: (x, w, b, 1.5)),
    ("weights", TypeError, lambda x, w, b: (x, w.double(), b, 1)),
    ("x", TypeError, lambda x, w, b: (x.long(), w, b, 1)),
    ("basis", TypeError, lambda x, w, b: (x, w, b.half(), 1)),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,exc,make", BAD_PSF_CONV, ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(BAD_PSF_CONV)])
def test_psf_conv_bad_input(backend, name, exc, make):
    with psfops.backend(backend), pytest.raises(exc, match=name):
        psfops.psf_conv(*make(*_good()))


def test_apply_and_synthesize_bad_input():
    x, w, b = _good()
    with pytest.raises(ValueError, match="psf"):
        psfops.apply_psf(x, rand(1, 8, 6, 6))          # 8 is not a square
    with pytest.raises(ValueError, match="psf"):
        psfops.apply_psf(x, rand(1, 4, 6, 6))          # k = 2 is even
    with pytest.raises(ValueError, match="psf"):
        psfops.apply_psf(x, rand(1, 9, 6, 7))
    with pytest.raises(ValueError, match="dilation"):
        psfops.apply_psf(x, rand(1, 9, 6, 6), dilation=-1)
    with pytest.raises(TypeError, match="psf"):
        psfops.apply_psf(x, rand(1, 9, 6, 6).to(torch.int32))
    with pytest.raises(ValueError, match="basis"):
        psfops.synthesize_psf(w, rand(4, 3, 3))
    with pytest.raises(ValueError, match="weights"):
        psfops.synthesize_psf(w[0], b)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            psfops.psf_conv(x.cuda(), w, b)



# ---- GPU: compiled kernels at realistic sizes -----------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(8, 64, 256, 256, 40, 7, 1), (2, 16, 97, 131, 40, 5, 2), (4, 3, 64, 64, 40, 3, 1)],
                         ids=lambda s: "B{}C{}H{}W{}J{}k{}d{}".format(*s))
def test_gpu_psf_conv_vs_reference(shape, dtype):
    B, C, H, W, J, k, d = shape
    x, w, b = psf_inputs(B, C, H, W, J, k, dtype, "cuda")
    with psfops.backend("triton"):
        outs, grads, gout = value_and_grads(lambda x, w, b: psfops.psf_conv(x, w, b, d), (x, w, b))
    ref_in = [t.detach().double().requires_grad_(True) for t in (x, w, b)]
    routs, rgrads, _ = value_and_grads(lambda x, w, b: reference.psf_conv(x, w, b, d), ref_in,
                                       tuple(g.double() for g in gout))
    assert_rel_close(outs[0], routs[0], FWD_RTOL[dtype], "gpu forward")
    for g, r in zip(grads, rgrads):
        assert_rel_close(g, r, GRAD_RTOL[dtype], "gpu grad")


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_int64_indexing():
    """A tensor over 2**31 elements: the last planes must be filtered, not wrapped around."""
    B, C, H, W = 1, 131, 4096, 4096  # 2.2e9 elements of x
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GB")
    x = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(B, 2, H, W, device="cuda", dtype=torch.bfloat16)
    b = torch.rand(2, 3, 3, device="cuda", dtype=torch.bfloat16)
    with psfops.backend("triton"):
        y = psfops.psf_conv(x, w, b)
    tail = reference.psf_conv(x[:, -2:].float(), w.float(), b.float())
    assert_rel_close(y[:, -2:], tail, FWD_RTOL[torch.bfloat16], "last planes")
