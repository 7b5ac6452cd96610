"""Padding modes: how an image is extended outside its borders, and the adjoint of that extension.

An axis of length ``n`` extended by ``pad`` on each side has extended indices
``e = -pad .. n+pad-1``; each mode maps ``e`` to a source index in ``[0, n)``:

- ``"zeros"``: inside, ``e`` itself; outside, no source (the value is 0).
- ``"replicate"``: ``clamp(e, 0, n-1)``.
- ``"circular"``: ``e mod n``.
- ``"reflect"``: mirror about the edge pixels without repeating them, period ``2(n-1)``
  (``-1 -> 1``, ``n -> n-2``); ``n == 1``: always 0.

These maps equal ``torch.nn.functional.pad`` wherever ``F.pad`` accepts the pad size (``reflect``
needs ``pad < n``, ``circular`` ``pad <= n``) and are defined for every ``pad >= 0`` otherwise: a
large reflect pad keeps mirroring (periodically), a large circular pad keeps wrapping, a replicate pad
keeps the edge. An axis of length 0 has no source for any extended index (it pads with zeros).

:func:`pad` extends a tensor's last two dims; :func:`pad_adjoint` is its exact adjoint (each extended
value added onto its source pixel; with ``"zeros"`` the border is dropped).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PADDINGS", "source_indices", "pad", "pad_adjoint"]

PADDINGS = ("zeros", "reflect", "replicate", "circular")


def _check_mode(mode) -> None:
    if not isinstance(mode, str) or mode not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(repr(m) for m in PADDINGS)}, got {mode!r}")


def _check_pad(name: str, p) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise ValueError(f"{name} must be an int >= 0, got {p!r}")
    return int(p)


def source_indices(n: int, pad: int, mode: str, device=None) -> torch.Tensor:
    """Source index of each extended index ``e = -pad .. n+pad-1`` of an axis of length ``n``.

    Returns a LongTensor of length ``n + 2*pad`` with values in ``[0, n)``, or ``-1`` where the
    extended position has no source (``"zeros"`` outside the axis, or ``n == 0``).
    """
    _check_mode(mode)
    n, pad = _check_pad("n", int(n)), _check_pad("pad", int(pad))
    e = torch.arange(-pad, n + pad, dtype=torch.long, device=device)
    if n == 0:
        return torch.full_like(e, -1)
    if mode == "zeros":
        return torch.where((e >= 0) & (e < n), e, torch.full_like(e, -1))
    if mode == "replicate":
        return e.clamp(0, n - 1)
    if mode == "circular":
        return torch.remainder(e, n)
    if n == 1:  # reflect of a single pixel
        return torch.zeros_like(e)
    period = 2 * (n - 1)
    m = torch.remainder(e, period)
    return torch.where(m < n, m, period - m)


def pad(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Extend the last two dims of ``x`` (..., H, W) to (..., H+2*pad_h, W+2*pad_w) by ``mode``.

    Equals ``F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode)`` (``"zeros"``: constant 0) wherever
    ``F.pad`` accepts the pad size; any ``pad >= 0`` works (see the module docstring).
    Differentiable (its gradient is :func:`pad_adjoint`).
    """
    _check_mode(mode)
    pad_h, pad_w = _check_pad("pad_h", int(pad_h)), _check_pad("pad_w", int(pad_w))
    if mode == "zeros" or x.shape[-2] == 0 or x.shape[-1] == 0:
        return F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    H, W = int(x.shape[-2]), int(x.shape[-1])  # (plain ints: under torch.jit.trace sizes are tensors)
    if pad_h:
        x = x.index_select(-2, source_indices(H, pad_h, mode, x.device))
    if pad_w:
        x = x.index_select(-1, source_indices(W, pad_w, mode, x.device))
    return x


def pad_adjoint(z: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """The adjoint of :func:`pad`: (..., H+2*pad_h, W+2*pad_w) -> (..., H, W).

    Each extended value is added onto its source pixel (``"zeros"``: the border is dropped), so
    ``<pad(x), z> == <x, pad_adjoint(z)>``. Differentiable.
    """
    _check_mode(mode)
    pad_h, pad_w = _check_pad("pad_h", int(pad_h)), _check_pad("pad_w", int(pad_w))
    Hp, Wp = int(z.shape[-2]), int(z.shape[-1])
    H, W = Hp - 2 * pad_h, Wp - 2 * pad_w
    if H < 0:
        raise ValueError(f"pad_h={pad_h} is more than half the height of z, shape {tuple(z.shape)}")
    if W < 0:
        raise ValueError(f"pad_w={pad_w} is more than half the width of z, shape {tuple(z.shape)}")
    if mode == "zeros" or H == 0 or W == 0:
        return z[..., pad_h:pad_h + H, pad_w:pad_w + W]
    if pad_h:
        rows = z.new_zeros((*z.shape[:-2], H, Wp))
        z = rows.index_add(-2, source_indices(H, pad_h, mode, z.device), z)
    if pad_w:
        cols = z.new_zeros((*z.shape[:-2], H, W))
        z = cols.index_add(-1, source_indices(W, pad_w, mode, z.device), z)
    return z
