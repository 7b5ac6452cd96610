"""``spatial_normalize``: normalize each (b, c) plane to sum to 1 (softmax or l1), one definition
(``psfops._registry.op``; kernels in ``psfops.kernels.normalize``). The forward custom op also
returns the per-plane statistics (B*C, 2) its backward uses; the public function returns y."""
from __future__ import annotations

from torch import Tensor

from . import _checks, reference
from ._registry import kernels, op
from ._samples import Sample, pixels, planes
from .env import accumulation_dtype

__all__ = ["spatial_normalize"]


def _normalize_samples(s, dtype, device, requires_grad=False):
    return [Sample((x, mode, 1e-6), f"mode={mode}")
            for mode, x in zip(("softmax", "l1"), planes(s, dtype, device, requires_grad, 2))]


def _outputs(x, mode, eps):
    B, C = x.shape[:2]
    return (x.shape, x.dtype), ((B * C, 2), accumulation_dtype(x.dtype))


@op(check=_checks.check_spatial_normalize, reference=reference.spatial_normalize.unchecked, outputs=_outputs,
    kernel=lambda x, mode, eps: kernels.normalize.normalize_forward(x, mode, eps),
    backward_kernel=lambda grad, x, mode, eps, stats, needs: (
        kernels.normalize.normalize_backward(grad, x, stats, mode) if needs[0] else x.new_empty(0),),
    saved_outputs={1: "stats"}, result=lambda outs: outs[0],
    samples=_normalize_samples, axes=("B", "C", "H"), bench_shape=dict(B=8, C=40, H=128),
    flops=lambda s: 5.0 * pixels(s) * s.C)  # softmax: max, subtract, exp, sum, divide
def spatial_normalize(x: Tensor, mode: str = "softmax", eps: float = 1e-6) -> Tensor:
    """Normalize each (b, c) plane of x over its H*W values to sum to 1.

    ``"softmax"``: ``y = exp(x - max) / sum exp(x - max)`` (stable). ``"l1"``:
    ``y = |x| / (sum |x| + eps)``; its gradient uses sign(0) = 0, like ``torch.abs``. Any plane
    size (the Triton path loops over the plane in blocks). NaN/Inf propagate as in
    ``torch.softmax`` / the l1 formula. For a (J, k, k) kernel basis use ``x.view(1, J, k, k)``.

    Args:
        x: (B, C, H, W).
        mode: ``"softmax"`` or ``"l1"``.
        eps: non-negative float, l1 only.
    Returns:
        (B, C, H, W), dtype of ``x`` (contiguous NCHW on the Triton path).
    """
