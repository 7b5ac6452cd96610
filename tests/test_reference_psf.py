"""The pure-PyTorch truth of spatially varying blur, both directions: ``psfops.padding`` (the
padding modes and their adjoint), and ``reference.psf_conv`` / ``psf_conv_transpose`` /
``apply_psf`` / ``synthesize_psf`` / ``psf_conv_convstack`` against an independent float64 loop
implementation written here (explicit taps and index maps), forward and every gradient, plus the
adjoint identity, per-sample bases and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from psfops import padding as P
from helpers import rand

MODES = ("zeros", "reflect", "replicate", "circular")
TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _fpad_accepts(mode, H, W, ph, pw):
    if mode == "reflect":
        return ph < H and pw < W
    if mode == "circular":
        return ph <= H and pw <= W
    return True


# ---- padding.py -------------------------------------------------------------------------------

def test_paddings_tuple():
    assert P.PADDINGS == MODES


def _loop_source(e, n, mode):
    """Independent scalar index map (a while-loop mirror, not the modulo formula)."""
    if 0 <= e < n:
        return e
    if mode == "zeros":
        return -1
    if mode == "replicate":
        return min(max(e, 0), n - 1)
    if mode == "circular":
        while e < 0:
            e += n
        while e >= n:
            e -= n
        return e
    if n == 1:
        return 0
    while not 0 <= e < n:  # reflect: mirror about the edge pixel, repeatedly
        e = -e if e < 0 else 2 * (n - 1) - e
    return e


@pytest.mark.parametrize("mode", MODES)
def test_source_indices_match_scalar_maps(mode):
    for n in (1, 2, 3, 5):
        for p in (0, 1, 4, 13):
            idx = P.source_indices(n, p, mode)
            assert idx.dtype == torch.long and idx.shape == (n + 2 * p,)
            assert idx.tolist() == [_loop_source(e, n, mode) for e in range(-p, n + p)], (n, p)


def test_source_indices_examples():
    assert P.source_indices(4, 3, "reflect").tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert P.source_indices(3, 2, "circular").tolist() == [1, 2, 0, 1, 2, 0, 1]
    assert P.source_indices(3, 2, "replicate").tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert P.source_indices(3, 2, "zeros").tolist() == [-1, -1, 0, 1, 2, -1, -1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_pad_equals_fpad_where_fpad_accepts(mode, dtype):
    g = torch.Generator().manual_seed(1)
    checked = 0
    for H, W in ((1, 1), (2, 3), (5, 4), (7, 9)):
        x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64).to(dtype)
        for ph in range(0, 10):
            for pw in (0, 1, 3, 8):
                if not _fpad_accepts(mode, H, W, ph, pw):
                    continue
                kw = {"value": 0.0} if mode == "zeros" else {}
                want = F.pad(x, (pw, pw, ph, ph), mode=TORCH_MODE[mode], **kw)
                got = P.pad(x, ph, pw, mode)
                assert got.dtype == dtype and torch.equal(got, want), (H, W, ph, pw)
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("mode", MODES)
def test_pad_larger_than_image_uses_index_map(mode):
    x = rand(1, 2, 3, 4, dtype=torch.float64)
    ph, pw = 7, 9  # larger than the image: F.pad refuses reflect and circular here
    got = P.pad(x, ph, pw, mode)
    ih = [_loop_source(e, 3, mode) for e in range(-ph, 3 + ph)]
    iw = [_loop_source(e, 4, mode) for e in range(-pw, 4 + pw)]
    for a, sh in enumerate(ih):
        for b, sw in enumerate(iw):
            want = x[..., sh, sw] if sh >= 0 and sw >= 0 else torch.zeros(1, 2, dtype=torch.float64)
            assert torch.equal(got[..., a, b], want)
    if mode in ("reflect", "circular"):
        with pytest.raises(Exception):
            F.pad(x, (pw, pw, ph, ph), mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_pad_adjoint_is_adjoint(mode):
    g = torch.Generator().manual_seed(2)
    for H, W, ph, pw in ((1, 1, 3, 2), (2, 5, 1, 6), (6, 4, 5, 3), (5, 7, 0, 2), (4, 4, 11, 0)):
        x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
        z = torch.randn(2, 3, H + 2 * ph, W + 2 * pw, generator=g, dtype=torch.float64)
        lhs = (P.pad(x, ph, pw, mode) * z).sum()
        za = P.pad_adjoint(z, ph, pw, mode)
        assert za.shape == x.shape
        rhs = (x * za).sum()
        assert abs(lhs - rhs) <= 1e-12 * (lhs.abs() + rhs.abs() + 1e-300), (H, W, ph, pw, lhs, rhs)
        # and it is pad's gradient
        xg = x.clone().requires_grad_(True)
        (P.pad(xg, ph, pw, mode) * z).sum().backward()
        assert torch.allclose(xg.grad, za, rtol=1e-13, atol=1e-13)


def test_padding_bad_mode_and_pad():
    x = rand(1, 1, 3, 3)
    for bad in ("constant", "Zeros", None, 0):
        with pytest.raises(ValueError, match="padding"):
            P.pad(x, 1, 1, bad)
        with pytest.raises(ValueError, match="padding"):
            P.source_indices(3, 1, bad)
    with pytest.raises(ValueError, match="pad_h"):
        P.pad(x, -1, 1, "reflect")
    with pytest.raises(ValueError, match="pad_w"):
        P.pad_adjoint(x, 0, 2, "zeros")
