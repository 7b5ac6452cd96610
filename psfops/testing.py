"""The op table: every psfops op with its public function, reference, custom ops (forward and
backward) and sample-input builders.

The registration tests (``opcheck`` of every custom op, ``torch.compile``, empty and bad input),
the benchmark cases (``bench/cases.py``) and the sm_90 compile check (``python -m bench sm90``)
are generated from :data:`OPS`. Each row comes from the op's one definition
(``psfops._registry.op``), so adding an op adds its row.

    >>> from psfops.testing import OPS, Shape
    >>> info = OPS["psf_conv"]
    >>> sample = info.samples(Shape(B=1, C=2, H=8, W=8, J=3, k=3), torch.float32, "cpu")[0]
    >>> y = info.function(*sample.args)
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import gating, lstm, normalize, psf  # noqa: F401  (their definitions register the ops)
from ._registry import REGISTERED, Op
from ._samples import Sample, Shape

__all__ = ["Shape", "Sample", "OpInfo", "OPS", "HEADLINE", "backward_args", "tensor_inputs",
           "registered_custom_ops"]

OpInfo = Op  # a row of the table
OPS: dict[str, Op] = REGISTERED
HEADLINE = psf.HEADLINE


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
        tensors = set(tensor_inputs(info))
        needs = [isinstance(a, Tensor) for a, arg in zip(args, info.forward.default._schema.arguments)
                 if arg.name in tensors]
    return (*info.make_backward_args(args, outputs, grads), needs)


def registered_custom_ops() -> set[str]:
    """Names (without the ``psfops::`` namespace) of every custom op registered in ``psfops``."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("psfops::")}
