"""The pure-PyTorch truth of spatially varying blur, both directions: ``psfops.padding`` (the
padding modes and their adjoint), and ``reference.psf_conv`` / ``psf_conv_transpose`` /
``apply_psf`` / ``synthesize_psf`` / ``psf_conv_convstack`` against an independent float64 loop
implementation written here (explicit taps and index maps), forward and every gradient, plus the
adjoint identity, per-sample bases and bad input."""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from psfops import padding as P
from psfops import reference as R
from helpers import one_thread  # noqa: F401  (autouse: one intra-op thread in this module)
from helpers import FWD_RTOL, assert_rel_close, float64_leaves, rand, value_and_grads



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
        for ph in (0, 1, 2, 4, 6, 9):
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


# ---- independent float64 loop truth: one tap at a time, index maps written out per pixel -------


def _tap_kernel(weights, basis, u, v):
    """(B,H,W): K_t(p) = sum_j w[b,j,p] * basis[(b,)j,u,v] for one tap."""
    coef = basis[..., u, v]  # (J,) or (B,J)
    coef = coef.view(1, -1, 1, 1) if basis.dim() == 3 else coef.view(coef.shape[0], -1, 1, 1)
    return (weights * coef).sum(1)


def _axis_map(n, shift, mode):
    """For each image index i: the source index of the extended index i + shift, or -1."""
    return [_loop_source(i + shift, n, mode) for i in range(n)]


def _gather(x, rows, cols):
    """x[..., rows[h], cols[w]], zero where either is -1 (built by a mask, not by padding)."""
    r = torch.tensor([max(i, 0) for i in rows])
    c = torch.tensor([max(i, 0) for i in cols])
    mask = torch.tensor([[float(a >= 0 and b >= 0) for b in cols] for a in rows], dtype=x.dtype)
    return x.index_select(-2, r).index_select(-1, c) * mask


def loop_apply(x, kernel_of_tap, k, d, mode):
    """Gather: y[p] = sum_t K_t(p) * xext[p + s_t]."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    for u in range(k):
        rows = _axis_map(H, (u - k // 2) * d, mode)
        for v in range(k):
            cols = _axis_map(W, (v - k // 2) * d, mode)
            out = out + kernel_of_tap(u, v).unsqueeze(1) * _gather(x, rows, cols)
    return out


def loop_scatter(y, kernel_of_tap, k, d, mode):
    """Scatter: for each pixel p and tap t, add K_t(p) * y[p] into the source pixel of p + s_t."""
    B, C, H, W = y.shape
    out = torch.zeros(B, C, H * W, dtype=y.dtype)
    for u in range(k):
        rows = _axis_map(H, (u - k // 2) * d, mode)
        for v in range(k):
            cols = _axis_map(W, (v - k // 2) * d, mode)
            src, dst = [], []
            for h in range(H):
                for w in range(W):
                    if rows[h] >= 0 and cols[w] >= 0:
                        src.append(h * W + w)
                        dst.append(rows[h] * W + cols[w])
            if not src:
                continue
            contrib = (kernel_of_tap(u, v).unsqueeze(1) * y).reshape(B, C, H * W)
            out = out.index_add(2, torch.tensor(dst), contrib.index_select(2, torch.tensor(src)))
    return out.view(B, C, H, W)


def loop_psf_conv(x, w, basis, d, mode):
    return loop_apply(x, lambda u, v: _tap_kernel(w, basis, u, v), basis.shape[-1], d, mode)


def loop_psf_conv_transpose(y, w, basis, d, mode):
    return loop_scatter(y, lambda u, v: _tap_kernel(w, basis, u, v), basis.shape[-1], d, mode)


def loop_apply_psf(x, psf, d, mode):
    k = int(round(psf.shape[1] ** 0.5))
    return loop_apply(x, lambda u, v: psf[:, u * k + v], k, d, mode)


def _random_case(g, k_max=9, hw_max=7):
    B, C, J = (int(torch.randint(1, n + 1, (1,), generator=g)) for n in (2, 3, 4))
    H, W = (int(torch.randint(1, hw_max + 1, (1,), generator=g)) for _ in range(2))
    k = 2 * int(torch.randint(0, k_max // 2 + 1, (1,), generator=g)) + 1
    d = int(torch.randint(1, 4, (1,), generator=g))
    return B, C, H, W, J, k, d


def _inputs(B, C, H, W, J, k, per_sample, g):
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(B, J, H, W, generator=g, dtype=torch.float64)
    b = torch.randn(*((B,) if per_sample else ()), J, k, k, generator=g, dtype=torch.float64)
    return x, w, b


# cases: (B, C, H, W, J, k, d); k up to 41 on tiny images, the pad far larger than the image
LOOP_CASES = [(2, 2, 5, 4, 3, 3, 1), (1, 3, 6, 7, 2, 5, 2), (2, 1, 3, 5, 2, 7, 3), (1, 2, 4, 3, 2, 41, 1),
              (1, 1, 2, 3, 3, 13, 2), (1, 1, 1, 1, 2, 3, 1), (2, 2, 1, 6, 2, 9, 1), (1, 2, 7, 2, 1, 1, 1)]


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["psf_conv", "psf_conv_transpose", "psf_conv_convstack"])
def test_reference_matches_loop_truth(op, mode, per_sample):
    """Forward and every gradient (x or y, weights, basis) against the loop, float64, 1e-12."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{op}{mode}{per_sample}".encode()))
    ref = getattr(R, op)
    loop = loop_psf_conv_transpose if op == "psf_conv_transpose" else loop_psf_conv
    for B, C, H, W, J, k, d in LOOP_CASES:
        if k == 41 and op == "psf_conv_convstack":
            continue
        inputs = [t.requires_grad_(True) for t in _inputs(B, C, H, W, J, k, per_sample, g)]
        outs, grads, gout = value_and_grads(lambda x, w, b: ref(x, w, b, d, mode), inputs)
        touts, tgrads, _ = value_and_grads(lambda x, w, b: loop(x, w, b, d, mode), float64_leaves(*inputs), gout)
        what = f"{op} {mode} B{B}C{C}H{H}W{W}J{J}k{k}d{d}"
        assert_rel_close(outs[0], touts[0], 1e-12, what)
        for name, gr, tg, inp in zip(("image", "weights", "basis"), grads, tgrads, inputs):
            assert gr.shape == inp.shape
            assert_rel_close(gr, tg, 1e-12, f"{what} d{name}")


@pytest.mark.parametrize("mode", MODES)
def test_apply_psf_matches_loop_truth(mode):
    g = torch.Generator().manual_seed(7)
    for B, C, H, W, _, k, d in LOOP_CASES[:5]:
        x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
        psf = torch.randn(B, k * k, H, W, generator=g, dtype=torch.float64, requires_grad=True)
        outs, grads, gout = value_and_grads(lambda x, p: R.apply_psf(x, p, d, mode), [x, psf])
        touts, tgrads, _ = value_and_grads(lambda x, p: loop_apply_psf(x, p, d, mode), float64_leaves(x, psf), gout)
        assert_rel_close(outs[0], touts[0], 1e-12, f"apply_psf {mode} k{k}d{d}")
        for gr, tg in zip(grads, tgrads):
            assert_rel_close(gr, tg, 1e-12, f"apply_psf {mode} k{k}d{d} grad")


def test_loop_truth_zeros_matches_the_existing_zero_padded_truth():
    """The loop's zeros mode is today's op (an explicit zero-padded slice truth)."""
    g = torch.Generator().manual_seed(3)
    x, w, b = _inputs(2, 3, 6, 5, 3, 5, False, g)
    k, d, p = 5, 2, 4
    xp = F.pad(x, (p, p, p, p))
    want = sum((w * b[:, u, v].view(1, -1, 1, 1)).sum(1, keepdim=True) * xp[..., u * d:u * d + 6, v * d:v * d + 5]
               for u in range(k) for v in range(k))
    assert_rel_close(loop_psf_conv(x, w, b, d, "zeros"), want, 1e-13, "loop zeros")


def test_synthesize_psf_both_basis_shapes():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    for b in (torch.randn(4, 3, 3, generator=g, dtype=torch.float64),
              torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)):
        want = torch.stack([_tap_kernel(w, b, u, v) for u in range(3) for v in range(3)], dim=1)
        assert_rel_close(R.synthesize_psf(w, b), want, 1e-13, f"synthesize basis {tuple(b.shape)}")


# ---- the adjoint identity --------------------------------------------------------------------

def _inner(a, b):
    return (a * b).sum().item()


def test_adjoint_identity_sweep():
    """<psf_conv(x), y> == <x, psf_conv_transpose(y)> to float64 rounding, over random shapes
    (k up to 41, dilation 1-3), every padding and both basis shapes; and psf_conv_transpose is
    autograd's vector-Jacobian product of psf_conv in x."""
    g = torch.Generator().manual_seed(11)
    n = 0
    for trial in range(40):
        B, C, H, W, J, k, d = _random_case(g, k_max=41 if trial % 4 == 0 else 9, hw_max=9)
        for mode in MODES:
            per_sample = bool(trial % 2)
            x, w, b = _inputs(B, C, H, W, J, k, per_sample, g)
            y = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
            Ax = R.psf_conv(x, w, b, d, mode)
            Aty = R.psf_conv_transpose(y, w, b, d, mode)
            lhs, rhs = _inner(Ax, y), _inner(x, Aty)
            scale = Ax.norm().item() * y.norm().item()
            assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1e-3 * scale), (B, C, H, W, J, k, d, mode, lhs, rhs)
            xg = x.clone().requires_grad_(True)
            (vjp,) = torch.autograd.grad(R.psf_conv(xg, w, b, d, mode), xg, y)
            assert_rel_close(Aty, vjp, 1e-12, f"transpose == vjp {mode}")
            n += 1
    assert n == 160


# ---- per-sample basis, dtypes, empty input, tracing ------------------------------------------

@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_per_sample_basis_equals_each_sample_alone(mode):
    g = torch.Generator().manual_seed(5)
    x, w, b = _inputs(3, 2, 6, 7, 4, 5, True, g)
    for op in (R.psf_conv, R.psf_conv_transpose, R.psf_conv_convstack):
        together = op(x, w, b, 2, mode)
        alone = torch.cat([op(x[i:i + 1], w[i:i + 1], b[i], 2, mode) for i in range(3)])
        assert_rel_close(together, alone, 1e-14, f"{op.__name__} per-sample")
    psf = R.synthesize_psf(w, b)
    assert torch.equal(psf, torch.cat([R.synthesize_psf(w[i:i + 1], b[i]) for i in range(3)]))
    # the basis gradient has the basis's shape, one dictionary's gradient per sample
    bl = b.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(R.psf_conv(x, w, bl, 2, mode).square().sum(), bl)
    for i in range(3):
        bi = b[i].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(R.psf_conv(x[i:i + 1], w[i:i + 1], bi, 2, mode).square().sum(), bi)
        assert_rel_close(gb[i], gi, 1e-13, "per-sample dbasis")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["psf_conv", "psf_conv_transpose"])
def test_dtypes_accumulate_in_float32(op, dtype):
    g = torch.Generator().manual_seed(6)
    x, w, b = (t.to(dtype) for t in _inputs(2, 3, 8, 7, 4, 5, True, g))
    for mode in MODES:
        out = getattr(R, op)(x, w, b, 2, mode)
        assert out.dtype == dtype
        want = getattr(R, op)(x.double(), w.double(), b.double(), 2, mode)
        assert_rel_close(out, want, FWD_RTOL[dtype], f"{op} {mode} {dtype}")
        xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
        grads = torch.autograd.grad(getattr(R, op)(xg, wg, bg, 2, mode).float().square().sum(), (xg, wg, bg))
        assert all(gr.dtype == dtype for gr in grads)


def test_empty_inputs():
    for op in (R.psf_conv, R.psf_conv_transpose, R.psf_conv_convstack):
        for x, w, b in ((rand(0, 2, 4, 4), rand(0, 3, 4, 4), rand(3, 3, 3)),
                        (rand(2, 2, 4, 4), rand(2, 0, 4, 4), rand(2, 0, 3, 3)),
                        (rand(2, 2, 0, 4), rand(2, 3, 0, 4), rand(2, 3, 5, 5))):
            x, w, b = (t.requires_grad_(True) for t in (x, w, b))
            out = op(x, w, b, 1, "reflect")
            assert out.shape == x.shape and out.abs().sum() == 0
            grads = torch.autograd.grad(out.sum(), (x, w, b))
            assert [gr.shape for gr in grads] == [x.shape, w.shape, b.shape]


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_jit_trace_replays_transpose_and_padding(mode):
    import warnings
    g = torch.Generator().manual_seed(8)
    a, fresh = _inputs(1, 2, 5, 6, 3, 7, True, g), _inputs(1, 2, 5, 6, 3, 7, True, g)
    for op in (R.psf_conv, R.psf_conv_transpose):
        fn = lambda x, w, b: op(x, w, b, 2, mode)  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(fn, a, check_trace=False)
        assert torch.equal(traced(*fresh), fn(*fresh))


# ---- bad input -------------------------------------------------------------------------------

def _good64():
    return rand(2, 2, 6, 6), rand(2, 3, 6, 6), rand(3, 3, 3)


BAD = [
    ("padding", ValueError, lambda x, w, b: (x, w, b, 1, "constant")),
    ("padding", ValueError, lambda x, w, b: (x, w, b, 1, "valid")),
    ("padding", ValueError, lambda x, w, b: (x, w, b, 1, None)),
    ("basis", ValueError, lambda x, w, b: (x, w, b[0], 1, "zeros")),                 # rank 2
    ("basis", ValueError, lambda x, w, b: (x, w, b[None, None].expand(2, 2, 3, 3, 3), 1, "zeros")),  # rank 5
    ("basis", ValueError, lambda x, w, b: (x, w, rand(3, 3, 3, 3), 1, "zeros")),     # batch 3 != 2
    ("basis", ValueError, lambda x, w, b: (x, w, rand(2, 4, 3, 3), 1, "zeros")),     # J 4 != 3
    ("basis", ValueError, lambda x, w, b: (x, w, rand(2, 3, 3, 5), 1, "zeros")),     # not square
    ("basis", ValueError, lambda x, w, b: (x, w, rand(2, 3, 4, 4), 1, "zeros")),     # even
    ("basis", TypeError, lambda x, w, b: (x, w, rand(2, 3, 3, 3).double(), 1, "zeros")),
    ("dilation", ValueError, lambda x, w, b: (x, w, b, 0, "zeros")),
    ("weights", ValueError, lambda x, w, b: (x, w[:1], b, 1, "zeros")),
]


@pytest.mark.parametrize("op", ["psf_conv", "psf_conv_transpose", "psf_conv_convstack"])
@pytest.mark.parametrize("name,exc,make", BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(op, name, exc, make):
    with pytest.raises(exc, match=name):
        getattr(R, op)(*make(*_good64()))


def test_bad_input_messages():
    x, w, b = _good64()
    with pytest.raises(ValueError, match=r"padding must be one of 'zeros', 'reflect', 'replicate', 'circular'"):
        R.psf_conv(x, w, b, 1, "mirror")
    with pytest.raises(ValueError, match=r"basis must have shape \(J, k, k\) .* or \(B, J, k, k\)"):
        R.psf_conv_transpose(x, w, b[0])
    with pytest.raises(ValueError, match=r"basis has size 3 in dim 0, expected 2 \(batch size B of y"):
        R.psf_conv_transpose(x, w, rand(3, 3, 3, 3))
    with pytest.raises(ValueError, match="y has size|weights has size"):
        R.psf_conv_transpose(x, w[:1], b)
    with pytest.raises(ValueError, match="basis"):
        R.synthesize_psf(w, rand(3, 3, 3, 3))      # per-sample batch 3 != weights' 2
    with pytest.raises(ValueError, match="padding"):
        R.apply_psf(x, rand(2, 9, 6, 6), 1, "edge")
