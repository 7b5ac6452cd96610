"""spatial_normalize: the Triton path (interpreter on CPU, compiled on GPU) against an independent
float64 implementation of the op's definition, gradients, multi-block planes, layouts, bad input
(opcheck, compile and empty input: test_op_table.py)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import psfops
from helpers import (DTYPES, assert_rel_close, check_triton_against_truth, float64_leaves, rand, rel_err,
                     value_and_grads)

MODES = ("softmax", "l1")


def truth(x: torch.Tensor, mode: str, eps: float = 1e-6) -> torch.Tensor:
    """Plane-wise normalization written out: exp(x - max)/sum, or |x|/(sum|x| + eps)."""
    flat = x.flatten(2)
    if mode == "softmax":
        e = torch.exp(flat - flat.max(dim=-1, keepdim=True).values)
        out = e / e.sum(dim=-1, keepdim=True)
    else:
        out = flat.abs() / (flat.abs().sum(dim=-1, keepdim=True) + eps)
    return out.view_as(x)


def check_against_truth(x: torch.Tensor, mode: str, eps: float = 1e-6) -> None:
    """Triton output and dx vs the float64 truth on the same (rounded) input."""
    check_triton_against_truth(lambda t: psfops.spatial_normalize(t, mode, eps), lambda t: truth(t, mode, eps),
                               [x], f"spatial_normalize {mode}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_truth(mode, dtype, device):
    check_against_truth(rand(2, 3, 9, 11, dtype=dtype, device=device, requires_grad=True, scale=2.0), mode)


@pytest.mark.parametrize("mode", MODES)
def test_plane_larger_than_a_block(mode, device):
    from psfops.kernels.normalize import plane_block
    assert plane_block(70 * 70) < 70 * 70 / 2, "the test must run several blocks per plane"
    x = rand(1, 1, 70, 70, device=device, requires_grad=True, scale=3.0)
    check_against_truth(x, mode)


# (SM count, B, C, H, W) -> (BLOCK, chunks per plane, values per chunk) on the GPU
GPU_LAUNCHES = [
    ((132, 8, 64, 128, 128), (4096, 1, 128 * 128)),    # many planes: one program per plane
    ((132, 1, 3, 1024, 1024), (2048, 171, 3 * 2048)),  # few large planes: split
    ((132, 1, 40, 128, 128), (2048, 8, 2048)),         # the PSF head's maps, one image
    ((132, 1, 1, 256, 256), (2048, 32, 2048)),
    ((8, 1, 1, 300, 300), (2048, 22, 2 * 2048)),       # chunks of two blocks, the last one short
    ((1, 1, 2, 64, 80), (4096, 1, 64 * 80)),           # a whole plane over two blocks
]


def test_launch_shapes_on_the_gpu(monkeypatch):
    from psfops.kernels import launch_target
    from psfops.kernels import normalize as kn
    with launch_target(gpu_plans=True):
        for (sms, B, C, H, W), expect in GPU_LAUNCHES:
            assert kn.launch_shape(B * C, H * W, sms) == expect, (sms, B, C, H, W)


@pytest.mark.parametrize("case", [c for c in GPU_LAUNCHES if c[0][1] * c[0][2] * c[0][3] * c[0][4] <= 2 ** 17],
                         ids=lambda c: "sms{}-B{}-C{}-{}x{}".format(*c[0]))
@pytest.mark.parametrize("mode", MODES)
def test_gpu_launch_shapes_run_in_the_interpreter(case, mode, device, monkeypatch):
    """The GPU's block sizes and chunk counts (not the interpreter's own), forward and backward:
    split planes combine their chunks' partials (softmax: the chunk maxima differ) exactly."""
    from psfops.kernels import launch_target
    (sms, B, C, H, W), _ = case
    x = rand(B, C, H, W, device=device, requires_grad=True, scale=3.0)
    x.data[..., : H // 2, :] -= 20.0  # chunk maxima far apart: a wrong rescaling shows
    with launch_target(sm_count=sms, gpu_plans=True):
        check_against_truth(x, mode)


@pytest.mark.parametrize("mode", MODES)
def test_split_planes_with_nonfinite_chunks(mode, device):
    """Interpreter launch (a pretend GPU of 4 SMs): one plane in 3 chunks of 1024 values; an
    all -inf chunk contributes nothing to the softmax sum, and the other chunks are far below 0
    (where a chunk max of 0 instead of -inf would underflow the sum)."""
    from psfops.kernels import normalize as kn
    from psfops.kernels.launch import sm_count
    assert kn.launch_shape(1, 48 * 64, sm_count(torch.device(device)))[1] == 3
    x = rand(1, 1, 48, 64, device=device, scale=2.0) - 200.0
    x[0, 0, :16] = float("-inf")  # the first chunk (16 rows of 64 values)
    x.requires_grad_(True)
    if mode == "softmax":
        with psfops.backend("triton"):
            y = psfops.spatial_normalize(x, mode)
        assert_rel_close(y, truth(x.detach().double(), mode), 1e-5, "softmax with an all -inf chunk")
        assert torch.all(y[0, 0, :16] == 0)
    else:
        check_against_truth(x.detach().clamp_min(-1e4).requires_grad_(True), mode)


@pytest.mark.parametrize("mode", MODES)
def test_basis_view_sums_to_one(mode, device):
    basis = rand(40, 7, 7, device=device)
    with psfops.backend("triton"):
        k = psfops.spatial_normalize(basis.view(1, 40, 7, 7), mode).view(40, 7, 7)
    sums = k.sum(dim=(1, 2)).double()
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    assert_rel_close(k, truth(basis.double().view(1, 40, 7, 7), mode).view(40, 7, 7), 1e-5, mode)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), C=st.integers(1, 4), H=st.integers(1, 20), W=st.integers(1, 20),
       mode=st.sampled_from(MODES))
def test_hypothesis_shapes(B, C, H, W, mode):
    from conftest import DEVICE
    # A 1-pixel l1 plane has dx = sign(x) * dy * eps / (|x| + eps)**2: with eps << |x| that is
    # pure cancellation, ill-conditioned in any precision (the fp32 reference is off by ~1e-2
    # too), so there eps is comparable to |x|.
    eps = 0.5 if (mode == "l1" and H * W == 1) else 1e-6
    check_against_truth(rand(B, C, H, W, device=DEVICE, requires_grad=True, scale=2.0), mode, eps)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode, device):
    x = rand(1, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    with psfops.backend("triton"):
        assert torch.autograd.gradcheck(lambda t: psfops.spatial_normalize(t, mode, 1e-3), (x,))


def test_l1_gradient_at_zero_is_zero(device):
    """d|x|/dx at x = 0 is taken as 0 (torch.abs's choice): a zero input gets a zero gradient."""
    x = rand(1, 1, 4, 5, device=device)
    x[0, 0, 1, 2] = 0.0
    x.requires_grad_(True)
    with psfops.backend("triton"):
        psfops.spatial_normalize(x, "l1").mul(rand(1, 1, 4, 5, device=device)).sum().backward()
    assert x.grad[0, 0, 1, 2] == 0
    assert (x.grad != 0).sum() == 19


def test_nonfinite_propagate_like_truth(device):
    x = rand(3, 1, 5, 6, device=device, scale=2.0)
    x[0, 0, :2] = float("-inf")   # leading -inf blocks: still a valid softmax of the rest
    x[1, 0, 2, 3] = float("nan")  # NaN: the whole plane is NaN
    x[2, 0] = float("-inf")       # all -inf: 0/0 = NaN, as torch.softmax
    with psfops.backend("triton"):
        y = psfops.spatial_normalize(x, "softmax")
    t = truth(x.double(), "softmax")
    assert torch.equal(torch.isnan(y), torch.isnan(t))
    assert torch.isnan(y[1:]).all() and not torch.isnan(y[0]).any()
    assert_rel_close(y[0], t[0], 1e-5, "finite plane")


def test_gradients_bitwise_deterministic(device):
    x = rand(2, 3, 33, 40, device=device, requires_grad=True)
    for mode in MODES:
        with psfops.backend("triton"):
            g0 = value_and_grads(lambda t: psfops.spatial_normalize(t, mode), [x], seed=1)[1][0]
            g1 = value_and_grads(lambda t: psfops.spatial_normalize(t, mode), [x], seed=1)[1][0]
        assert torch.equal(g0, g1)


@pytest.mark.parametrize("B,C", [(0, 3), (2, 0)])
def test_empty(B, C, device):
    x = rand(B, C, 5, 6, device=device, requires_grad=True)
    with psfops.backend("triton"):
        y = psfops.spatial_normalize(x)
        y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape


def test_noncontiguous_and_channels_last(device):
    x = rand(2, 3, 7, 9, device=device)
    expect = truth(x.double(), "softmax")
    variants = {"channels_last": x.to(memory_format=torch.channels_last),
                "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
                "strided": torch.stack([x, -x], 2).flatten(1, 2)[:, ::2]}
    for name, xv in variants.items():
        assert not xv.is_contiguous(), name
        with psfops.backend("triton"):
            y = psfops.spatial_normalize(xv)
        assert y.is_contiguous()
        assert_rel_close(y, expect, 1e-5, name)


BAD = [
    ("x", TypeError, lambda x: (x.numpy(),)),
    ("x", TypeError, lambda x: (x.long(),)),
    ("x", ValueError, lambda x: (x[0],)),
    ("mode", ValueError, lambda x: (x, "max")),
    ("eps", ValueError, lambda x: (x, "l1", -1.0)),
    ("eps", ValueError, lambda x: (x, "l1", "1e-6")),
    ("eps", ValueError, lambda x: (x, "l1", float("nan"))),
    ("eps", ValueError, lambda x: (x, "l1", float("inf"))),
]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("name,exc,make", BAD, ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(BAD)])
def test_bad_input(backend, name, exc, make):
    with psfops.backend(backend), pytest.raises(exc, match=name):
        psfops.spatial_normalize(*make(rand(1, 2, 4, 4)))


def test_half_precision_gradient_as_accurate_as_the_reference(device):
    """The backward recomputes y in float32 from x and the saved plane stats instead of reading
    the rounded half-precision y: its dx is as close to the float64 truth as the reference's.
    (fp16: the interpreter rounds fp16 like a GPU; it truncates bf16, so bf16 is not used here.)"""
    x = rand(1, 2, 96, 96, dtype=torch.float16, device=device, requires_grad=True, scale=2.0)
    with psfops.backend("triton"):
        _, (dx,), g = value_and_grads(psfops.spatial_normalize, [x])
    xr = x.detach().cpu().requires_grad_(True)
    _, (dxr,), _ = value_and_grads(psfops.reference.spatial_normalize, [xr], tuple(t.cpu() for t in g))
    _, (dxt,), _ = value_and_grads(lambda t: truth(t, "softmax", 1e-6), float64_leaves(x),
                                   tuple(t.double().cpu() for t in g))
    assert rel_err(dx, dxt) <= 1.05 * rel_err(dxr, dxt)



@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_gpu_large_plane(mode):
    """A 4096x4096 plane (4096 loop steps of 4096 values) vs the float64 truth."""
    x = rand(2, 1, 4096, 4096, device="cuda", requires_grad=True, scale=3.0)
    check_against_truth(x, mode)
