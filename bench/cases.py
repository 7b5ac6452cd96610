"""What is benchmarked: the ops, their inputs, implementations, sweeps and byte/FLOP models.

One table (:data:`OPS`) drives every op; nothing here times anything (see :mod:`bench.harness`).

Implementations of an op (``impl`` in the records):

- ``triton``: ``psfops.<op>`` under ``psfops.backend("triton")`` (the fused kernels). Missing when
  ``psfops.<op>`` is still the reference itself (an op whose kernel has not landed).
- ``eager``: ``psfops.reference.<op>`` (for psf_conv the unfold + einsum form).
- ``eager-convstack``: psf_conv only, ``psfops.reference.psf_conv_convstack`` (depthwise conv
  stack (B,C,J,H,W) mixed per pixel), the second eager baseline.
- ``compile``: ``torch.compile(psfops.reference.<op>)`` (``dynamic=True`` in sweeps, so one graph
  per op/dtype/pass serves every shape; ``dynamic=False`` in the headline check).

Byte model (``min_bytes``): the fewest bytes any implementation must move. Forward: every input
read once and every output written once. Forward+backward: that, plus the backward reading the
output cotangents and the forward inputs once and writing one gradient per input.

FLOP model (``OpSpec.fwd_flops``): multiply-adds counted as 2 FLOPs, a sigmoid/tanh/exp as 1, of
the op's math only (no recomputation, no materialized intermediates). Forward+backward counts 3x
the forward (the usual rule: the backward of each product is two products), stated, not measured.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import psfops
from psfops import reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PASSES = ("fwd", "fwd+bwd")
IMPLS = ("triton", "eager", "eager-convstack", "compile")
AXES = ("B", "C", "H", "J", "k")


@dataclass(frozen=True)
class Case:
    """One benchmark shape. H == W always; ``J``/``k`` are None for ops that have no such axis."""
    op: str
    B: int
    C: int
    H: int
    J: int | None = None
    k: int | None = None
    dtype: str = "float32"

    @property
    def W(self) -> int:
        return self.H

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def label(self) -> str:
        s = f"B{self.B} C{self.C} {self.H}x{self.W}"
        if self.J is not None:
            s += f" J{self.J}"
        if self.k is not None:
            s += f" k{self.k}"
        return s

    def fields(self) -> dict:
        """The record fields that identify the shape: op, dtype, B, C, H, W, J, k."""
        return {"op": self.op, "dtype": self.dtype, "B": self.B, "C": self.C, "H": self.H,
                "W": self.W, "J": self.J, "k": self.k}


@dataclass(frozen=True)
class OpSpec:
    """How to benchmark one op.

    ``make_inputs(case, device, requires_grad)`` -> tuple of fresh random tensors (never zeros);
    ``call(fn, *inputs)`` applies an implementation ``fn`` with the op's fixed extra arguments;
    ``fwd_flops(case)`` -> forward FLOPs; ``base`` -> the base shape of the sweeps; ``axes`` -> which
    of B, C, H, J, k the op has.
    """
    name: str
    make_inputs: Callable[[Case, torch.device, bool], tuple]
    fwd_flops: Callable[[Case], float]
    base: dict
    axes: tuple[str, ...]
    call: Callable = staticmethod(lambda fn, *inputs: fn(*inputs))
    extra_eager: dict = dataclasses.field(default_factory=dict)

    def implementations(self) -> dict[str, Callable | None]:
        """impl name -> the function to benchmark (None for ``triton`` when no kernel exists)."""
        ref = getattr(reference, self.name)
        op = getattr(psfops, self.name)
        impls: dict[str, Callable | None] = {"triton": None if op is ref else op, "eager": ref}
        impls.update(self.extra_eager)
        impls["compile"] = ref  # compiled by the harness
        return impls


def _randn(shape, case: Case, device, requires_grad: bool, scale: float = 1.0) -> torch.Tensor:
    t = (torch.randn(*shape, device=device) * scale).to(case.torch_dtype)
    return t.requires_grad_(requires_grad)


def _psf_conv_inputs(c: Case, device, rg):
    x = _randn((c.B, c.C, c.H, c.W), c, device, rg)
    w = torch.randn(c.B, c.J, c.H, c.W, device=device).softmax(1).to(c.torch_dtype).requires_grad_(rg)
    basis = _randn((c.J, c.k, c.k), c, device, rg, scale=1.0 / c.k)
    return x, w, basis


def _synthesize_inputs(c: Case, device, rg):
    return _psf_conv_inputs(c, device, rg)[1:]


def _apply_psf_inputs(c: Case, device, rg):
    return (_randn((c.B, c.C, c.H, c.W), c, device, rg),
            _randn((c.B, c.k * c.k, c.H, c.W), c, device, rg, scale=1.0 / c.k))


def _planes(c: Case, device, rg, n: int = 1):
    return tuple(_randn((c.B, c.C, c.H, c.W), c, device, rg) for _ in range(n))


def _gated_fusion_inputs(c: Case, device, rg):
    cur, prev = _planes(c, device, rg, 2)
    weight = _randn((c.C, 2 * c.C), c, device, rg, scale=(2 * c.C) ** -0.5)
    bias = _randn((c.C,), c, device, rg, scale=0.1)
    return cur, prev, weight, bias


def _lstm_inputs(c: Case, device, rg):
    return (_randn((c.B, 4 * c.C, c.H, c.W), c, device, rg),) + _planes(c, device, rg)


def _pixels(c: Case) -> int:
    return c.B * c.H * c.W


# Base shapes: psf_conv's is the headline case; the others match it where they can.
_PSF_BASE = dict(B=8, C=64, H=128, J=40, k=7)
OPS: dict[str, OpSpec] = {s.name: s for s in (
    OpSpec("psf_conv", _psf_conv_inputs,
           # synthesis J*k*k MACs per pixel, filtering k*k MACs per pixel and channel
           lambda c: 2.0 * _pixels(c) * c.k * c.k * (c.J + c.C),
           _PSF_BASE, ("B", "C", "H", "J", "k"),
           extra_eager={"eager-convstack": reference.psf_conv_convstack}),
    OpSpec("synthesize_psf", _synthesize_inputs,
           lambda c: 2.0 * _pixels(c) * c.J * c.k * c.k,
           dict(B=8, C=1, H=128, J=40, k=7), ("B", "H", "J", "k")),
    OpSpec("apply_psf", _apply_psf_inputs,
           lambda c: 2.0 * _pixels(c) * c.C * c.k * c.k,
           dict(B=8, C=64, H=128, k=7), ("B", "C", "H", "k")),
    OpSpec("spatial_normalize", lambda c, d, rg: _planes(c, d, rg),
           # softmax: max, subtract, exp, sum, divide per element
           lambda c: 5.0 * _pixels(c) * c.C,
           dict(B=8, C=40, H=128), ("B", "C", "H"),
           call=lambda fn, x: fn(x, "softmax")),
    OpSpec("gated_blend", lambda c, d, rg: _planes(c, d, rg, 3),
           # sigmoid, then s*(cur-prev)+prev
           lambda c: 4.0 * _pixels(c) * c.C,
           dict(B=8, C=64, H=128), ("B", "C", "H")),
    OpSpec("gated_fusion", _gated_fusion_inputs,
           # 1x1 conv 2C->C (4C^2 per pixel), bias, sigmoid, blend
           lambda c: _pixels(c) * (4.0 * c.C * c.C + 5.0 * c.C),
           dict(B=8, C=64, H=128), ("B", "C", "H")),
    OpSpec("lstm_cell", _lstm_inputs,
           # 3 sigmoid + 2 tanh, c = f*c'+i*g (3), h = o*tanh(c) (1)
           lambda c: 9.0 * _pixels(c) * c.C,
           dict(B=8, C=32, H=128), ("B", "C", "H")),
)}

# One-at-a-time sweeps around each op's base shape (a full grid would be thousands of cases).
SWEEP = {"B": (1, 4, 8, 16), "C": (16, 32, 64, 128), "H": (64, 128, 256, 512),
         "J": (10, 20, 40, 80), "k": (3, 5, 7)}
QUICK_SHAPES = {  # small CPU-friendly shapes, two sizes so the size plots have a line
    "psf_conv": [dict(B=2, C=16, H=h, J=16, k=7) for h in (32, 64)],
    "synthesize_psf": [dict(B=2, C=1, H=h, J=16, k=7) for h in (32, 64)],
    "apply_psf": [dict(B=2, C=16, H=h, k=7) for h in (32, 64)],
    "spatial_normalize": [dict(B=2, C=16, H=h) for h in (32, 64)],
    "gated_blend": [dict(B=2, C=16, H=h) for h in (32, 64)],
    "gated_fusion": [dict(B=2, C=16, H=h) for h in (32, 64)],
    "lstm_cell": [dict(B=2, C=16, H=h) for h in (32, 64)],
}

# --quick on a CPU compiles only these ops (inductor's CPU compile takes ~10-50 s per graph there)
QUICK_CPU_COMPILE_OPS = ("psf_conv",)


def sweep_cases(ops: Sequence[str], dtypes: Sequence[str], axes: Sequence[str] = AXES,
                quick: bool = False) -> list[Case]:
    """The cases to run: for each op and dtype, its base shape and, one axis at a time, every
    value of ``SWEEP[axis]`` for the requested ``axes`` the op has (deduplicated, in order).
    ``quick`` uses :data:`QUICK_SHAPES` instead."""
    for name in ops:
        if name not in OPS:
            raise ValueError(f"ops: unknown op {name!r}; choose from {sorted(OPS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtypes: unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    for a in axes:
        if a not in AXES:
            raise ValueError(f"axes: unknown axis {a!r}; choose from {AXES}")
    cases: list[Case] = []
    for name, dtype in itertools.product(ops, dtypes):
        spec = OPS[name]
        if quick:
            shapes = QUICK_SHAPES[name]
        else:
            shapes = [spec.base] + [{**spec.base, a: v} for a in axes if a in spec.axes
                                    for v in SWEEP[a]]
        for shape in shapes:
            case = Case(op=name, dtype=dtype, **shape)
            if case not in cases:
                cases.append(case)
    return cases


def nbytes(tensors) -> int:
    """Total bytes of the tensors in ``tensors`` (non-tensors ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def min_bytes_from_sizes(in_bytes: int, out_bytes: int, pass_: str) -> int:
    """Fewest bytes moved (see the module docstring), from the total input and output sizes:
    fwd = inputs + outputs; fwd+bwd adds the backward's reads of the output cotangents and of
    the inputs, and its writes of one gradient per input (every benchmarked input is a float
    tensor that gets a gradient)."""
    if pass_ == "fwd":
        return in_bytes + out_bytes
    if pass_ != "fwd+bwd":
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    return 3 * in_bytes + 2 * out_bytes


def min_bytes(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], pass_: str) -> int:
    """:func:`min_bytes_from_sizes` of the given input and output tensors."""
    return min_bytes_from_sizes(nbytes(inputs), nbytes(outputs), pass_)


def flops(case: Case, pass_: str) -> float:
    """Modelled FLOPs of ``case`` for ``pass_`` (fwd+bwd = 3x fwd)."""
    f = OPS[case.op].fwd_flops(case)
    return f if pass_ == "fwd" else 3.0 * f
