"""``lstm_cell``: the fused ConvLSTM pointwise update (used by MSPFN).

The public function checks its arguments once, then runs either the Triton op
(``torch.ops.psfops.lstm_cell``, a ``torch.library`` custom op with a fake implementation and
registered autograd; the backward is the custom op ``psfops::lstm_cell_backward``) or the
unchecked core of ``psfops.reference`` (see :mod:`psfops._backend` for the choice). The custom
ops check their own arguments too (real and fake implementations share the check), since
``torch.ops.psfops.*`` can be called directly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, reference
from ._backend import use_triton
from ._grads import differentiable_through_reference, for_autograd, gradient_buffers, needs_of

__all__ = ["lstm_cell"]


try:  # the fused kernels; without triton, the reference serves every call
    from .kernels import lstm as kernels
except ImportError:
    kernels = None


@torch.library.custom_op("psfops::lstm_cell", mutates_args=())
def _lstm_cell_op(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    _checks.check_lstm_cell(gates, c_prev)
    return kernels.lstm_forward(gates, c_prev)


@_lstm_cell_op.register_fake
def _(gates, c_prev):
    _checks.check_lstm_cell(gates, c_prev)
    fmt = torch.contiguous_format
    return torch.empty_like(c_prev, memory_format=fmt), torch.empty_like(c_prev, memory_format=fmt)


@torch.library.custom_op("psfops::lstm_cell_backward", mutates_args=())
def _lstm_cell_backward_op(grad_h: Tensor, grad_c: Tensor, gates: Tensor, c_prev: Tensor,
                           needs: list[bool]) -> tuple[Tensor, Tensor]:
    _checks.check_lstm_cell_backward(grad_h, grad_c, gates, c_prev, needs)
    return kernels.lstm_backward(grad_h, grad_c, gates, c_prev, needs)


@_lstm_cell_backward_op.register_fake
def _(grad_h, grad_c, gates, c_prev, needs):
    _checks.check_lstm_cell_backward(grad_h, grad_c, gates, c_prev, needs)
    return gradient_buffers(needs, gates, c_prev)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # the backward recomputes the activations


def _backward(ctx, grad_h, grad_c):
    gates, c_prev = ctx.saved_tensors
    # an output that did not reach the loss may arrive as None
    grad_h = torch.zeros_like(c_prev) if grad_h is None else grad_h
    grad_c = torch.zeros_like(c_prev) if grad_c is None else grad_c
    needs = needs_of(ctx, 2)
    return for_autograd(_lstm_cell_backward_op(grad_h, grad_c, gates, c_prev, needs), needs)


_lstm_cell_op.register_autograd(_backward, setup_context=_setup)
differentiable_through_reference(_lstm_cell_backward_op, lambda grad_h, grad_c, gates, c_prev, needs: (
    [0, 1], [2, 3], reference.lstm_cell.unchecked))


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Fused ConvLSTM pointwise update.

    ``i, f, g, o = gates.chunk(4, 1)``; ``c = sigmoid(f)*c_prev + sigmoid(i)*tanh(g)``,
    ``h = sigmoid(o)*tanh(c)``. The Triton path is one kernel forward and one backward (which
    recomputes the activations, so only gates and c_prev are kept for autograd).

    Args:
        gates: (B, 4C, H, W), pre-activations in the order i, f, g, o (as a conv to 4C gives).
        c_prev: (B, C, H, W), previous cell state.
    Returns:
        (h, c), each (B, C, H, W), dtype of ``gates`` (contiguous NCHW on the Triton path).
    """
    _checks.check_lstm_cell(gates, c_prev)
    if use_triton(gates):
        return _lstm_cell_op(gates, c_prev)
    return reference.lstm_cell.unchecked(gates, c_prev)
