"""``lstm_cell``: the fused ConvLSTM pointwise update (used by MSPFN), one definition
(``psfops._registry.op``; kernels in ``psfops.kernels.lstm``)."""
from __future__ import annotations

from torch import Tensor

from . import _checks, reference
from ._registry import kernels, op
from ._samples import Sample, pixels, randn

__all__ = ["lstm_cell"]


def _lstm_samples(s, dtype, device, requires_grad=False):
    return [Sample((randn((s.B, 4 * s.C, s.H, s.W), dtype, device, requires_grad),
                    randn((s.B, s.C, s.H, s.W), dtype, device, requires_grad)))]


@op(check=_checks.check_lstm_cell, reference=reference.lstm_cell.unchecked,
    outputs=lambda gates, c_prev: ((c_prev.shape, gates.dtype),) * 2,
    kernel=lambda gates, c_prev: kernels.lstm.lstm_forward(gates, c_prev),
    backward_kernel=lambda grad_h, grad_c, gates, c_prev, needs: kernels.lstm.lstm_backward(
        grad_h, grad_c, gates, c_prev, needs),
    cotangents=("grad_h", "grad_c"), samples=_lstm_samples, axes=("B", "C", "H"), bench_shape=dict(B=8, C=32, H=128),
    # 3 sigmoid + 2 tanh, c = f*c'+i*g (3), h = o*tanh(c) (1)
    flops=lambda s: 9.0 * pixels(s) * s.C)
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
