"""Tap loop: per-pixel taps synthesized by matrix products, applied tap by tap over row strips."""
from __future__ import annotations

import torch

from ._util import _run_groups, _row_groups, _strips, _tap_chunk

def _synth(w_rows: torch.Tensor, bflat: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """(B,J,n) weights, (J,T)|(B,J,T) basis -> (B,t1-t0,n) taps t0..t1-1."""
    return torch.matmul(bflat[..., t0:t1].transpose(-1, -2), w_rows)


def _taps_forward(xpad, kernels, B, C, H, W, k, d, T, budget):
    """y[b,c,p] = sum_t K_t[b,p] xpad[b,c,p+s_t]; ``kernels(r0, r1, t0, t1)`` -> (B, t1-t0, rows*W)."""
    es = xpad.element_size()
    y = xpad.new_zeros((B, C, H, W))

    def group(g0, g1):
        for r0, r1 in _strips(B, C, H, W, T, es, g0, g1):
            rows = r1 - r0
            tc = _tap_chunk(B, rows, W, T, budget, es)
            ys = y[:, :, r0:r1]
            for t0 in range(0, T, tc):
                t1 = min(T, t0 + tc)
                K = kernels(r0, r1, t0, t1).view(B, t1 - t0, 1, rows, W)
                for t in range(t0, t1):
                    u, v = divmod(t, k)
                    ys.addcmul_(xpad[:, :, r0 + u * d:r1 + u * d, v * d:v * d + W], K[:, t - t0])

    _run_groups(group, H)
    return y


def _taps_scatter(y, kernels, B, C, H, W, k, d, T, budget, P):
    """The adjoint of :func:`_taps_forward` onto the extended (B,C,H+2P,W+2P) grid. Each row group
    writes its own extended rows; what spills into the next group's rows goes to a private halo
    (2P rows) added after the join."""
    es = y.element_size()
    ext = y.new_zeros((B, C, H + 2 * P, W + 2 * P))
    groups = _row_groups(H)
    ends = [g[0] for g in groups[1:]] + [H + 2 * P]  # extended rows owned by group i: [start_i, ends[i])

    def group(g0, g1):
        R1 = ends[[g[0] for g in groups].index(g0)]
        halo = y.new_zeros((B, C, 2 * P, W + 2 * P)) if R1 < H + 2 * P and P > 0 else None
        for r0, r1 in _strips(B, C, H, W, T, es, g0, g1):
            rows = r1 - r0
            tc = _tap_chunk(B, rows, W, T, budget, es)
            ys = y[:, :, r0:r1]
            for t0 in range(0, T, tc):
                t1 = min(T, t0 + tc)
                K = kernels(r0, r1, t0, t1).view(B, t1 - t0, 1, rows, W)
                for t in range(t0, t1):
                    u, v = divmod(t, k)
                    lo, hi = r0 + u * d, r1 + u * d
                    cut = min(max(R1, lo), hi)
                    Kt = K[:, t - t0]
                    if cut > lo:
                        ext[:, :, lo:cut, v * d:v * d + W].addcmul_(ys[:, :, :cut - lo], Kt[..., :cut - lo, :])
                    if hi > cut:
                        halo[:, :, cut - R1:hi - R1, v * d:v * d + W].addcmul_(ys[:, :, cut - lo:], Kt[..., cut - lo:, :])
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
    es = dy.element_size()

    def group(g0, g1):
        for r0, r1 in _strips(B, C, H, W, T, es, g0, g1):
            rows = r1 - r0
            tc = _tap_chunk(B, rows, W, T, budget // 2, es)
            dys = dy[:, :, r0:r1]
            prod = dy.new_empty((B, C, rows, W)) if C > 1 else None
            for t0 in range(0, T, tc):
                t1 = min(T, t0 + tc)
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
