"""The op table: every psfops op with its public function, reference, custom ops (forward and
backward) and sample-input builders.

The registration tests (``opcheck`` of every custom op, ``torch.compile``, empty and bad input),
the benchmark cases (``bench/cases.py``) and the sm_90 compile check (``python -m bench sm90``)
are generated from :data:`OPS`, so adding an op means writing its own modules and one row here.

    >>> from psfops.testing import OPS, Shape
    >>> info = OPS["psf_conv"]
    >>> sample = info.samples(Shape(B=1, C=2, H=8, W=8, J=3, k=3), torch.float32, "cpu")[0]
    >>> y = info.function(*sample.args)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from . import reference
from .gating import gated_blend, gated_fusion
from .lstm import lstm_cell
from .normalize import spatial_normalize
from .psf import apply_psf, psf_conv, synthesize_psf

__all__ = ["Shape", "Sample", "OpInfo", "OPS", "HEADLINE", "backward_args", "tensor_inputs",
           "registered_custom_ops"]


@dataclass(frozen=True)
class Shape:
    """Sizes a sample is built from; each op uses the ones it has (J, k, dilation: psf ops)."""
    B: int = 2
    C: int = 3
    H: int = 5
    W: int = 6
    J: int = 4
    k: int = 3
    dilation: int = 1


@dataclass(frozen=True)
class Sample:
    """Positional arguments of the public function (tensors and options, every one given, so they
    are also the forward custom op's arguments), and which variant of the op they exercise."""
    args: tuple
    label: str = ""

    @property
    def tensors(self) -> list[Tensor]:
        return [a for a in self.args if isinstance(a, Tensor)]

    def with_tensors(self, tensors) -> tuple:
        """``args`` with its tensors replaced, in order, by ``tensors`` (options kept): so a
        function of the tensors alone is ``lambda *ts: fn(*sample.with_tensors(ts))``."""
        it = iter(tensors)
        return tuple(next(it) if isinstance(a, Tensor) else a for a in self.args)


@dataclass(frozen=True)
class OpInfo:
    """One row of the table.

    ``samples(shape, dtype, device, requires_grad=False)`` -> one :class:`Sample` per variant of
    the op (each kernel path), fresh random values (never zeros), the first being the op's usual
    use. ``make_backward_args(args, outputs, grads)`` -> the backward custom op's arguments, from
    the forward custom op's arguments and outputs and the cotangents of its first
    ``differentiable_outputs`` outputs. ``axes``: the :class:`Shape` sizes the op has (of B, C,
    H, J, k; W follows H in benchmarks); ``bench_shape``: its base benchmark shape;
    ``flops(shape)``: forward FLOPs of the op's math (multiply-add = 2, sigmoid/tanh/exp = 1; no
    recomputation, no materialized intermediates).
    """
    name: str
    function: Callable
    reference: Callable
    forward: Any   # torch.ops.psfops.<name>
    backward: Any  # torch.ops.psfops.<name>_backward
    samples: Callable[..., list[Sample]]
    axes: tuple[str, ...]
    bench_shape: dict
    flops: Callable[[Shape], float]
    make_backward_args: Callable[[tuple, tuple, tuple], tuple] = field(
        default=lambda args, outputs, grads: (*grads, *args))
    differentiable_outputs: int = 1


def _randn(shape, dtype, device, requires_grad: bool, scale: float = 1.0) -> Tensor:
    t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def _mixing_weights(s: Shape, dtype, device, requires_grad: bool) -> Tensor:
    w = torch.randn((s.B, s.J, s.H, s.W), device=device, dtype=torch.float32).softmax(1).to(dtype)
    return w.requires_grad_(requires_grad)


def _psf_conv_samples(s: Shape, dtype, device, requires_grad=False):
    x = _randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad)
    basis = _randn((s.J, s.k, s.k), dtype, device, requires_grad, scale=1.0 / s.k)
    return [Sample((x, _mixing_weights(s, dtype, device, requires_grad), basis, s.dilation))]


def _synthesize_samples(s: Shape, dtype, device, requires_grad=False):
    basis = _randn((s.J, s.k, s.k), dtype, device, requires_grad, scale=1.0 / s.k)
    return [Sample((_mixing_weights(s, dtype, device, requires_grad), basis))]


def _apply_psf_samples(s: Shape, dtype, device, requires_grad=False):
    return [Sample((_randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad),
                    _randn((s.B, s.k * s.k, s.H, s.W), dtype, device, requires_grad, scale=1.0 / s.k),
                    s.dilation))]


def _planes(s: Shape, dtype, device, requires_grad: bool, n: int) -> list[Tensor]:
    return [_randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad) for _ in range(n)]


def _normalize_samples(s: Shape, dtype, device, requires_grad=False):
    return [Sample((x, mode, 1e-6), f"mode={mode}")
            for mode, x in zip(("softmax", "l1"), _planes(s, dtype, device, requires_grad, 2))]


def _blend_samples(s: Shape, dtype, device, requires_grad=False):
    cur, prev, gate = _planes(s, dtype, device, requires_grad, 3)
    shared = _randn((s.B, 1, s.H, s.W), dtype, device, requires_grad)
    return [Sample((cur, prev, gate), "gate=(B,C,H,W)"), Sample((cur, prev, shared), "gate=(B,1,H,W)")]


def _fusion_samples(s: Shape, dtype, device, requires_grad=False):
    cur, prev = _planes(s, dtype, device, requires_grad, 2)
    weight = _randn((s.C, 2 * s.C), dtype, device, requires_grad, scale=max(2 * s.C, 1) ** -0.5)
    bias = _randn((s.C,), dtype, device, requires_grad, scale=0.1)
    return [Sample((cur, prev, weight, bias), "bias"), Sample((cur, prev, weight, None), "no bias")]


def _lstm_samples(s: Shape, dtype, device, requires_grad=False):
    return [Sample((_randn((s.B, 4 * s.C, s.H, s.W), dtype, device, requires_grad),
                    _randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad)))]


def _pixels(s: Shape) -> int:
    return s.B * s.H * s.W


# The headline shape, psf_conv's: the paper's J40 k7 on 64 channels of 128x128, batch 8.
HEADLINE = dict(B=8, C=64, H=128, J=40, k=7)
_PLANES = ("B", "C", "H")

OPS: dict[str, OpInfo] = {info.name: info for info in (
    OpInfo("psf_conv", psf_conv, reference.psf_conv, torch.ops.psfops.psf_conv,
           torch.ops.psfops.psf_conv_backward, _psf_conv_samples, ("B", "C", "H", "J", "k"), HEADLINE,
           # synthesis J*k*k MACs per pixel, filtering k*k MACs per pixel and channel
           lambda s: 2.0 * _pixels(s) * s.k * s.k * (s.J + s.C)),
    OpInfo("synthesize_psf", synthesize_psf, reference.synthesize_psf, torch.ops.psfops.synthesize_psf,
           torch.ops.psfops.synthesize_psf_backward, _synthesize_samples, ("B", "H", "J", "k"),
           dict(B=8, C=1, H=128, J=40, k=7),  # C: no such axis, 1 in benchmark records
           lambda s: 2.0 * _pixels(s) * s.J * s.k * s.k),
    OpInfo("apply_psf", apply_psf, reference.apply_psf, torch.ops.psfops.apply_psf,
           torch.ops.psfops.apply_psf_backward, _apply_psf_samples, ("B", "C", "H", "k"),
           dict(B=8, C=64, H=128, k=7), lambda s: 2.0 * _pixels(s) * s.C * s.k * s.k),
    OpInfo("spatial_normalize", spatial_normalize, reference.spatial_normalize,
           torch.ops.psfops.spatial_normalize, torch.ops.psfops.spatial_normalize_backward,
           _normalize_samples, _PLANES, dict(B=8, C=40, H=128),
           lambda s: 5.0 * _pixels(s) * s.C,  # softmax: max, subtract, exp, sum, divide
           # (grad, x, stats, mode): the forward op returns (y, per-plane stats)
           make_backward_args=lambda args, outputs, grads: (grads[0], args[0], outputs[1], args[1])),
    OpInfo("gated_blend", gated_blend, reference.gated_blend, torch.ops.psfops.gated_blend,
           torch.ops.psfops.gated_blend_backward, _blend_samples, _PLANES, dict(B=8, C=64, H=128),
           lambda s: 4.0 * _pixels(s) * s.C),  # sigmoid, then s*(cur-prev)+prev
    OpInfo("gated_fusion", gated_fusion, reference.gated_fusion, torch.ops.psfops.gated_fusion,
           torch.ops.psfops.gated_fusion_backward, _fusion_samples, _PLANES, dict(B=8, C=64, H=128),
           # 1x1 conv 2C->C (4C^2 per pixel), bias, sigmoid, blend
           lambda s: _pixels(s) * (4.0 * s.C * s.C + 5.0 * s.C)),
    OpInfo("lstm_cell", lstm_cell, reference.lstm_cell, torch.ops.psfops.lstm_cell,
           torch.ops.psfops.lstm_cell_backward, _lstm_samples, _PLANES, dict(B=8, C=32, H=128),
           # 3 sigmoid + 2 tanh, c = f*c'+i*g (3), h = o*tanh(c) (1)
           lambda s: 9.0 * _pixels(s) * s.C, differentiable_outputs=2),
)}


def tensor_inputs(info: OpInfo) -> list[str]:
    """Names of the forward custom op's tensor arguments (optional ones included), in order: what
    the backward op's ``needs`` flags refer to."""
    return [a.name for a in info.forward.default._schema.arguments
            if isinstance(a.type, torch.TensorType) or str(a.type) == "Optional[Tensor]"]


def backward_args(info: OpInfo, sample: Sample, needs: list[bool] | None = None) -> tuple:
    """Arguments of ``info.backward`` for ``sample``: runs the forward custom op once (on detached
    inputs) and pairs it with fresh random cotangents. ``needs`` defaults to a gradient for every
    tensor argument the sample gives (not for an absent optional one)."""
    args = tuple(a.detach() if isinstance(a, Tensor) else a for a in sample.args)
    outputs = info.forward(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = tuple(torch.randn_like(o) for o in outputs[:info.differentiable_outputs])
    if needs is None:
        needs = [isinstance(a, Tensor) for a in args[:len(tensor_inputs(info))]]
    return (*info.make_backward_args(args, outputs, grads), needs)


def registered_custom_ops() -> set[str]:
    """Names (without the ``psfops::`` namespace) of every custom op registered in ``psfops``."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("psfops::")}
