"""lstm_cell: the fused Triton ConvLSTM update against an independent float64 implementation,
gradients of both outputs, determinism, layouts, bad input (opcheck, compile and empty input:
test_op_table.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import psfops
from helpers import (DTYPES, FWD_RTOL, GRAD_RTOL, assert_rel_close, check_triton_against_truth, float64_leaves, rand,
                     value_and_grads)


def truth(gates, c_prev):
    """i, f, g, o = channel quarters; c = sig(f) c_prev + sig(i) tanh(g); h = sig(o) tanh(c)."""
    C = c_prev.shape[1]
    sig = lambda t: 1.0 / (1.0 + torch.exp(-t))  # noqa: E731
    i, f, g, o = (gates[:, q * C:(q + 1) * C] for q in range(4))
    c = sig(f) * c_prev + sig(i) * torch.tanh(g)
    return sig(o) * torch.tanh(c), c


def inputs(B, C, H, W, dtype=torch.float32, device="cpu"):
    return [rand(B, 4 * C, H, W, dtype=dtype, device=device, requires_grad=True, scale=2.0),
            rand(B, C, H, W, dtype=dtype, device=device, requires_grad=True)]


def check_against_truth(ins, dtype):
    assert ins[0].dtype == dtype
    check_triton_against_truth(psfops.lstm_cell, truth, ins, "lstm_cell")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_truth(dtype, device):
    check_against_truth(inputs(2, 3, 9, 11, dtype, device), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 40.0])
def test_tiny_and_huge_activations(scale, dtype, device):
    """tanh near 0 (where 1 - exp(-2|x|) cancels) and in saturation keeps full relative precision."""
    ins = [rand(2, 12, 5, 6, dtype=dtype, device=device, requires_grad=True, scale=scale),
           rand(2, 3, 5, 6, dtype=dtype, device=device, requires_grad=True, scale=scale)]
    check_against_truth(ins, dtype)


def test_several_pixel_tiles(device):
    from psfops.kernels.lstm import lstm_grid
    ins = inputs(2, 2, 33, 40, device=device)
    assert lstm_grid(ins[1])[0][0] > 2 * 2  # more programs than (b, c) planes: several tiles per plane
    check_against_truth(ins, torch.float32)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), C=st.integers(1, 5), H=st.integers(1, 12), W=st.integers(1, 12))
def test_hypothesis_shapes(B, C, H, W):
    from conftest import DEVICE
    check_against_truth(inputs(B, C, H, W, device=DEVICE), torch.float32)


def test_gradcheck_float64(device):
    with psfops.backend("triton"):
        assert torch.autograd.gradcheck(psfops.lstm_cell, inputs(1, 1, 2, 3, torch.float64, device))


def test_only_h_used(device):
    """Backpropagating through h alone (c unused) gives the truth's gradients (dc = 0)."""
    ins = inputs(1, 2, 5, 6, device=device)
    with psfops.backend("triton"):
        psfops.lstm_cell(*ins)[0].square().sum().backward()
    tins = float64_leaves(*ins)
    truth(*tins)[0].square().sum().backward()
    for t, r in zip(ins, tins):
        assert_rel_close(t.grad, r.grad, GRAD_RTOL[torch.float32], "h-only grad")


def test_saturation_and_nan(device):
    gates, c_prev = (t.detach() for t in inputs(1, 2, 4, 4, device=device))
    gates[0, 0, 0, 0] = 1e4     # i saturates: no overflow
    gates[0, 4, 1, 1] = -1e4    # g saturates to -1
    gates[0, 6, 2, 2] = float("nan")  # o is NaN: h NaN, c finite
    with psfops.backend("triton"):
        h, c = psfops.lstm_cell(gates, c_prev)
    th, tc = truth(gates.double(), c_prev.double())
    assert torch.equal(torch.isnan(h), torch.isnan(th)) and torch.equal(torch.isnan(c), torch.isnan(tc))
    assert torch.isnan(h).sum() == 1 and not torch.isnan(c).any()
    finite = ~torch.isnan(th)
    assert_rel_close(h[finite], th[finite], 1e-5, "h")
    assert_rel_close(c, tc, 1e-5, "c")


def test_gradients_bitwise_deterministic(device):
    ins = inputs(2, 3, 13, 14, device=device)
    with psfops.backend("triton"):
        g0 = value_and_grads(psfops.lstm_cell, ins, seed=2)[1]
        g1 = value_and_grads(psfops.lstm_cell, ins, seed=2)[1]
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)


def test_noncontiguous_and_channels_last(device):
    gates, c_prev = (t.detach() for t in inputs(2, 3, 7, 9, device=device))
    th, tc = truth(gates.double(), c_prev.double())
    cl = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    tr = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731
    for name, f in {"channels_last": cl, "transposed": tr}.items():
        with psfops.backend("triton"):
            h, c = psfops.lstm_cell(f(gates), f(c_prev))
        assert h.is_contiguous() and c.is_contiguous()
        assert_rel_close(h, th, 1e-5, name)
        assert_rel_close(c, tc, 1e-5, name)


@pytest.mark.parametrize("B,C", [(0, 3), (2, 0)])
def test_empty(B, C, device):
    ins = inputs(B, C, 4, 5, device=device)
    with psfops.backend("triton"):
        h, c = psfops.lstm_cell(*ins)
        (h.sum() + c.sum()).backward()
    assert h.shape == c.shape == (B, C, 4, 5)
    assert ins[0].grad.shape == ins[0].shape and ins[1].grad.shape == ins[1].shape


BAD = [
    ("gates", TypeError, lambda g, c: (g.numpy(), c)),
    ("gates", ValueError, lambda g, c: (g[0], c)),
    ("gates", ValueError, lambda g, c: (g[:, :7], c)),       # not a multiple of 4
    ("c_prev", ValueError, lambda g, c: (g, c[:, :1])),
    ("c_prev", ValueError, lambda g, c: (g, c[..., :3])),
    ("c_prev", TypeError, lambda g, c: (g, c.double())),
    ("c_prev", TypeError, lambda g, c: (g, c.int())),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,exc,make", BAD, ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(BAD)])
def test_bad_input(backend, name, exc, make):
    with psfops.backend(backend), pytest.raises(exc, match=name):
        psfops.lstm_cell(*make(rand(1, 8, 4, 4), rand(1, 2, 4, 4)))



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_realistic_sizes(dtype):
    check_against_truth(inputs(4, 64, 96, 96, dtype, "cuda"), dtype)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_int64_indexing():
    """gates over 2**31 elements: the last planes are updated, not wrapped around."""
    B, C, H, W = 1, 33, 4096, 4096  # gates: 4*33*4096*4096 = 2.2e9 elements
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB")
    gates = torch.randn(B, 4 * C, H, W, device="cuda", dtype=torch.bfloat16)
    c_prev = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16)
    with psfops.backend("triton"):
        h, c = psfops.lstm_cell(gates, c_prev)
    last = torch.cat([gates[:, i * C + C - 1:i * C + C] for i in range(4)], 1)
    h_ref, c_ref = psfops.reference.lstm_cell(last.float(), c_prev[:, -1:].float())
    assert_rel_close(h[:, -1:], h_ref, FWD_RTOL[torch.bfloat16], "h, last plane")
    assert_rel_close(c[:, -1:], c_ref, FWD_RTOL[torch.bfloat16], "c, last plane")
