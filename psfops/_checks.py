"""Argument checks, one per op and one per backward op: clear ``TypeError``/``ValueError``
naming the argument, from tensor metadata only (no host-device syncs).

Where they run: the public function (``psfops.<op>``, before a backend is chosen, so both
backends refuse the same inputs with the same message), ``psfops.reference.<op>``, and every
registered custom op, forward and backward, in both its real and its fake implementation
(``torch.ops.psfops.*`` is public API: an unchecked kernel launch would read and write out of
bounds). The reference's unchecked cores and the kernel launchers assume checked input.
"""
from __future__ import annotations

import torch

from .env import accumulation_dtype
from . import padding as _padding

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t, ndim: int | None = 4) -> None:
    """``t`` is a floating tensor of rank ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_same(first: str, t0: torch.Tensor, **others: torch.Tensor) -> None:
    """All tensors share ``t0``'s dtype and device."""
    for name, t in others.items():
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has {t0.dtype}; use one dtype")
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {t0.device}; use one device")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """``t.shape[dim] == expected``, else a ValueError naming ``what`` it must match."""
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {t.shape[dim]} in dim {dim}, expected {expected} ({what}); "
            f"got shape {tuple(t.shape)}"
        )


def check_like(name: str, t, like_name: str, like: torch.Tensor) -> None:
    """``t`` is a tensor with the shape, dtype and device of ``like`` (a gradient of ``like``)."""
    check_tensor(name, t, ndim=None)
    check_same(like_name, like, **{name: t})
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")


def check_needs(needs, n: int) -> None:
    """``needs``: which of the forward's ``n`` tensor inputs want a gradient (n bools)."""
    if not isinstance(needs, (list, tuple)) or len(needs) != n or not all(isinstance(b, bool) for b in needs):
        raise ValueError(f"needs must be a list of {n} bools (one per tensor input of the forward), got {needs!r}")


def check_dilation(dilation) -> None:
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")


def check_kernel_size(name: str, k: int) -> None:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{name} kernel size must be odd and positive, got {k}")


# ---- per-op argument checks (shared by psfops.<op> and psfops.reference.<op>) ----

def check_padding(padding) -> None:
    """``padding`` is one of ``psfops.padding.PADDINGS`` (zeros, reflect, replicate, circular)."""
    _padding._check_mode(padding)  # (one message for the ops and psfops.padding)


def check_basis(basis, J: int, batch: int | None = None, batch_of: str = "x") -> None:
    """``basis`` is (J, k, k), shared by the batch, or (B, J, k, k), one dictionary per sample
    (``batch``: the batch size B of ``batch_of`` it must then have; None: any); k odd."""
    check_tensor("basis", basis, ndim=None)
    if basis.dim() not in (3, 4):
        raise ValueError(f"basis must have shape (J, k, k) (shared) or (B, J, k, k) (per sample), "
                         f"got shape {tuple(basis.shape)}")
    if basis.dim() == 4 and batch is not None:
        check_dim("basis", basis, 0, batch, f"batch size B of {batch_of}: a 4-d basis is (B, J, k, k), one per sample")
    check_dim("basis", basis, basis.dim() - 3, J, "number of basis kernels J = weights.shape[1]")
    if basis.shape[-1] != basis.shape[-2]:
        raise ValueError(f"basis must have shape (J, k, k) or (B, J, k, k) with square kernels, "
                         f"got {tuple(basis.shape)}")
    check_kernel_size("basis", basis.shape[-1])


def _check_filter(image: str, x, weights, basis, dilation, padding) -> None:
    check_tensor(image, x)
    check_tensor("weights", weights)
    check_tensor("basis", basis, ndim=None)
    check_same(image, x, weights=weights, basis=basis)
    check_dim("weights", weights, 0, x.shape[0], f"batch size B of {image}")
    check_dim("weights", weights, 2, x.shape[2], f"height H of {image}")
    check_dim("weights", weights, 3, x.shape[3], f"width W of {image}")
    check_basis(basis, weights.shape[1], x.shape[0], image)
    check_dilation(dilation)
    check_padding(padding)


def check_psf_conv(x, weights, basis, dilation=1, padding="zeros") -> None:
    _check_filter("x", x, weights, basis, dilation, padding)


def check_psf_conv_transpose(y, weights, basis, dilation=1, padding="zeros") -> None:
    _check_filter("y", y, weights, basis, dilation, padding)


def check_synthesize_psf(weights, basis) -> None:
    check_tensor("weights", weights)
    check_tensor("basis", basis, ndim=None)
    check_same("weights", weights, basis=basis)
    check_basis(basis, weights.shape[1], weights.shape[0], "weights")


def psf_kernel_size(psf: torch.Tensor) -> int:
    """k for a (B, k*k, H, W) psf, or ValueError if its channel count is not an odd square."""
    kk = int(psf.shape[1])  # (a plain int: under torch.jit.trace sizes are tensors)
    k = int(round(kk ** 0.5))
    if k * k != kk:
        raise ValueError(f"psf must have k*k channels for an odd k, got {kk} channels (not a square)")
    check_kernel_size("psf", k)
    return k


def check_apply_psf(x, psf, dilation=1, padding="zeros") -> None:
    check_tensor("x", x)
    check_tensor("psf", psf)
    check_same("x", x, psf=psf)
    check_dim("psf", psf, 0, x.shape[0], "batch size B of x")
    check_dim("psf", psf, 2, x.shape[2], "height H of x")
    check_dim("psf", psf, 3, x.shape[3], "width W of x")
    psf_kernel_size(psf)
    check_dilation(dilation)
    check_padding(padding)


def check_spatial_normalize(x, mode="softmax", eps=1e-6) -> None:
    check_tensor("x", x)
    if mode not in ("softmax", "l1"):
        raise ValueError(f"mode must be 'softmax' or 'l1', got {mode!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite non-negative float, got {eps!r}")


def check_gated_blend(cur, prev, gate) -> None:
    check_tensor("cur", cur)
    check_tensor("prev", prev)
    check_tensor("gate", gate)
    check_same("cur", cur, prev=prev, gate=gate)
    if prev.shape != cur.shape:
        raise ValueError(f"prev must have the shape of cur {tuple(cur.shape)}, got {tuple(prev.shape)}")
    B, C, H, W = cur.shape
    if gate.shape not in ((B, C, H, W), (B, 1, H, W)):
        raise ValueError(f"gate must have shape {(B, C, H, W)} or {(B, 1, H, W)}, got {tuple(gate.shape)}")


def check_gated_fusion(cur, prev, weight, bias=None) -> None:
    check_tensor("cur", cur)
    check_tensor("prev", prev)
    check_tensor("weight", weight, ndim=None)
    check_same("cur", cur, prev=prev, weight=weight)
    if prev.shape != cur.shape:
        raise ValueError(f"prev must have the shape of cur {tuple(cur.shape)}, got {tuple(prev.shape)}")
    C = cur.shape[1]
    if tuple(weight.shape) not in ((C, 2 * C), (C, 2 * C, 1, 1)):
        raise ValueError(f"weight must have shape {(C, 2 * C)} or {(C, 2 * C, 1, 1)}, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_same("cur", cur, bias=bias)
        if tuple(bias.shape) != (C,):
            raise ValueError(f"bias must have shape {(C,)}, got {tuple(bias.shape)}")


def check_lstm_cell(gates, c_prev) -> None:
    check_tensor("gates", gates)
    check_tensor("c_prev", c_prev)
    check_same("gates", gates, c_prev=c_prev)
    B, C4, H, W = gates.shape
    if C4 % 4 != 0:
        raise ValueError(f"gates must have 4*C channels (i,f,g,o), got {C4}")
    if tuple(c_prev.shape) != (B, C4 // 4, H, W):
        raise ValueError(f"c_prev must have shape {(B, C4 // 4, H, W)} to match gates {tuple(gates.shape)}, "
                         f"got {tuple(c_prev.shape)}")


# ---- backward ops: the forward's check, plus the incoming gradients (and saved stats) ----

def check_psf_conv_backward(grad, x, weights, basis, dilation, needs, padding="zeros") -> None:
    check_psf_conv(x, weights, basis, dilation, padding)
    check_like("grad", grad, "x", x)
    check_needs(needs, 3)


def check_apply_psf_backward(grad, x, psf, dilation, needs, padding="zeros") -> None:
    check_apply_psf(x, psf, dilation, padding)
    check_like("grad", grad, "x", x)
    check_needs(needs, 2)


def check_synthesize_psf_backward(grad, weights, basis, needs) -> None:
    check_synthesize_psf(weights, basis)
    check_needs(needs, 2)
    check_tensor("grad", grad)
    check_same("weights", weights, grad=grad)
    B, _, H, W = weights.shape
    expected = (B, basis.shape[1] * basis.shape[2], H, W)
    if tuple(grad.shape) != expected:
        raise ValueError(f"grad must have shape {expected}, that of the psf of weights {tuple(weights.shape)} "
                         f"and basis {tuple(basis.shape)}; got {tuple(grad.shape)}")


def check_spatial_normalize_backward(grad, x, stats, mode, needs) -> None:
    check_spatial_normalize(x, mode)
    check_needs(needs, 1)
    check_like("grad", grad, "x", x)
    check_tensor("stats", stats, ndim=2)
    B, C = x.shape[:2]
    acc = accumulation_dtype(x.dtype)
    if tuple(stats.shape) != (B * C, 2) or stats.dtype != acc or stats.device != x.device:
        raise ValueError(f"stats must be the forward's per-plane (max, sum): shape {(B * C, 2)}, {acc}, "
                         f"on {x.device}; got {tuple(stats.shape)}, {stats.dtype}, on {stats.device}")


def check_gated_blend_backward(grad, cur, prev, gate, needs) -> None:
    check_gated_blend(cur, prev, gate)
    check_like("grad", grad, "cur", cur)
    check_needs(needs, 3)


def check_gated_fusion_backward(grad, cur, prev, weight, bias, needs) -> None:
    check_gated_fusion(cur, prev, weight, bias)
    check_like("grad", grad, "cur", cur)
    check_needs(needs, 4)
    if bias is None and needs[3]:
        raise ValueError("needs[3] (the bias gradient) must be False when bias is None")


def check_lstm_cell_backward(grad_h, grad_c, gates, c_prev, needs) -> None:
    check_lstm_cell(gates, c_prev)
    check_needs(needs, 2)
    check_like("grad_h", grad_h, "c_prev", c_prev)
    check_like("grad_c", grad_c, "c_prev", c_prev)
