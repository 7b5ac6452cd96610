"""Registration tests generated from the op table (``psfops.testing.OPS``): every registered custom
op is in the table and passes ``torch.library.opcheck``, forward and backward; every custom op
refuses mismatched arguments before launching; empty inputs give empty outputs and zero gradients
on both backends; and one ``torch.compile(fullgraph=True)`` traces every op, forward and backward."""
from __future__ import annotations

import re
import warnings

import pytest
import torch

import psfops
from psfops.testing import OPS, Shape, backward_args, registered_custom_ops
from helpers import assert_rel_close, value_and_grads

SMALL = Shape(B=1, C=2, H=5, W=6, J=3, k=3, dilation=2)
VARIANTS = [(name, i) for name, info in OPS.items()
            for i in range(len(info.samples(SMALL, torch.float32, "cpu")))]


def _ids(v):
    name, i = v
    label = OPS[name].samples(SMALL, torch.float32, "cpu")[i].label
    return f"{name}-{label}" if label else name


def test_table_covers_every_registered_custom_op():
    in_table = {op for name in OPS for op in (name, f"{name}_backward")}
    assert registered_custom_ops() == in_table
    for name, info in OPS.items():
        assert info.forward._qualified_op_name == f"psfops::{name}"
        assert info.backward._qualified_op_name == f"psfops::{name}_backward"
        assert info.function is getattr(psfops, name) and info.reference is getattr(psfops.reference, name)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_opcheck_forward_and_backward(variant, device):
    name, i = variant
    info = OPS[name]
    sample = info.samples(SMALL, torch.float32, device, requires_grad=True)[i]
    torch.library.opcheck(info.forward.default, sample.args)
    torch.library.opcheck(info.backward.default, backward_args(info, sample))


def _perturbations(args: tuple, names: list[str]):
    """(argument name, bad args) pairs: each tensor argument in turn one column short, then in
    float64 (the others stay float32)."""
    for i, (name, a) in enumerate(zip(names, args)):
        if not isinstance(a, torch.Tensor):
            continue
        if a.shape[-1] > 1:
            yield name, args[:i] + (a[..., :-1],) + args[i + 1:]
        yield name, args[:i] + (a.double(),) + args[i + 1:]


def _refuses(op, args, name) -> None:
    with pytest.raises((TypeError, ValueError)) as err:
        op(*args)
    assert re.search(rf"\b{name}\b", str(err.value)), (op, name, str(err.value))


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_raw_custom_ops_refuse_mismatched_arguments(variant, device):
    """Direct ``torch.ops.psfops.*`` calls with one tensor argument one column short or of
    another dtype. Forward: a TypeError/ValueError naming the argument wherever the reference
    refuses the arguments too, else the reference's result (a lone plane may be any size). Backward:
    always refused (the cotangents no longer match), before any launch (which would read or write
    out of bounds)."""
    name, i = variant
    info = OPS[name]
    sample = info.samples(SMALL, torch.float32, device)[i]
    names = [a.name for a in info.forward.default._schema.arguments]
    for bad_name, bad_args in _perturbations(sample.args, names):
        try:
            expected = info.reference(*bad_args)
        except (TypeError, ValueError):
            _refuses(info.forward, bad_args, bad_name)
        else:
            got = info.forward(*bad_args)
            got, expected = (got[0], expected) if name == "spatial_normalize" else (got, expected)
            for g, e in zip(got if isinstance(got, tuple) else (got,),
                            expected if isinstance(expected, tuple) else (expected,)):
                assert_rel_close(g, e, 1e-5, f"{name} with {bad_name} changed")
    args = backward_args(info, sample)
    names = [a.name for a in info.backward.default._schema.arguments]
    perturbations = list(_perturbations(args, names))
    assert len(perturbations) >= len([a for a in args if isinstance(a, torch.Tensor)])
    for bad_name, bad_args in perturbations:
        _refuses(info.backward, bad_args, bad_name)
    _refuses(info.backward, args[:-1] + (args[-1] + [True],), "needs")


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_backward_computes_only_the_gradients_asked_for(variant, device):
    """Each tensor input frozen in turn (``requires_grad=False``): autograd gives the others the
    gradients they get when nothing is frozen, and the backward op returns a 0-element
    placeholder for the frozen one (no buffer, no write)."""
    name, i = variant
    info = OPS[name]
    sample = info.samples(SMALL, torch.float32, device, requires_grad=True)[i]
    fn = lambda *ts: info.function(*sample.with_tensors(ts))  # noqa: E731
    with psfops.backend("triton"):
        _, all_grads, g = value_and_grads(fn, sample.tensors)
        for frozen in range(len(sample.tensors)):
            leaves = [t.detach().requires_grad_(j != frozen) for j, t in enumerate(sample.tensors)]
            if len(leaves) > 1:  # (a lone input frozen: no backward runs at all)
                _, grads, _ = value_and_grads(fn, leaves, g)
                kept = [a for j, a in enumerate(all_grads) if j != frozen]
                for got, want in zip(grads, kept):
                    assert torch.equal(got, want), (name, sample.label, frozen)
            args = backward_args(info, sample)
            needs = [n and j != frozen for j, n in enumerate(args[-1])]
            outs = info.backward(*args[:-1], needs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            assert outs[frozen].numel() == 0 and all(o.numel() > 0 for o, n in zip(outs, needs) if n)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("empty", ["B", "C", "H"])
@pytest.mark.parametrize("name", list(OPS))
def test_empty_inputs(name, empty, backend, device):
    """B, C or H of zero: both backends give the reference's output shapes, and every input a
    gradient of its own shape, zeros where the outputs are empty (an op without a C axis, such as
    synthesize_psf, is then simply compared with the reference)."""
    dev = device if backend == "triton" else "cpu"
    shape = Shape(**{**SMALL.__dict__, empty: 0})
    info = OPS[name]
    for sample in info.samples(shape, torch.float32, dev, requires_grad=True):
        with psfops.backend(backend):
            outs, grads, g = value_and_grads(lambda *ts: info.function(*sample.with_tensors(ts)), sample.tensors)
        ref_outs, ref_grads, _ = value_and_grads(lambda *ts: info.reference(*sample.with_tensors(ts)),
                                                 sample.tensors, g)
        assert [o.shape for o in outs] == [o.shape for o in ref_outs], (name, sample.label)
        all_empty = all(o.numel() == 0 for o in outs)
        for got, want, t in zip(grads, ref_grads, sample.tensors):
            assert got is not None and got.shape == t.shape, (name, sample.label)
            assert_rel_close(got, want, 1e-5, f"{name} {sample.label} grad")
            assert not (all_empty and got.any()), (name, sample.label)


def test_torch_compile_fullgraph_traces_every_op(device):
    """One compiled function calls every op (first sample each), forward and backward; it matches
    eager. (aot_eager on the CPU: inductor would compile C++ for minutes there.)"""
    samples = {name: info.samples(SMALL, torch.float32, device, requires_grad=True)[0]
               for name, info in OPS.items()}
    leaves = [t for s in samples.values() for t in s.tensors]

    def every_op(*tensors):
        total, start = 0, 0
        for name, s in samples.items():
            n = len(s.tensors)
            outs = OPS[name].function(*s.with_tensors(tensors[start:start + n]))
            start += n
            for o in (outs if isinstance(outs, tuple) else (outs,)):
                total = total + o.square().mean()
        return total

    with psfops.backend("triton"):
        eager, eager_grads, g = value_and_grads(every_op, leaves)
        compiled = torch.compile(every_op, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
        out, grads, _ = value_and_grads(compiled, leaves, g)
    assert_rel_close(out[0], eager[0], 1e-6, "compiled forward")
    for got, want in zip(grads, eager_grads):
        assert_rel_close(got, want, 1e-5, "compiled grad")


def _hvp(fn, sample, tensors):
    """d/d(tensors) of <d/d(tensors) <fn(tensors), u>, v>: a Hessian-vector product with fixed random
    projections u, v (None for a tensor the second derivative does not reach)."""
    outs = fn(*sample.with_tensors(tensors))
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outs)
    firsts = torch.autograd.grad(loss, tensors, create_graph=True)
    second = sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype).to(f.device)).sum() for f in firsts)
    return torch.autograd.grad(second, tensors, allow_unused=True)


@pytest.mark.parametrize("name", list(OPS))
def test_second_derivatives_on_both_backends(name, device):
    """Double backward works on the Triton path as on the reference (its backward ops are
    differentiated through the reference): the same Hessian-vector product."""
    info = OPS[name]
    sample = info.samples(SMALL, torch.float64, device, requires_grad=True)[0]
    with psfops.backend("triton"):
        got = _hvp(info.function, sample, sample.tensors)
    want = _hvp(info.reference, sample, [t.detach().requires_grad_(True) for t in sample.tensors])
    for g, w in zip(got, want):
        g = torch.zeros_like(w) if g is None and w is not None else g
        w = torch.zeros_like(g) if w is None and g is not None else w
        if g is not None:
            assert_rel_close(g, w, 1e-10, f"{name} second derivative")


@pytest.mark.parametrize("name", list(OPS))
def test_gradgradcheck_of_the_triton_path(name, device):
    """Independent of the reference: finite differences of the Triton backward kernels (float64)
    against the analytic second derivative (fast mode: one random projection)."""
    info = OPS[name]
    sample = info.samples(SMALL, torch.float64, device, requires_grad=True)[0]
    fn = lambda *ts: info.function(*sample.with_tensors(ts))  # noqa: E731
    with psfops.backend("triton"):
        assert torch.autograd.gradgradcheck(fn, tuple(sample.tensors), fast_mode=True, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", list(OPS))
def test_jit_trace_of_the_reference_path(name):
    """torch.jit.trace records the reference ops (the CPU path) and replays them exactly on fresh
    inputs of the traced shapes, not only on the ones it was traced with (the argument checks warn
    that they are traced as constants: shapes are fixed in a trace anyway)."""
    traced_on, fresh = (OPS[name].samples(SMALL, torch.float32, "cpu")[0] for _ in range(2))
    fn = lambda *ts: OPS[name].function(*traced_on.with_tensors(ts))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, tuple(traced_on.tensors), check_trace=False)
    assert not all(torch.equal(a, b) for a, b in zip(traced_on.tensors, fresh.tensors))
    for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (traced(*fresh.tensors), fn(*fresh.tensors)))):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("name", list(OPS))
def test_forward_mode_and_func_transforms_on_the_triton_path(name, device):
    """Forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) and ``torch.func.grad``
    on the Triton backend give the reference's tangents and gradients (they run the reference):
    not a zero tangent, not an error."""
    import torch.autograd.forward_ad as fwAD
    info = OPS[name]
    sample = info.samples(SMALL, torch.float64, device)[0]
    tangents = tuple(torch.randn_like(t) for t in sample.tensors)
    fn = lambda *ts: info.function(*sample.with_tensors(ts))  # noqa: E731
    ref = lambda *ts: info.reference(*sample.with_tensors(ts))  # noqa: E731
    first = lambda outs: outs[0] if isinstance(outs, tuple) else outs  # noqa: E731
    want_out, want_tangent = torch.func.jvp(ref, tuple(sample.tensors), tangents)
    want_grad = torch.func.grad(lambda *ts: first(ref(*ts)).square().sum())(*sample.tensors)
    with psfops.backend("triton"):
        got_out, got_tangent = torch.func.jvp(fn, tuple(sample.tensors), tangents)
        with fwAD.dual_level():
            dual = fn(*[fwAD.make_dual(t, d) for t, d in zip(sample.tensors, tangents)])
            dual_tangent = fwAD.unpack_dual(first(dual)).tangent
        got_grad = torch.func.grad(lambda *ts: first(fn(*ts)).square().sum())(*sample.tensors)
    assert first(want_tangent).abs().max() > 0
    assert_rel_close(first(got_out), first(want_out), 1e-12, f"{name} jvp output")
    assert_rel_close(first(got_tangent), first(want_tangent), 1e-12, f"{name} jvp tangent")
    assert_rel_close(dual_tangent, first(want_tangent), 1e-12, f"{name} forward_ad tangent")
    assert_rel_close(got_grad, want_grad, 1e-12, f"{name} func.grad")
