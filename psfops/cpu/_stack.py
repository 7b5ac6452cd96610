"""Conv-stack: one 1-input-channel conv2d per basis kernel (oneDNN), chunked over J."""
from __future__ import annotations

import torch.nn.functional as F


def _batches(basis, B, J, plane_bytes, budget, *ts):
    """(kernels (J,k,k), slices of ``ts``, J chunk): a per-sample basis (B,J,k,k) runs sample by sample
    (one-sample slices of ``ts``), a shared one the whole batch at once; the J chunk keeps a
    (batch,C,chunk,H,W) stack (``plane_bytes`` per (batch,C) plane of one j) within ``budget``."""
    per = basis.dim() == 4
    jc = max(1, min(J, budget // max(1, (1 if per else B) * plane_bytes)))
    if per:
        return [(basis[b], [t[b:b + 1] for t in ts], jc) for b in range(B)]
    return [(basis, list(ts), jc)]


def _stack_forward(xpad, w, basis, B, C, H, W, J, k, d, budget):
    y = xpad.new_zeros((B, C, H, W))
    for kern, (xs, yb, wb), jc in _batches(basis, B, J, C * H * W * xpad.element_size(), budget, xpad, y, w):
        inp = xs.reshape(-1, 1, *xs.shape[-2:])
        for j0 in range(0, J, jc):
            j1 = min(J, j0 + jc)
            st = F.conv2d(inp, kern[j0:j1].unsqueeze(1), dilation=d).view(*yb.shape[:2], j1 - j0, H, W)
            for j in range(j0, j1):
                yb.addcmul_(st[:, :, j - j0], wb[:, j:j + 1])
            del st
    return y


def _stack_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P, zeros):
    """Extended (B,C,H+2P,W+2P) scatter (or, for zero padding, directly the (B,C,H,W) crop)."""
    pp = P if zeros else 2 * P
    out = y.new_zeros((B, C, H, W) if zeros else (B, C, H + 2 * P, W + 2 * P))
    for kern, (ys, ob, wb), jc in _batches(basis, B, J, C * H * W * y.element_size(), budget, y, out, w):
        kern = kern.flip(-1, -2)
        for j0 in range(0, J, jc):
            j1 = min(J, j0 + jc)
            z = ys.unsqueeze(2) * wb[:, j0:j1].unsqueeze(1)  # (bb,C,jc,H,W)
            r = F.conv2d(z.flatten(0, 1), kern[j0:j1].unsqueeze(0), padding=pp, dilation=d)
            del z
            ob.add_(r.view(ob.shape))
            del r
    return out
