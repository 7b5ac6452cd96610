"""Tap loop: per-pixel taps synthesized by matrix products, applied tap by tap over row strips."""
from __future__ import annotations

import torch

from ._util import _run_groups, _row_groups, _strips, _tap_chunk


def _synth(w_rows: torch.Tensor, bflat: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """(B,J,n) weights, (J,T)|(B,J,T) basis -> (B,t1-t0,n) taps t0..t1-1. A batched product over a
    broadcast basis (``matmul`` would fold a shared basis into one mm over a transposed copy of the
    weights when they require grad: a weights-sized clone, and a taps-sized one for the result)."""
    bt = bflat[..., t0:t1].transpose(-1, -2)
    return torch.bmm(bt.expand(w_rows.shape[0], *bt.shape[-2:]), w_rows)


def _tap_chunks(B, C, H, W, T, es, budget, g0, g1):
    """(r0, r1, t0, t1): the row strips of [g0, g1) (:func:`_strips`), each cut into chunks of taps
    whose (B, t1-t0, rows, W) buffers fit ``budget``."""
    for r0, r1 in _strips(B, C, H, W, T, es, g0, g1):
        tc = _tap_chunk(B, r1 - r0, W, T, budget, es)
        for t0 in range(0, T, tc):
            yield r0, r1, t0, min(T, t0 + tc)


def _taps(kernels, B, C, H, W, k, T, es, budget, g0, g1):
    """(r0, r1, u, v, K_t (B,1,rows,W)) per strip and tap t = u*k+v; ``kernels(r0, r1, t0, t1)`` ->
    (B, t1-t0, rows*W) gives the taps of a chunk (one chunk alive at a time)."""
    for r0, r1, t0, t1 in _tap_chunks(B, C, H, W, T, es, budget, g0, g1):
        K = kernels(r0, r1, t0, t1).view(B, t1 - t0, 1, r1 - r0, W)
        for t in range(t0, t1):
            yield (r0, r1, *divmod(t, k), K[:, t - t0])
        del K


def _taps_forward(xpad, kernels, B, C, H, W, k, d, T, budget):
    """y[b,c,p] = sum_t K_t[b,p] xpad[b,c,p+s_t]; ``kernels`` as in :func:`_taps`."""
    y = xpad.new_zeros((B, C, H, W))

    def group(g0, g1):
        for r0, r1, u, v, Kt in _taps(kernels, B, C, H, W, k, T, xpad.element_size(), budget, g0, g1):
            y[:, :, r0:r1].addcmul_(xpad[:, :, r0 + u * d:r1 + u * d, v * d:v * d + W], Kt)

    _run_groups(group, H)
    return y


def _taps_scatter(y, kernels, B, C, H, W, k, d, T, budget, P):
    """The adjoint of :func:`_taps_forward` onto the extended (B,C,H+2P,W+2P) grid. Each row group
    writes its own extended rows; what spills into the next group's rows goes to a private halo
    (2P rows) added after the join."""
    ext = y.new_zeros((B, C, H + 2 * P, W + 2 * P))
    starts = [g[0] for g in _row_groups(H)]
    ends = dict(zip(starts, starts[1:] + [H + 2 * P]))  # extended rows owned by a group: [g0, ends[g0])

    def group(g0, g1):
        R1 = ends[g0]
        halo = y.new_zeros((B, C, 2 * P, W + 2 * P)) if R1 < H + 2 * P and P > 0 else None
        for r0, r1, u, v, Kt in _taps(kernels, B, C, H, W, k, T, y.element_size(), budget, g0, g1):
            lo, hi = r0 + u * d, r1 + u * d
            cut = min(max(R1, lo), hi)
            ys, cols = y[:, :, r0:r1], slice(v * d, v * d + W)
            if cut > lo:
                ext[:, :, lo:cut, cols].addcmul_(ys[:, :, :cut - lo], Kt[..., :cut - lo, :])
            if hi > cut:
                halo[:, :, cut - R1:hi - R1, cols].addcmul_(ys[:, :, cut - lo:], Kt[..., cut - lo:, :])
        return R1, halo

    for R1, halo in _run_groups(group, H):
        if halo is not None:
            ext[:, :, R1:R1 + 2 * P] += halo
    return ext


def _tap_grads(xpad, dy, B, C, H, W, k, d, T, budget, consume):
    """dK[b,t,p] = sum_c dy[b,c,p] xpad[b,c,p+s_t] for chunks of taps and strips of rows:
    ``consume(g0, r0, r1, t0, t1, dK)`` with dK (B, t1-t0, rows*W), g0 the first row of the calling
    row group (groups may run in parallel: write only rows r0..r1 of shared outputs, keep
    per-group partial sums)."""
    def group(g0, g1):
        prod = None
        for r0, r1, t0, t1 in _tap_chunks(B, C, H, W, T, dy.element_size(), budget // 2, g0, g1):
            rows, dys = r1 - r0, dy[:, :, r0:r1]
            if C > 1 and (prod is None or prod.shape[2] != rows):
                prod = dy.new_empty((B, C, rows, W))
            dK = dy.new_empty((B, t1 - t0, rows, W))
            for t in range(t0, t1):
                u, v = divmod(t, k)
                xs = xpad[:, :, r0 + u * d:r1 + u * d, v * d:v * d + W]
                if C == 1:
                    torch.mul(dys[:, 0], xs[:, 0], out=dK[:, t - t0])
                else:
                    torch.mul(dys, xs, out=prod)
                    torch.sum(prod, dim=1, out=dK[:, t - t0])
            consume(g0, r0, r1, t0, t1, dK.view(B, t1 - t0, rows * W))
            del dK

    _run_groups(group, H)


def _taps_wgrad(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b):
    T = k * k
    per = basis.dim() == 4
    bflat = basis.reshape(*basis.shape[:-2], T)
    dw = torch.zeros_like(w) if need_w else None
    dwf = dw.view(B, J, H * W) if need_w else None
    parts = {}  # row group -> its partial d(basis) (groups run in parallel)
    wf = w.view(B, J, H * W)

    def consume(g0, r0, r1, t0, t1, dK):
        if need_w:
            bc = bflat[..., t0:t1]  # (J,tc) or (B,J,tc); accumulate in place (no dw-sized temporary)
            dwf[:, :, r0 * W:r1 * W].baddbmm_(bc.expand(B, *bc.shape[-2:]), dK)
        if need_b:
            if g0 not in parts:
                parts[g0] = torch.zeros((B, J, T) if per else (J, T), dtype=w.dtype)
            g = torch.matmul(wf[:, :, r0 * W:r1 * W], dK.transpose(1, 2))  # (B,J,tc)
            parts[g0][..., t0:t1] += g if per else g.sum(0)

    _tap_grads(xpad, dy, B, C, H, W, k, d, T, budget, consume)
    db = sum(parts.values()).view(basis.shape) if need_b else None
    return dw, db
