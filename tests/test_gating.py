"""gated_blend and gated_fusion: the Triton path against an independent float64 implementation
(explicit sigmoid, einsum gate), gradients (broadcast gate, dweight/dbias), determinism, layouts,
bad input (opcheck, compile and empty input: test_op_table.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import psfops
from helpers import DTYPES, assert_rel_close, check_triton_against_truth, rand, value_and_grads


def truth_blend(cur, prev, gate):
    s = 1.0 / (1.0 + torch.exp(-gate))
    return s * cur + (1.0 - s) * prev


def truth_fusion(cur, prev, weight, bias=None):
    C = cur.shape[1]
    w = weight.reshape(C, 2 * C)
    gate = torch.einsum("oi,bihw->bohw", w[:, :C], cur) + torch.einsum("oi,bihw->bohw", w[:, C:], prev)
    if bias is not None:
        gate = gate + bias.view(1, C, 1, 1)
    return truth_blend(cur, prev, gate)


def check_against_truth(op, truth, inputs, dtype, what):
    assert inputs[0].dtype == dtype
    check_triton_against_truth(op, truth, inputs, what)


def blend_inputs(B, C, H, W, gate_c, dtype=torch.float32, device="cpu"):
    return [rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True),
            rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True),
            rand(B, gate_c, H, W, dtype=dtype, device=device, requires_grad=True, scale=2.0)]


def fusion_inputs(B, C, H, W, bias=True, conv_shape=True, dtype=torch.float32, device="cpu"):
    wshape = (C, 2 * C, 1, 1) if conv_shape else (C, 2 * C)
    ins = [rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True),
           rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True),
           rand(*wshape, dtype=dtype, device=device, requires_grad=True, scale=2 / max(2 * C, 1) ** 0.5)]
    if bias:
        ins.append(rand(C, dtype=dtype, device=device, requires_grad=True))
    return ins


def fusion(*ins):
    return psfops.gated_fusion(*ins)


# ---- parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("broadcast", [False, True], ids=["gateC", "gate1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_blend_matches_truth(dtype, broadcast, device):
    C = 5
    check_against_truth(psfops.gated_blend, truth_blend,
                        blend_inputs(2, C, 9, 11, 1 if broadcast else C, dtype, device), dtype, "gated_blend")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fusion_matches_truth(dtype, device):
    check_against_truth(fusion, truth_fusion, fusion_inputs(2, 6, 9, 11, dtype=dtype, device=device),
                        dtype, "gated_fusion")


@pytest.mark.parametrize("B,C,H,W,bias,conv_shape",
                         [(1, 1, 5, 7, True, True), (1, 3, 5, 7, False, False), (1, 40, 5, 7, True, False),
                          (2, 3, 33, 40, True, True)],
                         ids=["C1", "C3-nobias-2d", "C40-two-channel-tiles", "several-pixel-tiles"])
def test_fusion_shapes(B, C, H, W, bias, conv_shape, device):
    from psfops.kernels.gating import fusion_blocks
    if H * W > 1000:  # dweight/dbias partial sums from several programs per image
        assert fusion_blocks(C, H * W)[1] < H * W
    check_against_truth(fusion, truth_fusion, fusion_inputs(B, C, H, W, bias, conv_shape, device=device),
                        torch.float32, "gated_fusion")


def test_blend_channel_and_pixel_tiles(device):
    """Broadcast gate over several channel blocks and pixel tiles (its C-reduction spans blocks)."""
    from psfops.kernels.gating import blend_blocks
    BC, BP = blend_blocks(20, 33 * 40, torch.float32)
    assert BC < 20 and BP < 33 * 40
    check_against_truth(psfops.gated_blend, truth_blend, blend_inputs(2, 20, 33, 40, 1, device=device),
                        torch.float32, "gated_blend")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_fusion_gpu_launch_shapes(dtype, device, monkeypatch):
    """The GPU's tiles under the interpreter: 64-pixel tiles (3 per image here, the last one
    short), two channel tiles of 32 (C=40), the dW partials of 6 programs; the products are exact
    float32 products with float32 sums, as on the tensor cores (the interpreter runs every
    non-float64 product as "ieee"; on a GPU float16 operands go to the tensor cores as they are)."""
    from psfops.kernels import gating, launch_target
    with launch_target(gpu_plans=True):
        assert gating.fusion_blocks(40, 9 * 20) == (32, 64) and gating.dweight_chunks() == 256
        check_against_truth(fusion, truth_fusion, fusion_inputs(2, 40, 9, 20, dtype=dtype, device=device),
                            dtype, "gated_fusion")


def test_blend_gpu_launch_shapes(device, monkeypatch):
    """The GPU's tiles under the interpreter: bfloat16 8 channels x 256 pixels."""
    from psfops.kernels import gating, launch_target
    with launch_target(gpu_plans=True):
        assert gating.blend_blocks(20, 33 * 40, torch.bfloat16) == (8, 256)
        for gate_c in (20, 1):
            check_against_truth(psfops.gated_blend, truth_blend,
                                blend_inputs(2, 20, 33, 40, gate_c, torch.bfloat16, device), torch.bfloat16,
                                "gated_blend")


def test_fusion_float64_path(device):
    """float64 takes the multiply-and-sum path (no tl.dot): exact to float64 rounding."""
    check_against_truth(fusion, truth_fusion, fusion_inputs(2, 18, 4, 5, dtype=torch.float64, device=device),
                        torch.float64, "gated_fusion")


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), C=st.integers(1, 6), H=st.integers(1, 12), W=st.integers(1, 12),
       broadcast=st.booleans(), bias=st.booleans())
def test_hypothesis_shapes(B, C, H, W, broadcast, bias):
    from conftest import DEVICE
    check_against_truth(psfops.gated_blend, truth_blend,
                        blend_inputs(B, C, H, W, 1 if broadcast else C, device=DEVICE), torch.float32, "blend")
    check_against_truth(fusion, truth_fusion, fusion_inputs(B, C, H, W, bias, device=DEVICE),
                        torch.float32, "fusion")


# ---- gradcheck, determinism ----------------------------------------------------------------

def test_gradcheck_float64(device):
    """fast_mode (random projections): a few kernel launches instead of one per input element."""
    with psfops.backend("triton"):
        for gate_c in (3, 1):
            assert torch.autograd.gradcheck(psfops.gated_blend, blend_inputs(1, 3, 3, 4, gate_c, torch.float64,
                                                                             device), fast_mode=True)
        for bias in (True, False):
            assert torch.autograd.gradcheck(fusion, fusion_inputs(1, 2, 3, 4, bias, dtype=torch.float64,
                                                                  device=device), fast_mode=True)


def test_gradients_bitwise_deterministic(device):
    blend = blend_inputs(2, 7, 20, 21, 1, device=device)   # broadcast gate: reduced over C
    fus = fusion_inputs(2, 20, 20, 21, device=device)       # dweight, dbias: reduced over pixels
    runs = []
    for _ in range(2):
        with psfops.backend("triton"):
            runs.append(value_and_grads(psfops.gated_blend, blend, seed=5)[1]
                        + value_and_grads(fusion, fus, seed=6)[1])
    for g0, g1 in zip(*runs):
        assert torch.equal(g0, g1)


# ---- layouts, edge cases --------------------------------------------------------------------

def test_noncontiguous_and_channels_last(device):
    cur, prev, w, b = (t.detach() for t in fusion_inputs(2, 4, 7, 9, device=device))
    gate = rand(2, 1, 7, 9, device=device)
    expect_f = truth_fusion(cur.double(), prev.double(), w.double(), b.double())
    expect_b = truth_blend(cur.double(), prev.double(), gate.double())
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    tr = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731
    for name, f in {"channels_last": cl, "transposed": tr}.items():
        wv = w.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous weight too
        with psfops.backend("triton"):
            assert_rel_close(psfops.gated_fusion(f(cur), f(prev), wv, b), expect_f, 1e-5, name)
            assert_rel_close(psfops.gated_blend(f(cur), f(prev), f(gate)), expect_b, 1e-5, name)


@pytest.mark.parametrize("B,C", [(0, 3), (2, 0)])
def test_empty(B, C, device):
    blend = blend_inputs(B, C, 4, 5, 1, device=device)
    fus = fusion_inputs(B, C, 4, 5, device=device)
    with psfops.backend("triton"):
        y = psfops.gated_blend(*blend)
        z = fusion(*fus)
        (y.sum() + z.sum()).backward()
    assert y.shape == z.shape == (B, C, 4, 5)
    for t in blend + fus:
        assert t.grad.shape == t.shape and torch.all(t.grad == 0)


def test_nan_propagates_like_truth(device):
    cur, prev, w, b = (t.detach() for t in fusion_inputs(1, 3, 5, 5, device=device))
    cur[0, 1, 2, 2] = float("nan")
    with psfops.backend("triton"):
        y = psfops.gated_fusion(cur, prev, w, b)
    t = truth_fusion(cur.double(), prev.double(), w.double(), b.double())
    assert torch.equal(torch.isnan(y), torch.isnan(t))
    assert torch.isnan(y[0, :, 2, 2]).all()  # the gate mixes channels: every channel at the pixel


# ---- bad input -----------------------------------------------------------------------------

BAD_BLEND = [
    ("cur", TypeError, lambda c, p, g: (c.numpy(), p, g)),
    ("cur", ValueError, lambda c, p, g: (c[0], p, g)),
    ("prev", ValueError, lambda c, p, g: (c, p[:, :1], g)),
    ("prev", TypeError, lambda c, p, g: (c, p.double(), g)),
    ("gate", ValueError, lambda c, p, g: (c, p, g[:, :, :3])),
    ("gate", ValueError, lambda c, p, g: (c, p, torch.cat([g, g], 1))),  # 2 channels of C=3
    ("gate", TypeError, lambda c, p, g: (c, p, g.int())),
]

BAD_FUSION = [
    ("cur", TypeError, lambda c, p, w, b: (c.half(), p, w, b)),
    ("prev", ValueError, lambda c, p, w, b: (c, p[..., :3], w, b)),
    ("weight", ValueError, lambda c, p, w, b: (c, p, w[:, :4], b)),
    ("weight", ValueError, lambda c, p, w, b: (c, p, w.view(3, 6, 1, 1).expand(3, 6, 2, 1), b)),
    ("weight", TypeError, lambda c, p, w, b: (c, p, w.double(), b)),
    ("weight", TypeError, lambda c, p, w, b: (c, p, w.tolist(), b)),
    ("bias", ValueError, lambda c, p, w, b: (c, p, w, b[:2])),
    ("bias", TypeError, lambda c, p, w, b: (c, p, w, b.long())),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,exc,make", BAD_BLEND, ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(BAD_BLEND)])
def test_blend_bad_input(backend, name, exc, make):
    with psfops.backend(backend), pytest.raises(exc, match=name):
        psfops.gated_blend(*make(rand(1, 3, 4, 4), rand(1, 3, 4, 4), rand(1, 1, 4, 4)))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,exc,make", BAD_FUSION, ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(BAD_FUSION)])
def test_fusion_bad_input(backend, name, exc, make):
    with psfops.backend(backend), pytest.raises(exc, match=name):
        psfops.gated_fusion(*make(rand(1, 3, 4, 4), rand(1, 3, 4, 4), rand(3, 6), rand(3)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_realistic_sizes(dtype):
    check_against_truth(fusion, truth_fusion, fusion_inputs(4, 80, 128, 128, dtype=dtype, device="cuda"),
                        dtype, "gated_fusion")
    check_against_truth(psfops.gated_blend, truth_blend, blend_inputs(4, 80, 128, 128, 1, dtype, "cuda"),
                        dtype, "gated_blend")


def test_one_dot_vocabulary(monkeypatch):
    """Every kernel names its tile products from one vocabulary: float64 multiplies and sums, the
    interpreter runs exact float32 products, a GPU keeps half operands on the tensor cores and
    gives float32 the mode the caller asks for; an unknown mode is refused by name."""
    from psfops.kernels import _common
    assert _common.dot_mode(torch.float64, float32="tf32x3") == "fma"
    assert _common.dot_mode(torch.bfloat16) == "ieee"  # this suite runs in the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _common.dot_mode(torch.float16) == "half" and _common.dot_mode(torch.bfloat16) == "half"
    assert _common.dot_mode(torch.float32) == "ieee" and _common.dot_mode(torch.float32, "tf32x3") == "tf32x3"
    with pytest.raises(ValueError, match="float32"):
        _common.dot_mode(torch.float32, float32="tf32")
