"""Conv-stack: one 1-input-channel conv2d per basis kernel (oneDNN), chunked over J."""
from __future__ import annotations

import torch.nn.functional as F

def _stack_forward(xpad, w, basis, B, C, H, W, J, k, d, budget):
    y = xpad.new_zeros((B, C, H, W))
    per = basis.dim() == 4
    nb = B if per else 1
    bb = 1 if per else B
    jc = max(1, min(J, budget // max(1, bb * C * H * W * xpad.element_size())))
    for b in range(nb):
        xs = xpad[b:b + 1] if per else xpad
        yb = y[b:b + 1] if per else y
        wb = w[b:b + 1] if per else w
        kern = basis[b] if per else basis
        inp = xs.reshape(bb * C, 1, *xs.shape[-2:])
        for j0 in range(0, J, jc):
            j1 = min(J, j0 + jc)
            st = F.conv2d(inp, kern[j0:j1].unsqueeze(1), dilation=d).view(bb, C, j1 - j0, H, W)
            for j in range(j0, j1):
                yb.addcmul_(st[:, :, j - j0], wb[:, j:j + 1])
    return y


def _stack_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P, zeros):
    """Extended (B,C,H+2P,W+2P) scatter (or, for zero padding, directly the (B,C,H,W) crop)."""
    pp = P if zeros else 2 * P
    Ho, Wo = (H, W) if zeros else (H + 2 * P, W + 2 * P)
    out = y.new_zeros((B, C, Ho, Wo))
    per = basis.dim() == 4
    nb = B if per else 1
    bb = 1 if per else B
    jc = max(1, min(J, budget // max(1, bb * C * H * W * y.element_size())))
    for b in range(nb):
        ys = y[b:b + 1] if per else y
        ob = out[b:b + 1] if per else out
        wb = w[b:b + 1] if per else w
        kern = (basis[b] if per else basis).flip(-1, -2)
        for j0 in range(0, J, jc):
            j1 = min(J, j0 + jc)
            z = ys.unsqueeze(2) * wb[:, j0:j1].unsqueeze(1)  # (bb,C,jc,H,W)
            r = F.conv2d(z.view(bb * C, j1 - j0, H, W), kern[j0:j1].unsqueeze(0), padding=pp, dilation=d)
            ob.add_(r.view(bb, C, Ho, Wo))
    return out
