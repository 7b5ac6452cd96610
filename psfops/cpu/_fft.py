"""FFT conv-stack: rfft2 of the padded image, products with the kernels' spectra, irfft2."""
from __future__ import annotations

import torch

from ._util import _fft_len

def _spectra(basis, k, d, Nh, Nw):
    """rfft2 of the dilated kernels placed at the origin: (...,J,Nh,Nw//2+1)."""
    L = (k - 1) * d + 1
    kd = basis.new_zeros((*basis.shape[:-2], L, L))
    kd[..., ::d, ::d] = basis
    return torch.fft.rfft2(kd, s=(Nh, Nw))


def _chunk_spectra(basis, j0, j1, k, d, Nh, Nw):
    """Spectra of kernels j0..j1-1 shaped (B|1, 1, j1-j0, Nh, F) to broadcast against (B,C,jc,Nh,F)
    (one J chunk at a time: all J spectra at once would be another weights-sized buffer)."""
    Kh = _spectra(basis[..., j0:j1, :, :], k, d, Nh, Nw)
    return Kh.unsqueeze(1) if basis.dim() == 4 else Kh.unsqueeze(0).unsqueeze(0)


def _fft_jchunk(B, C, Nh, Nw, J, budget, es):
    return max(1, min(J, budget // max(1, 8 * B * C * Nh * Nw * es)))  # ~8 planes live per j


def _fft_forward(xpad, w, basis, B, C, H, W, J, k, d, budget):
    Nh, Nw = _fft_len(xpad.shape[-2]), _fft_len(xpad.shape[-1])
    X = torch.fft.rfft2(xpad, s=(Nh, Nw))  # (B,C,Nh,F)
    y = xpad.new_zeros((B, C, H, W))
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, xpad.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        st = torch.fft.irfft2(X.unsqueeze(2) * _chunk_spectra(basis, j0, j1, k, d, Nh, Nw).conj(), s=(Nh, Nw))[..., :H, :W]
        for j in range(j0, j1):
            y.addcmul_(st[:, :, j - j0], w[:, j:j + 1])
    return y


def _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P):
    Hp, Wp = H + 2 * P, W + 2 * P
    Nh, Nw = _fft_len(Hp), _fft_len(Wp)
    acc = None
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, y.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        Z = torch.fft.rfft2(y.unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))  # (B,C,jc,Nh,F)
        part = (Z * _chunk_spectra(basis, j0, j1, k, d, Nh, Nw)).sum(2)
        acc = part if acc is None else acc.add_(part)
    return torch.fft.irfft2(acc, s=(Nh, Nw))[..., :Hp, :Wp]


def _fft_wgrad(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b):
    Nh, Nw = _fft_len(xpad.shape[-2]), _fft_len(xpad.shape[-1])
    P = d * (k // 2)
    X = torch.fft.rfft2(xpad, s=(Nh, Nw))
    dw = torch.zeros_like(w) if need_w else None
    dbasis = torch.zeros_like(basis) if need_b else None
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, xpad.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        if need_w:
            st = torch.fft.irfft2(X.unsqueeze(2) * _chunk_spectra(basis, j0, j1, k, d, Nh, Nw).conj(), s=(Nh, Nw))[..., :H, :W]
            dw[:, j0:j1] = (st * dy.unsqueeze(2)).sum(1)
        if need_b:
            Z = torch.fft.rfft2(dy.unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))
            S = (X.unsqueeze(2) * Z.conj()).sum(1)  # (B,jc,Nh,F)
            if basis.dim() == 3:
                S = S.sum(0)
            corr = torch.fft.irfft2(S, s=(Nh, Nw))[..., :2 * P + 1:d, :2 * P + 1:d]
            dbasis[..., j0:j1, :, :] = corr
    return dw, dbasis
