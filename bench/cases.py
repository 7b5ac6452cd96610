"""What is benchmarked: the ops, their inputs, implementations, sweeps and byte/FLOP models.

:data:`OPS` is generated from the op table ``psfops.testing.OPS``; nothing here times anything
(see :mod:`bench.harness`).

Implementations of an op (``impl`` in the records):

- ``triton``: ``psfops.<op>`` under ``psfops.backend("triton")`` (the fused kernels).
- ``eager``: ``psfops.reference.<op>`` (for psf_conv the unfold + einsum form).
- ``eager-convstack``: psf_conv only, ``psfops.reference.psf_conv_convstack`` (depthwise conv
  stack (B,C,J,H,W) mixed per pixel), the second eager baseline.
- ``compile``: ``torch.compile(psfops.reference.<op>)`` (``dynamic=True`` in sweeps, so one graph
  per op/dtype/pass serves every shape; ``dynamic=False`` in the headline check).

Byte model (``min_bytes``): the fewest bytes any implementation must move. Forward: every input
read once and every output written once. Forward+backward: that, plus the backward reading the
output cotangents and the forward inputs once and writing one gradient per input.

FLOP model (``OpSpec.fwd_flops``, from the op table): multiply-adds counted as 2 FLOPs, a
sigmoid/tanh/exp as 1, of the op's math only (no recomputation, no materialized intermediates).
Forward+backward counts 3x the forward (the usual rule: the backward of each product is two
products), stated, not measured.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from psfops import reference
from psfops.testing import HEADLINE as HEADLINE_SHAPE
from psfops.testing import OPS as OPS_TABLE
from psfops.testing import Shape

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
    """How to benchmark one op: its row of ``psfops.testing.OPS`` (functions, sample inputs,
    axes, base shape, FLOP model), plus ``extra_eager`` baselines by impl name."""
    name: str
    extra_eager: dict = dataclasses.field(default_factory=dict)

    @property
    def info(self):
        return OPS_TABLE[self.name]

    @property
    def base(self) -> dict:
        return self.info.bench_shape

    @property
    def axes(self) -> tuple[str, ...]:
        return self.info.axes

    def fwd_flops(self, case: Case) -> float:
        return self.info.flops(_shape(case))

    def make_inputs(self, case: Case, device, requires_grad: bool) -> tuple:
        """The arguments of one call (tensors and options; the op table's first sample, which is
        the op's usual use: softmax mixing weights, a per-channel gate, a bias, ...)."""
        return self.info.samples(_shape(case), case.torch_dtype, device, requires_grad)[0].args

    def implementations(self) -> dict[str, Callable | None]:
        """impl name -> the function to benchmark."""
        impls: dict[str, Callable | None] = {"triton": self.info.function, "eager": self.info.reference}
        impls.update(self.extra_eager)
        impls["compile"] = self.info.reference  # compiled by the harness
        return impls


def _shape(case: Case) -> Shape:
    return Shape(B=case.B, C=case.C, H=case.H, W=case.W, J=case.J or 1, k=case.k or 1)


HEADLINE = dict(op="psf_conv", **HEADLINE_SHAPE)
# The ops the headline check times at that shape: the forward and, beside it, its transpose.
HEADLINE_OPS = ("psf_conv", "psf_conv_transpose")
OPS: dict[str, OpSpec] = {
    name: OpSpec(name, {"eager-convstack": reference.psf_conv_convstack} if name == "psf_conv" else {})
    for name in OPS_TABLE}

# One-at-a-time sweeps around each op's base shape (a full grid would be thousands of cases).
SWEEP = {"B": (1, 4, 8, 16), "C": (16, 32, 64, 128), "H": (64, 128, 256, 512),
         "J": (10, 20, 40, 80), "k": (3, 5, 7)}
# The small sweep (a GPU run of a few minutes): the size axis only, three sizes.
SMALL_SWEEP = {"H": (64, 128, 256)}
SWEEPS = ("small", "full")
# Shapes an op's bandwidth targets name, measured in every sweep besides the base shape:
# many small planes, few large planes, and the PSF head's 40 maps of one image.
TARGET_SHAPES = {
    "spatial_normalize": (dict(B=8, C=64, H=128), dict(B=1, C=3, H=1024), dict(B=1, C=40, H=128)),
}
def quick_shapes(name: str) -> list[dict]:
    """Small CPU-friendly shapes of an op for ``--quick``: its base shape with B=2, C and J at most
    16, at two sizes (32 and 64) so the size plots have a line."""
    base = OPS[name].base
    small = {**base, "B": 2, "C": min(base["C"], 16), **({"J": min(base["J"], 16)} if "J" in base else {})}
    return [{**small, "H": h} for h in (32, 64)]


# --quick on a CPU compiles only these ops (inductor's CPU compile takes ~10-50 s per graph there)
QUICK_CPU_COMPILE_OPS = ("psf_conv",)


def sweep_cases(ops: Sequence[str], dtypes: Sequence[str], axes: Sequence[str] = AXES,
                quick: bool = False, sweep: str = "full") -> list[Case]:
    """The cases to run: for each op and dtype, its base shape, its :data:`TARGET_SHAPES` and,
    one axis at a time, every value of ``SWEEP[axis]`` (``sweep="small"``: of ``SMALL_SWEEP``)
    for the requested ``axes`` the op has (deduplicated, in order). ``quick`` uses
    :func:`quick_shapes` instead."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep: unknown sweep {sweep!r}; choose from {SWEEPS}")
    values = SWEEP if sweep == "full" else SMALL_SWEEP
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
            shapes = quick_shapes(name)
        else:
            shapes = [spec.base] + [{**spec.base, **t} for t in TARGET_SHAPES.get(name, ())] + [
                {**spec.base, a: v} for a in axes if a in spec.axes for v in values.get(a, ())]
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
