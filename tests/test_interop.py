"""psfops.interop.SpaceVaryingBlur, the deepinv drop-in: against deepinv 0.5 itself when it can be
imported, and always against deepinv's product-convolution formula written out here (explicit taps,
deepinv's filter centre), for both mask_first settings and every padding deepinv offers ("valid",
"zeros"/"constant", "circular", "reflect", "replicate"); plus its adjoint identity and bad input."""
from __future__ import annotations

import glob
import importlib.util
import inspect
import os

import pytest
import torch

import psfops
from psfops import interop, reference
from helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)
from helpers import assert_rel_close



PADDINGS = ("valid", "zeros", "constant", "circular", "reflect", "replicate")
INSTALL = ("pip install --no-deps deepinv==0.5.0 torchvision==0.28.0 torchmetrics einops natsort h5py "
           "lightning-utilities")


@pytest.fixture(autouse=True)
def public_ops_or_reference(monkeypatch):
    """The shipped operator calls the public ops; until they take ``padding`` (and
    psf_conv_transpose exists), run it on psfops.reference, which has the same signatures."""
    assert interop.ops is psfops
    public = hasattr(psfops, "psf_conv_transpose") and "padding" in inspect.signature(psfops.psf_conv).parameters
    if not public:
        monkeypatch.setattr(interop, "ops", reference)


# ---- deepinv's formula, written out --------------------------------------------------------------

def _src(e, n, mode):
    if 0 <= e < n:
        return e
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(e, 0), n - 1)
    if mode == "circular":
        return e % n
    while not 0 <= e < n:  # reflect (n > 1 here)
        e = -e if e < 0 else 2 * (n - 1) - e
    return e


def _ext(z, rows, cols):
    """z[..., rows[i], cols[j]] with None meaning 0."""
    r = torch.tensor([0 if i is None else i for i in rows])
    c = torch.tensor([0 if j is None else j for j in cols])
    mask = torch.tensor([[float(i is not None and j is not None) for j in cols] for i in rows], dtype=z.dtype)
    return z[..., r, :][..., c] * mask


def formula_conv(z, h, mode):
    """deepinv's conv2d(z, h, padding): out[p] = sum_{a,b} h[a,b] * zext[p - (a - fh//2), q - (b - fw//2)];
    "valid": out[i] = sum h[a,b] z[i + fh-1-a, j + fw-1-b]. z (N,C,H,W), h (n,c,fh,fw) broadcasting."""
    H, W = z.shape[-2:]
    fh, fw = h.shape[-2:]
    if mode == "valid":
        Ho, Wo = H - fh + 1, W - fw + 1
        return sum(h[..., a, b, None, None] * z[..., fh - 1 - a:fh - 1 - a + Ho, fw - 1 - b:fw - 1 - b + Wo]
                   for a in range(fh) for b in range(fw))
    out = 0
    for a in range(fh):
        rows = [_src(p - (a - fh // 2), H, mode) for p in range(H)]
        for b in range(fw):
            cols = [_src(q - (b - fw // 2), W, mode) for q in range(W)]
            out = out + h[..., a, b, None, None] * _ext(z, rows, cols)
    return out


def formula(x, filters, multipliers, mode, mask_first):
    mode = "zeros" if mode == "constant" else mode
    K = filters.shape[2]
    if mask_first:
        return sum(formula_conv(multipliers[:, :, k] * x, filters[:, :, k], mode) for k in range(K))
    return sum(multipliers[:, :, k] * formula_conv(x, filters[:, :, k], mode) for k in range(K))


# cases: (B, C, H, W, K, fh, fw, b_filters, c_filters, b_mult, c_mult)
CASES = [
    (2, 3, 9, 8, 3, 5, 5, 2, 1, 2, 1),   # deepinv's usual layout: per-sample, channel-shared
    (2, 2, 7, 9, 2, 3, 3, 1, 1, 2, 1),   # one filter set for the batch
    (1, 3, 8, 7, 2, 4, 4, 1, 3, 1, 1),   # even filters, per-channel filters
    (2, 2, 9, 10, 3, 3, 6, 2, 2, 2, 2),  # non-square even filters, everything per (b, c)
    (2, 1, 6, 7, 2, 5, 3, 2, 1, 1, 1),   # multipliers broadcast over the batch
]


def _case(case, mode, mask_first, g):
    B, C, H, W, K, fh, fw, bf, cf, bm, cm = case
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    filters = torch.randn(bf, cf, K, fh, fw, generator=g, dtype=torch.float64)
    Hm, Wm = (H - fh + 1, W - fw + 1) if (mode == "valid" and not mask_first) else (H, W)
    multipliers = torch.randn(bm, cm, K, Hm, Wm, generator=g, dtype=torch.float64)
    return x, filters, multipliers


@pytest.mark.parametrize("mask_first", [True, False], ids=["mask_first", "mask_after"])
@pytest.mark.parametrize("mode", PADDINGS)
def test_matches_the_formula_and_its_adjoint(mode, mask_first):
    g = torch.Generator().manual_seed(PADDINGS.index(mode) * 2 + mask_first)
    for case in CASES:
        x, filters, multipliers = _case(case, mode, mask_first, g)
        blur = interop.SpaceVaryingBlur(filters, multipliers, padding=mode, mask_first=mask_first)
        xg = x.clone().requires_grad_(True)
        want = formula(xg, filters, multipliers, mode, mask_first)
        got = blur(x)
        assert_rel_close(got, want, 1e-12, f"A {mode} {case}")
        y = torch.randn(want.shape, generator=g, dtype=torch.float64)
        (want_adj,) = torch.autograd.grad(want, xg, y)   # the formula's exact adjoint
        assert_rel_close(blur.A_adjoint(y), want_adj, 1e-12, f"A_adjoint {mode} {case}")


@pytest.mark.parametrize("mask_first", [True, False])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "zeros"])
def test_filters_larger_than_the_image(mode, mask_first):
    """deepinv's F.pad refuses reflect/circular here; the index maps keep going."""
    g = torch.Generator().manual_seed(3)
    x, filters, multipliers = _case((1, 2, 3, 4, 2, 9, 7, 1, 1, 1, 1), mode, mask_first, g)
    blur = interop.SpaceVaryingBlur(filters, multipliers, padding=mode, mask_first=mask_first)
    assert_rel_close(blur.A(x), formula(x, filters, multipliers, mode, mask_first), 1e-12, f"{mode} big filter")


def test_adjoint_identity_and_parameter_updates():
    g = torch.Generator().manual_seed(4)
    for mode in PADDINGS:
        for mask_first in (True, False):
            x, filters, multipliers = _case(CASES[3], mode, mask_first, g)
            blur = interop.SpaceVaryingBlur(padding="zeros", mask_first=mask_first)
            Ax = blur.A(x, filters=filters, multipliers=multipliers, padding=mode)  # stored, as deepinv does
            y = torch.randn(Ax.shape, generator=g, dtype=torch.float64)
            lhs, rhs = (Ax * y).sum().item(), (x * blur.A_adjoint(y)).sum().item()
            assert abs(lhs - rhs) <= 1e-12 * abs(lhs), (mode, mask_first, lhs, rhs)
            assert blur.padding == ("zeros" if mode == "constant" else mode)


def test_layout_conversion():
    h = torch.randn(2, 1, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(1, 1, 3, 5, 6, dtype=torch.float64)
    weights, basis, fold = interop.deepinv_to_psfops(h, w, 2, 3)
    assert not fold and weights.shape == (2, 3, 5, 6) and basis.shape == (2, 3, 5, 5)
    assert torch.equal(basis[..., :4, :4], h[:, 0]) and basis[..., 4, :].abs().sum() == 0  # even: zero tap after
    weights, basis, fold = interop.deepinv_to_psfops(torch.randn(1, 3, 3, 3, 3), torch.randn(2, 1, 3, 5, 6), 2, 3)
    assert fold and weights.shape == (6, 3, 5, 6) and basis.shape == (6, 3, 3, 3)


def test_bad_input():
    h, w = torch.randn(1, 1, 2, 3, 3), torch.randn(1, 1, 2, 5, 5)
    with pytest.raises(ValueError, match="padding"):
        interop.SpaceVaryingBlur(h, w, padding="symmetric")
    with pytest.raises(ValueError, match="filters"):
        interop.SpaceVaryingBlur(h[0], w, padding="zeros").A(torch.randn(1, 1, 5, 5))
    with pytest.raises(ValueError, match="multipliers"):
        interop.SpaceVaryingBlur(h, w.expand(3, 1, 2, 5, 5), padding="zeros").A(torch.randn(2, 1, 5, 5))
    with pytest.raises(ValueError, match="filters and multipliers"):
        interop.SpaceVaryingBlur(padding="zeros").A(torch.randn(1, 1, 5, 5))


# ---- deepinv itself ------------------------------------------------------------------------------

_FRAGMENT = None


def _import_deepinv():
    """deepinv, or None and why. PyPI's torchvision wheel links CUDA libraries: next to a CPU torch
    its custom ops cannot load and ``import torchvision`` then dies registering fakes for
    torchvision::nms/qnms (pytorch/vision#9085). deepinv's blur uses none of torchvision's ops, so
    in that case those two are declared first, which lets the import through."""
    global _FRAGMENT
    spec = importlib.util.find_spec("torchvision")
    if spec is None or importlib.util.find_spec("deepinv") is None:
        return None, "deepinv or torchvision is not installed"
    libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        if libs:
            torch.ops.load_library(libs[0])
    except OSError:
        if _FRAGMENT is None:
            _FRAGMENT = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                _FRAGMENT.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        import deepinv
        from deepinv.physics import SpaceVaryingBlur  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: skip, saying why
        return None, f"deepinv does not import ({type(e).__name__}: {e})"
    return deepinv, ""


@pytest.fixture(scope="module")
def dinv():
    module, why = _import_deepinv()
    if module is None:
        pytest.skip(f"{why}; to run these, install it into this environment with: {INSTALL}")
    return module


@pytest.mark.parametrize("mask_first", [True, False], ids=["mask_first", "mask_after"])
@pytest.mark.parametrize("mode", PADDINGS)
def test_matches_deepinv(dinv, mode, mask_first):
    """A, A_adjoint and the gradients in filters and multipliers equal deepinv's, float64."""
    g = torch.Generator().manual_seed(10 + PADDINGS.index(mode) * 2 + mask_first)
    for case in CASES:
        x, filters, multipliers = _case(case, mode, mask_first, g)
        theirs = dinv.physics.SpaceVaryingBlur(filters=filters, multipliers=multipliers, padding=mode,
                                               mask_first=mask_first)
        ours = interop.SpaceVaryingBlur(filters, multipliers, padding=mode, mask_first=mask_first)
        want = theirs.A(x)
        assert_rel_close(ours.A(x), want, 1e-12, f"A {mode} {case}")
        y = torch.randn(want.shape, generator=g, dtype=torch.float64)
        assert_rel_close(ours.A_adjoint(y), theirs.A_adjoint(y), 1e-12, f"A_adjoint {mode} {case}")
        hf, mf = filters.clone().requires_grad_(True), multipliers.clone().requires_grad_(True)
        gt = torch.autograd.grad((theirs.A(x, filters=hf, multipliers=mf) * y).sum(), (hf, mf))
        go = torch.autograd.grad((ours.A(x, filters=hf, multipliers=mf) * y).sum(), (hf, mf))
        for a, b, name in zip(go, gt, ("filters", "multipliers")):
            assert_rel_close(a, b, 1e-12, f"d{name} {mode} {case}")


def test_deepinv_linear_physics_snippet(dinv):
    """The docstring's swap-in: deepinv's LinearPhysics around our A / A_adjoint."""
    g = torch.Generator().manual_seed(5)
    x, h, w = _case(CASES[0], "reflect", True, g)
    blur = interop.SpaceVaryingBlur(filters=h, multipliers=w, padding="reflect", mask_first=True)
    physics = dinv.physics.LinearPhysics(A=blur.A, A_adjoint=blur.A_adjoint)
    reference_physics = dinv.physics.SpaceVaryingBlur(filters=h, multipliers=w, padding="reflect")
    assert_rel_close(physics(x), reference_physics(x), 1e-12, "LinearPhysics(A=blur.A)")
    y = torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert_rel_close(physics.A_adjoint(y), reference_physics.A_adjoint(y), 1e-12, "LinearPhysics(A_adjoint=...)")
