"""The CPU path (``psfops.cpu``) against the truth: forward and every gradient, every algorithm
forced, every padding mode, shared and per-sample bases, dilation 1-3, k up to 41; adjointness;
gradcheck; a memory test (no (B,C*k*k,H,W)- or (B,C,J,H,W)-sized tensor, nothing over 2x the
call's inputs and outputs); the cost model's choices.

The truth here is an independent float64 unfold form over ``psfops.padding.pad`` (the transpose:
its vector-Jacobian product), and, for zero padding with a shared basis, ``psfops.reference``.
"""
from __future__ import annotations

import itertools
import random
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import psfops
from psfops import cpu, padding as PD, reference
from tests.helpers import assert_rel_close

ALGOS = cpu.ALGORITHMS
MODES = PD.PADDINGS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for the truth too (the CPU path uses one): far steadier on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the truth ----------------------------------------------------------------------------------

def _cols(x, k, d, mode):
    B, C, H, W = x.shape
    P = d * (k // 2)
    xp = PD.pad(x, P, P, mode)
    return F.unfold(xp.reshape(B * C, 1, *xp.shape[-2:]), k, dilation=d).view(B, C, k * k, H, W)


def _synth(w, basis):
    k = basis.shape[-1]
    bf = basis.reshape(*basis.shape[:-2], k * k)
    return torch.einsum("bjhw,jt->bthw", w, bf) if basis.dim() == 3 else torch.einsum("bjhw,bjt->bthw", w, bf)


def truth_apply(x, psf, d=1, mode="zeros"):
    k = int(round(psf.shape[1] ** 0.5))
    return torch.einsum("bcthw,bthw->bchw", _cols(x, k, d, mode), psf)


def truth_conv(x, w, basis, d=1, mode="zeros"):
    return truth_apply(x, _synth(w, basis), d, mode)


def truth_transpose(y, w, basis, d=1, mode="zeros"):
    x0 = torch.zeros_like(y, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(truth_conv(x0, w, basis, d, mode), x0, y, create_graph=True)[0]


def _inputs(B, C, H, W, J, k, per, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    w = torch.randn(B, J, H, W, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    b = torch.randn(*((B,) if per else ()), J, k, k, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    return x, w, b


def _compare(fn, truth, inputs, fwd_rtol, grad_rtol, what):
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, inputs, g.to(out.dtype))
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    tout = truth(*leaves)
    tgrads = torch.autograd.grad(tout, leaves, g)
    assert out.dtype == inputs[0].dtype and out.shape == tout.shape
    assert_rel_close(out, tout, fwd_rtol, f"{what} out")
    for i, (a, t) in enumerate(zip(grads, tgrads)):
        assert a.dtype == inputs[i].dtype and a.shape == inputs[i].shape
        assert_rel_close(a, t, grad_rtol, f"{what} grad {i}")


# ---- psf_conv and its transpose, every branch ----------------------------------------------------

def _cases(n, seed):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.choice([1, 3, 5, 7])
        out.append((rnd.randint(1, 2), rnd.randint(1, 3), rnd.randint(3, 11), rnd.randint(3, 11),
                    rnd.randint(1, 4), k, rnd.randint(1, 3)))
    return out


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per", [False, True], ids=["shared", "per_sample"])
def test_psf_conv_and_transpose_float64(algo, mode, per):
    for i, (B, C, H, W, J, k, d) in enumerate(_cases(2, sum(map(ord, algo + mode)) + per)):
        inputs = _inputs(B, C, H, W, J, k, per, seed=i)
        what = f"{algo} {mode} per={per} B{B} C{C} {H}x{W} J{J} k{k} d{d}"
        _compare(lambda x, w, b: cpu.psf_conv(x, w, b, d, mode, algo),
                 lambda x, w, b: truth_conv(x, w, b, d, mode), inputs, 1e-12, 1e-12, "psf_conv " + what)
        _compare(lambda y, w, b: cpu.psf_conv_transpose(y, w, b, d, mode, algo),
                 lambda y, w, b: truth_transpose(y, w, b, d, mode), inputs, 1e-12, 1e-12, "transpose " + what)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", MODES)
def test_large_kernels_small_images(algo, mode):
    """k up to 41 on images smaller than the kernel (pads F.pad refuses: the index maps)."""
    for k, d, per in ((41, 1, False), (15, 3, True)):
        inputs = _inputs(1, 1, 6, 8, 2, k, per, seed=k)
        what = f"{algo} {mode} k{k} d{d}"
        _compare(lambda x, w, b: cpu.psf_conv(x, w, b, d, mode, algo),
                 lambda x, w, b: truth_conv(x, w, b, d, mode), inputs, 1e-12, 1e-12, "psf_conv " + what)
        _compare(lambda y, w, b: cpu.psf_conv_transpose(y, w, b, d, mode, algo),
                 lambda y, w, b: truth_transpose(y, w, b, d, mode), inputs, 1e-12, 1e-12, "transpose " + what)


@pytest.mark.parametrize("algo", ALGOS)
def test_psf_conv_float32_against_reference(algo):
    """Zero padding, shared basis: the reference itself is the truth (float32 rounding)."""
    inputs = _inputs(2, 3, 24, 20, 5, 7, False, dtype=torch.float32, seed=3)
    for d in (1, 2):
        _compare(lambda x, w, b: cpu.psf_conv(x, w, b, d, "zeros", algo),
                 lambda x, w, b: reference.psf_conv(x, w, b, d), inputs, 1e-5, 1e-4, f"{algo} d{d}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ALGOS)
def test_half_inputs(dtype, algo):
    inputs = _inputs(1, 2, 10, 9, 3, 5, False, dtype=dtype, seed=5)
    tol = 1e-3 if dtype == torch.float16 else 8e-3
    _compare(lambda x, w, b: cpu.psf_conv(x, w, b, 1, "reflect", algo),
             lambda x, w, b: truth_conv(x, w, b, 1, "reflect"), inputs, tol, tol, f"{algo} {dtype}")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", MODES)
def test_adjoint_identity(algo, mode):
    x, w, b = (t.detach() for t in _inputs(2, 2, 8, 10, 3, 5, True, seed=7))
    y = torch.randn_like(x)
    lhs = (cpu.psf_conv(x, w, b, 2, mode, algo) * y).sum()
    rhs = (x * cpu.psf_conv_transpose(y, w, b, 2, mode, algo)).sum()
    assert abs(lhs - rhs).item() <= 1e-12 * abs(lhs).item() + 1e-12


def test_row_group_workers(monkeypatch):
    """TAP_WORKERS > 1 (rows split over worker threads, scatter halos) gives the same results."""
    monkeypatch.setattr(cpu.config, "TAP_WORKERS", 3)
    for mode, per in (("zeros", False), ("reflect", True)):
        inputs = _inputs(2, 3, 13, 7, 3, 5, per, seed=11)
        _compare(lambda x, w, b: cpu.psf_conv(x, w, b, 2, mode, "taps"),
                 lambda x, w, b: truth_conv(x, w, b, 2, mode), inputs, 1e-12, 1e-12, "workers conv")
        _compare(lambda y, w, b: cpu.psf_conv_transpose(y, w, b, 2, mode, "taps"),
                 lambda y, w, b: truth_transpose(y, w, b, 2, mode), inputs, 1e-12, 1e-12, "workers transpose")


def test_only_requested_gradients():
    x, w, b = _inputs(1, 2, 6, 6, 2, 3, False)
    w.requires_grad_(False)
    out = cpu.psf_conv(x, w, b)
    gx, gb = torch.autograd.grad(out.sum(), (x, b))
    assert gx.shape == x.shape and gb.shape == b.shape


# ---- apply_psf and synthesize_psf ----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_apply_psf(mode):
    g = torch.Generator().manual_seed(2)
    for k, d in ((3, 1), (5, 2), (9, 3)):
        x = torch.randn(2, 3, 8, 11, generator=g, dtype=torch.float64).requires_grad_(True)
        psf = torch.randn(2, k * k, 8, 11, generator=g, dtype=torch.float64).requires_grad_(True)
        _compare(lambda a, p: cpu.apply_psf(a, p, d, mode), lambda a, p: truth_apply(a, p, d, mode),
                 (x, psf), 1e-12, 1e-12, f"apply_psf {mode} k{k} d{d}")
    x32, p32 = x.detach().float().requires_grad_(True), psf.detach().float().requires_grad_(True)
    if mode == "zeros":
        _compare(lambda a, p: cpu.apply_psf(a, p, 3), lambda a, p: reference.apply_psf(a, p, 3),
                 (x32, p32), 1e-5, 1e-4, "apply_psf float32")


@pytest.mark.parametrize("per", [False, True])
def test_synthesize_psf(per):
    _, w, b = _inputs(2, 1, 5, 6, 4, 5, per, seed=9)
    _compare(cpu.synthesize_psf, _synth, (w, b), 1e-12, 1e-12, f"synthesize per={per}")
    if not per:
        w32, b32 = (t.detach().float().requires_grad_(True) for t in (w, b))
        _compare(cpu.synthesize_psf, reference.synthesize_psf, (w32, b32), 1e-5, 1e-4, "synthesize float32")


# ---- gradcheck, double backward, empty inputs ---------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
def test_gradcheck(algo):
    x, w, b = _inputs(1, 2, 5, 4, 2, 3, True)
    for mode in ("zeros", "reflect", "circular"):
        assert torch.autograd.gradcheck(lambda *a: cpu.psf_conv(*a, 2, mode, algo), (x, w, b))
        assert torch.autograd.gradcheck(lambda *a: cpu.psf_conv_transpose(*a, 1, mode, algo), (x, w, b))
    psf = torch.randn(1, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, p: cpu.apply_psf(a, p, 1, "replicate"), (x, psf))
    assert torch.autograd.gradcheck(cpu.synthesize_psf, (w, b))


@pytest.mark.parametrize("name", ["psf_conv", "psf_conv_transpose", "apply_psf", "synthesize_psf"])
def test_double_backward_goes_through_the_reference(name):
    """A Hessian-vector product through the CPU path equals the reference's (create_graph takes the
    gradient through the reference)."""
    from psfops.testing import OPS, Shape
    sample = OPS[name].samples(Shape(B=1, C=2, H=5, W=6, J=3, k=3), torch.float64, "cpu", requires_grad=True)[0]
    cpu_fn = getattr(cpu, name)
    ref_fn = getattr(psfops.reference, name)
    hvps = []
    for fn in (cpu_fn, ref_fn):
        ts = [t.detach().requires_grad_(True) for t in sample.tensors]
        out = fn(*sample.with_tensors(ts))
        g = torch.Generator().manual_seed(0)
        loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
        firsts = torch.autograd.grad(loss, ts, create_graph=True)
        second = sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum() for f in firsts)
        hvps.append(torch.autograd.grad(second, ts, allow_unused=True))
    for got, want in zip(*hvps):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_empty_inputs():
    x, w, b = _inputs(0, 2, 4, 4, 2, 3, False)
    out = cpu.psf_conv(x, w, b)
    assert out.shape == x.shape
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, w, b))
    assert gb.abs().sum() == 0


# ---- memory -------------------------------------------------------------------------------------

class _Allocations(TorchDispatchMode):
    """Records the largest tensor (bytes) any op creates and the peak bytes of the storages created
    inside the block that are alive at once (a storage counts from the op that made it until it is
    freed; ``known`` tensors, e.g. the inputs, never count)."""

    def __init__(self, *known):
        super().__init__()
        self.bytes, self.shape, self.live, self.peak = 0, None, 0, 0
        self._seen = {t.untyped_storage().data_ptr() for t in known}

    def _freed(self, ptr, n):
        self.live -= n
        self._seen.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            if t.numel() * t.element_size() > self.bytes:
                self.bytes, self.shape = t.numel() * t.element_size(), (tuple(t.shape), str(func))
            st = t.untyped_storage()
            if st.nbytes() and st.data_ptr() not in self._seen:
                self._seen.add(st.data_ptr())
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._freed, st.data_ptr(), st.nbytes())
        return out


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_no_big_intermediates(algo, mode):
    B, C, H, W, J, k = 1, 4, 96, 96, 16, 5
    x, w, b = (t.detach().float().requires_grad_(True) for t in _inputs(B, C, H, W, J, k, False))
    g = torch.randn(B, C, H, W)
    io_fwd = (x.numel() * 2 + w.numel() + b.numel()) * 4
    unfold, stack = B * C * k * k * H * W * 4, B * C * J * H * W * 4
    for op in (cpu.psf_conv, cpu.psf_conv_transpose):
        with _Allocations() as m:
            out = op(x, w, b, 1, mode, algo)
        assert m.bytes < min(unfold, stack) and m.bytes <= 2 * io_fwd, (op.__name__, m.bytes, m.shape)
        with _Allocations() as m:
            out.backward(g)
        assert m.bytes < min(unfold, stack) and m.bytes <= 2 * io_fwd, (op.__name__, "backward", m.bytes, m.shape)


@pytest.mark.parametrize("shape", [(1, 3, 256, 256, 8, 15), (4, 3, 128, 128, 40, 7)])
def test_live_bytes_within_io(shape):
    """At two benchmark shapes (the cost model's choice: FFT at k15, the tap loop at k7), everything
    a call creates and holds at once (its output and gradients included) stays within the bytes of
    its inputs and outputs (gradients included for the backward): the heap's slack on top stays
    inside the 2x peak-RSS target of ``python -m bench cpu``."""
    x, w, b = (t.detach().float().requires_grad_(True) for t in _inputs(*shape, False))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    io_fwd = (x.numel() * 2 + w.numel() + b.numel()) * 4
    with torch.no_grad(), _Allocations(x, w, b) as m:
        cpu.psf_conv(x, w, b)
    assert m.peak <= io_fwd, ("forward", shape, m.peak / io_fwd)
    with _Allocations(x, w, b, g) as m:
        cpu.psf_conv(x, w, b).backward(g)
    assert m.peak <= 2 * io_fwd, ("forward+backward", shape, m.peak / (2 * io_fwd))


# ---- the cost model -----------------------------------------------------------------------------

def test_cost_model_choices():
    assert cpu.choose("forward", 1, 1, 512, 512, 16, 31) == "fft"
    assert cpu.choose("forward", 1, 3, 256, 256, 8, 15) == "fft"
    for task in ("forward", "adjoint", "wgrad"):
        assert cpu.choose(task, 8, 40, 128, 128, 40, 7) == "taps"
        assert cpu.choose(task, 1, 3, 64, 64, 4, 5, algorithm="fft") == "fft"
    assert cpu.choose("wgrad", 1, 3, 64, 64, 4, 5, algorithm="stack") == "taps"  # stack's wgrad is the tap one
    with cpu.forced("stack"):
        assert cpu.choose("forward", 8, 40, 128, 128, 40, 7) == "stack"
    with pytest.raises(ValueError):
        with cpu.forced("nope"):
            pass


# ---- against the extended reference (padding, per-sample basis, transpose) ---------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", MODES)
def test_against_reference(algo, mode):
    """float64: the CPU path equals psfops.reference to 1e-12, forward and every gradient."""
    for per, d, k in ((False, 2, 5), (True, 1, 7)):
        inputs = _inputs(2, 2, 9, 8, 3, k, per, seed=13 + k)
        what = f"{algo} {mode} per={per} d{d} k{k}"
        _compare(lambda x, w, b: cpu.psf_conv(x, w, b, d, mode, algo),
                 lambda x, w, b: reference.psf_conv(x, w, b, d, mode), inputs, 1e-12, 1e-12, "conv " + what)
        _compare(lambda y, w, b: cpu.psf_conv_transpose(y, w, b, d, mode, algo),
                 lambda y, w, b: reference.psf_conv_transpose(y, w, b, d, mode), inputs, 1e-12, 1e-12,
                 "transpose " + what)
    x, psf = inputs[0], torch.randn(2, 49, 9, 8, dtype=torch.float64, requires_grad=True)
    _compare(lambda a, p: cpu.apply_psf(a, p, 2, mode), lambda a, p: reference.apply_psf(a, p, 2, mode),
             (x, psf), 1e-12, 1e-12, f"apply_psf {mode}")
    _compare(cpu.synthesize_psf, reference.synthesize_psf, inputs[1:], 1e-12, 1e-12, "synthesize per-sample")
