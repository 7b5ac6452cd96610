"""Backward kernels of the memory-bound ops (gated_blend, gated_fusion, lstm_cell) honour every
combination of which inputs need a gradient: autograd with frozen inputs gives the needed
gradients bit for bit as when nothing is frozen, and the backward op leaves everything it was
given untouched (its launcher hands an input's pointer to the kernel in place of each gradient
nobody asked for: a kernel that wrote one would change that input) and returns 0-element
placeholders for the rest. (One input frozen at a time, for every op: test_op_table.py.)"""
from __future__ import annotations

import itertools

import pytest
import torch

import psfops
from psfops.testing import OPS, Shape, backward_args
from helpers import value_and_grads

OPS_WITH_NEEDS = ("gated_blend", "gated_fusion", "lstm_cell")
SHAPE = Shape(B=2, C=5, H=9, W=11)  # gated_fusion: dW partials from 2 programs under the interpreter
VARIANTS = [(name, i) for name in OPS_WITH_NEEDS
            for i in range(len(OPS[name].samples(SHAPE, torch.float32, "cpu")))]


def _ids(v):
    name, i = v
    return f"{name}-{OPS[name].samples(SHAPE, torch.float32, 'cpu')[i].label or i}"


def _subsets(n):
    """Every needs pattern with at least one gradient and at least one frozen input."""
    return [list(bits) for bits in itertools.product((True, False), repeat=n) if any(bits) and not all(bits)]


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_frozen_inputs_through_autograd(variant, device):
    name, i = variant
    info = OPS[name]
    sample = info.samples(SHAPE, torch.float32, device, requires_grad=True)[i]
    fn = lambda *ts: info.function(*sample.with_tensors(ts))  # noqa: E731
    with psfops.backend("triton"):
        _, all_grads, g = value_and_grads(fn, sample.tensors)
        for needs in _subsets(len(sample.tensors)):
            leaves = [t.detach().requires_grad_(n) for t, n in zip(sample.tensors, needs)]
            outs = fn(*leaves)
            outs = outs if isinstance(outs, tuple) else (outs,)
            torch.autograd.backward(outs, g)
            for leaf, need, want in zip(leaves, needs, all_grads):
                if need:
                    assert torch.equal(leaf.grad, want), (name, sample.label, needs)
                else:
                    assert leaf.grad is None, (name, sample.label, needs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_backward_op_writes_only_what_is_needed(variant, dtype, device):
    name, i = variant
    info = OPS[name]
    sample = info.samples(SHAPE, dtype, device)[i]
    args = backward_args(info, sample)
    full = info.backward(*args)
    n = len(args[-1])
    for needs in _subsets(n):
        needs = [a and b for a, b in zip(needs, args[-1])]  # an absent bias never gets one
        if not any(needs):
            continue
        before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args[:-1]]
        outs = info.backward(*args[:-1], needs)
        for a, b in zip(args[:-1], before):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), (name, sample.label, needs, "an input was written")
        for out, want, need in zip(outs, full, needs):
            if need:
                assert torch.equal(out, want), (name, sample.label, needs)
            else:
                assert out.numel() == 0, (name, sample.label, needs)
