"""psfops.nn modules: DynamicPSF (near-identity init, forward/grads vs a float64 composition),
GatedFusion (== nn.Conv2d + sigmoid + blend, same parameters and init), SpatialNorm, and one
torch.compile(fullgraph=True) test over a stack of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import psfops
from psfops.nn import DynamicPSF, GatedFusion, SpatialNorm
from helpers import GRAD_RTOL, assert_rel_close, rand
from realdata import VENDORED


def truth_dynamic_psf(m: DynamicPSF, x: torch.Tensor) -> torch.Tensor:
    """Float64 DynamicPSF written out: softmax_J(conv3x3(x)), plane-softmax of gain * basis, then
    y[c, p] = sum_j w[j, p] sum_{u,v} k[j, u, v] x[c, p + (u - r, v - r)] by explicit shifts."""
    head = m.weight_head
    w = torch.softmax(F.conv2d(x, head.weight.double(), head.bias.double(), padding=1), dim=1)
    J, k, _ = m.basis.shape
    logits = m.basis_gain * m.basis.double().flatten(1)
    kern = (torch.exp(logits - logits.max(1, keepdim=True).values))
    kern = (kern / kern.sum(1, keepdim=True)).view(J, k, k)
    r = k // 2
    H, W = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r))
    y = torch.zeros_like(x)
    for u in range(k):
        for v in range(k):
            tap = (w * kern[:, u, v].view(1, J, 1, 1)).sum(1, keepdim=True)
            y = y + tap * xp[..., u:u + H, v:v + W]
    return y


def test_fresh_dynamic_psf_is_near_identity():
    torch.manual_seed(0)
    m = DynamicPSF(8, num_basis=40, kernel_size=7)
    x = rand(2, 8, 24, 24)
    y, w = m(x, return_weights=True)
    assert (y - x).norm() / x.norm() < 0.05
    assert w.shape == (2, 40, 24, 24)
    assert torch.allclose(w.sum(1), torch.ones(2, 24, 24), atol=1e-5)
    k = m.kernels()
    assert k.shape == (40, 7, 7) and (k >= 0).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(40), atol=1e-5)
    assert (k[:, 3, 3] > 0.95).all()  # near a delta
    assert k.std(0).max() > 0          # but the J kernels differ (symmetry broken)
    assert m.basis.abs().max() < 0.2   # stored at 1/basis_gain: the scale of the conv weights


def test_fresh_dynamic_psf_near_identity_on_real_image():
    from PIL import Image
    path = sorted((VENDORED / "input").glob("*.png"))[0]
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(img[:64, :64]).permute(2, 0, 1)[None].contiguous()
    torch.manual_seed(0)
    y = DynamicPSF(3, num_basis=40, kernel_size=7)(x)
    assert (y - x).norm() / x.norm() < 0.01


def test_basis_gain_scales_what_one_adam_step_does_to_the_logits():
    """The stored basis is the logits / basis_gain: the same kernels at init, and a first Adam
    step (which moves every parameter by lr) moves the logits by gain * lr."""
    x = rand(1, 2, 9, 9)
    steps = {}
    for gain in (1.0, 50.0):
        torch.manual_seed(0)
        m = DynamicPSF(2, num_basis=3, kernel_size=5, basis_gain=gain)
        k0, logits0 = m.kernels().detach(), gain * m.basis.detach().clone()
        steps[gain] = k0
        opt = torch.optim.Adam([m.basis], lr=1e-3)
        m(x).mul(rand(1, 2, 9, 9)).sum().backward()
        opt.step()
        moved = (gain * m.basis.detach() - logits0).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, gain * 1e-3), rtol=1e-2, atol=0)  # float32 at |logit| 9
    torch.testing.assert_close(steps[1.0], steps[50.0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="basis_gain"):
        DynamicPSF(2, basis_gain=0)


def test_basis_learns_a_blur_in_a_short_adam_run():
    """Fit a fresh DynamicPSF to a 3x3 box blur with Adam at lr 1e-3 for 60 steps: with the gain
    the kernels leave the delta (mean L1 move measured 1.67); without it (gain 1) they stay at
    it (0.0045)."""
    torch.manual_seed(0)
    x = rand(2, 3, 16, 16)
    target = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    moved = {}
    for gain in (1.0, 50.0):
        torch.manual_seed(1)
        m = DynamicPSF(3, num_basis=4, kernel_size=5, basis_gain=gain)
        k0 = m.kernels().detach()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        for _ in range(60):
            opt.zero_grad()
            F.mse_loss(m(x), target).backward()
            opt.step()
        moved[gain] = (m.kernels().detach() - k0).abs().sum((1, 2)).mean().item()
    assert moved[50.0] > 0.5 and moved[1.0] < 0.05, moved


def test_dynamic_psf_l1_basis():
    torch.manual_seed(0)
    m = DynamicPSF(4, num_basis=6, kernel_size=5, basis_norm="l1")
    x = rand(1, 4, 16, 16)
    assert (m(x) - x).norm() / x.norm() < 0.05
    assert torch.allclose(m.kernels().sum((1, 2)), torch.ones(6), atol=1e-5)


def test_dynamic_psf_matches_truth_triton(device):
    torch.manual_seed(1)
    m = DynamicPSF(3, num_basis=5, kernel_size=5, dilation=1).to(device)
    with torch.no_grad():  # move away from the init so every term matters
        m.basis.add_(torch.randn_like(m.basis))
    x = rand(1, 3, 9, 10, device=device, requires_grad=True)
    with psfops.backend("triton"):
        y = m(x)
    g = rand(*y.shape, device=device)
    params = [x, m.basis, m.weight_head.weight]
    grads = torch.autograd.grad(y, params, g)
    xd = x.detach().double().requires_grad_(True)
    md = DynamicPSF(3, num_basis=5, kernel_size=5).double()
    md.load_state_dict(m.state_dict())
    yd = truth_dynamic_psf(md, xd)
    tgrads = torch.autograd.grad(yd, [xd, md.basis, md.weight_head.weight], g.double())
    assert_rel_close(y, yd, 1e-5, "DynamicPSF forward")
    for name, a, b in zip(("x", "basis", "head weight"), grads, tgrads):
        assert_rel_close(a, b, GRAD_RTOL[torch.float32], f"DynamicPSF grad {name}")


def test_gated_fusion_is_conv2d_with_same_init():
    for bias in (True, False):
        torch.manual_seed(7)
        g = GatedFusion(5, bias=bias)
        torch.manual_seed(7)
        c = nn.Conv2d(10, 5, 1, bias=bias)
        assert [(n, p.shape) for n, p in g.named_parameters()] == [(n, p.shape) for n, p in c.named_parameters()]
        for p, q in zip(g.parameters(), c.parameters()):
            assert torch.equal(p, q)
        g.load_state_dict(c.state_dict())  # interchangeable state dicts


def test_gated_fusion_matches_conv_sigmoid_blend(device):
    torch.manual_seed(3)
    g = GatedFusion(4).to(device)
    cur, prev = rand(2, 4, 7, 8, device=device, requires_grad=True), rand(2, 4, 7, 8, device=device, requires_grad=True)
    with psfops.backend("triton"):
        y = g(cur, prev)
    go = rand(*y.shape, device=device)
    grads = torch.autograd.grad(y, [cur, prev, g.weight, g.bias], go)
    conv = nn.Conv2d(8, 4, 1).double()
    conv.load_state_dict(g.state_dict())
    c64, p64 = cur.detach().double().requires_grad_(), prev.detach().double().requires_grad_()
    s = torch.sigmoid(conv(torch.cat([c64, p64], 1)))
    yd = s * c64 + (1 - s) * p64
    tgrads = torch.autograd.grad(yd, [c64, p64, conv.weight, conv.bias], go.double())
    assert_rel_close(y, yd, 1e-5, "GatedFusion forward")
    for name, a, b in zip(("cur", "prev", "weight", "bias"), grads, tgrads):
        assert_rel_close(a, b, GRAD_RTOL[torch.float32], f"GatedFusion grad {name}")


@pytest.mark.parametrize("mode", ["softmax", "l1"])
def test_spatial_norm(mode):
    x = rand(2, 3, 5, 6)
    y = SpatialNorm(mode, eps=1e-3)(x)
    flat = x.double().flatten(2)
    t = torch.softmax(flat, -1) if mode == "softmax" else flat.abs() / (flat.abs().sum(-1, keepdim=True) + 1e-3)
    assert_rel_close(y, t.view_as(x), 1e-6, mode)
    assert list(SpatialNorm().parameters()) == []


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="kernel_size"):
        DynamicPSF(3, kernel_size=4)
    with pytest.raises(ValueError, match="basis_norm"):
        DynamicPSF(3, basis_norm="l2")
    with pytest.raises(ValueError, match="num_basis"):
        DynamicPSF(3, num_basis=0)
    with pytest.raises(ValueError, match="channels"):
        GatedFusion(0)
    with pytest.raises(ValueError, match="mode"):
        SpatialNorm("max")


class _Stack(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.psf = DynamicPSF(c, num_basis=4, kernel_size=3)
        self.fuse = GatedFusion(c)
        self.norm = SpatialNorm("softmax")

    def forward(self, x, prev):
        return self.norm(self.fuse(self.psf(x), prev))


def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(5)
    m = _Stack(3).to(device)
    with torch.no_grad():
        m.psf.basis.add_(torch.randn_like(m.psf.basis))
    x, prev = rand(1, 3, 6, 7, device=device, requires_grad=True), rand(1, 3, 6, 7, device=device)
    params = [x] + list(m.parameters())
    with psfops.backend("triton"):
        eager = m(x, prev).square().sum()
        eager_grads = torch.autograd.grad(eager, params)
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
        out = compiled(x, prev).square().sum()
        grads = torch.autograd.grad(out, params)
    assert_rel_close(out, eager, 1e-6, "compiled forward")
    for a, b in zip(grads, eager_grads):
        assert_rel_close(a, b, 1e-5, "compiled grad")


def test_modules_run_under_autocast():
    """Float32 parameters meet bf16 activations under autocast: the modules cast to x's dtype."""
    x = torch.randn(1, 4, 6, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cur = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1))  # bf16 under autocast
        assert cur.dtype == torch.bfloat16
        assert GatedFusion(4)(cur, x).dtype == torch.bfloat16
        assert DynamicPSF(4, num_basis=3, kernel_size=3)(cur).dtype == torch.bfloat16


def test_dynamic_psf_with_external_weights():
    m = DynamicPSF(2, num_basis=3, kernel_size=3, predict_weights=False)
    assert m.weight_head is None
    x, w = torch.randn(1, 2, 5, 5), torch.softmax(torch.randn(1, 3, 5, 5), 1)
    expect = psfops.reference.psf_conv(x, w, m.kernels())
    assert torch.allclose(m(x, w), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="predict_weights=False"):
        m(x)
