"""FFT conv-stack: rfft2 of the padded image, products with the kernels' spectra, irfft2.

Each function loops over chunks of J (:func:`_fft_jchunk`) and drops a chunk's planes before the
next one is made; the padded image lives only until its spectrum is taken."""
from __future__ import annotations

import itertools

import torch

from ..padding import pad as _pad
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


def _image_spectrum(x, P, padding):
    """(rfft2 of the padded x (B,C,Nh,F), Nh, Nw); the padded image is freed on return."""
    Nh, Nw = _fft_len(x.shape[-2] + 2 * P), _fft_len(x.shape[-1] + 2 * P)
    return torch.fft.rfft2(_pad(x, P, P, padding), s=(Nh, Nw)), Nh, Nw


def _chunks(B, C, Nh, Nw, J, budget, es):
    """(J chunks, channel chunks) as lists of (start, stop), sized for the ~8 (Nh,Nw) planes (spectra,
    products, a transform and its copy) live per kernel and channel: chunks of J over all channels
    while one kernel's planes fit ``budget``, else one kernel at a time and chunks of channels."""
    plane = 8 * B * Nh * Nw * es
    jc = max(1, min(J, budget // max(1, plane * C)))
    cc = C if plane * C <= budget else max(1, budget // max(1, plane))
    return [(j0, min(J, j0 + jc)) for j0 in range(0, J, jc)], [(c0, min(C, c0 + cc)) for c0 in range(0, C, cc)]


def _kernel_chunks(basis, B, C, Nh, Nw, J, budget, es, k, d):
    """(j0, j1, c0, c1, spectra of kernels j0..j1-1 as in :func:`_chunk_spectra`), j outer (each
    chunk's spectra made once)."""
    jchunks, cchunks = _chunks(B, C, Nh, Nw, J, budget, es)
    for j0, j1 in jchunks:
        Kh = _chunk_spectra(basis, j0, j1, k, d, Nh, Nw)
        for c0, c1 in cchunks:
            yield j0, j1, c0, c1, Kh
        del Kh


def _fft_forward(x, padding, w, basis, B, C, H, W, J, k, d, budget):
    X, Nh, Nw = _image_spectrum(x, d * (k // 2), padding)
    y = x.new_zeros((B, C, H, W))
    for j0, j1, c0, c1, Kh in _kernel_chunks(basis, B, C, Nh, Nw, J, budget, x.element_size(), k, d):
        st = torch.fft.irfft2(X[:, c0:c1].unsqueeze(2) * Kh.conj(), s=(Nh, Nw))[..., :H, :W]
        for j in range(j0, j1):
            y[:, c0:c1].addcmul_(st[:, :, j - j0], w[:, j:j + 1])
        del st
    return y


def _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P):
    Hp, Wp = H + 2 * P, W + 2 * P
    Nh, Nw = _fft_len(Hp), _fft_len(Wp)
    acc = torch.zeros((B, C, Nh, Nw // 2 + 1), dtype=torch.promote_types(y.dtype, torch.complex64))
    for j0, j1, c0, c1, Kh in _kernel_chunks(basis, B, C, Nh, Nw, J, budget, y.element_size(), k, d):
        Z = torch.fft.rfft2(y[:, c0:c1].unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))  # (B,c,jc,Nh,F)
        for j in range(j1 - j0):
            acc[:, c0:c1].addcmul_(Z[:, :, j], Kh[:, :, j])
        del Z
    return torch.fft.irfft2(acc, s=(Nh, Nw))[..., :Hp, :Wp]


def _fft_wgrad(x, padding, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b):
    P = d * (k // 2)
    X, Nh, Nw = _image_spectrum(x, P, padding)
    dw = torch.zeros_like(w) if need_w else None
    dbasis = torch.zeros_like(basis) if need_b else None
    S = None  # (B,jc,Nh,F): sum_c X_c conj(Z_jc) of the current J chunk
    for j0, j1, c0, c1, Kh in _kernel_chunks(basis, B, C, Nh, Nw, J, budget, x.element_size(), k, d):
        if need_w:
            st = torch.fft.irfft2(X[:, c0:c1].unsqueeze(2) * Kh.conj(), s=(Nh, Nw))[..., :H, :W]
            for c, j in itertools.product(range(c1 - c0), range(j1 - j0)):
                dw[:, j0 + j].addcmul_(st[:, c, j], dy[:, c0 + c])
            del st
        if need_b:
            if c0 == 0:
                S = X.new_zeros((B, j1 - j0, Nh, Nw // 2 + 1))
            Z = torch.fft.rfft2(dy[:, c0:c1].unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))
            for c, j in itertools.product(range(c1 - c0), range(j1 - j0)):
                S[:, j].addcmul_(X[:, c0 + c], Z[:, c, j].conj())
            del Z
            if c1 == C:
                corr = torch.fft.irfft2(S if basis.dim() == 4 else S.sum(0), s=(Nh, Nw))
                dbasis[..., j0:j1, :, :] = corr[..., :2 * P + 1:d, :2 * P + 1:d]
    return dw, dbasis
