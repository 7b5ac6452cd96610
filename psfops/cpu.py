"""Fast CPU implementations of the PSF ops: ``psf_conv``, ``psf_conv_transpose``, ``apply_psf``,
``synthesize_psf`` (same signatures as :mod:`psfops.reference`, arguments NOT checked: the caller
has validated them), each a ``torch.autograd.Function`` with a hand-written backward.

Three algorithms, picked per call (per pass of the backward, too) by :func:`choose`:

``"stack"``  conv-stack: each basis kernel as a 1-input-channel ``F.conv2d`` (oneDNN) over the padded
             image, chunked over J so that the (B,C,J,H,W) stack never exists whole, mixed into the
             output by the weights (``addcmul_``). The adjoint is one ``conv2d`` per J chunk whose input
             channels are the chunk's ``w_j * y`` planes (the conv sums over j itself).
``"taps"``   tap loop: per-pixel taps ``K_t = sum_j w_j basis_j[t]`` synthesized by a matrix product
             for a chunk of taps and a strip of rows at a time, then ``y += K_t * shift_t(xpad)`` for
             every tap (the adjoint scatters ``K_t * y`` onto the shifted extended image). Rows are
             processed in strips so the output strip stays in cache across the k*k taps.
``"fft"``    FFT conv-stack: ``rfft2`` of the padded image once, per J chunk a product with the
             kernels' spectra and an ``irfft2``; the adjoint sums the spectra over j before one
             inverse transform. No wrap-around: the transform size is at least the padded size.

Gradients of weights and basis go through the per-pixel tap gradients
``dK[b,t,p] = sum_c dy[b,c,p] * shift_t(xpad)[b,c,p]`` (tap loop, chunked over taps and strips) and two
matrix products (``dw = basis @ dK``, ``dbasis = w @ dK^T``) on the stack/taps algorithms, and
through spectra on the fft algorithm. ``apply_psf`` always uses the tap loop (its kernels are given).

Memory: every work buffer is sized from the bytes of the call's inputs and outputs (gradients
included for a backward), :func:`work_budget`, so a call allocates at most about that much on top
of them, at any image size (the padded image and FFT spectra, about the size of the image, come on
top; see the README). Half inputs run in float32 (float64 stays float64); outputs have the input dtype.

Double backward is not supported: the backward functions are ``once_differentiable`` (a second
derivative raises PyTorch's clear error); use ``psfops.backend("reference")`` for it.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .env import accumulation_dtype
from .padding import pad as _pad, pad_adjoint as _pad_adjoint

__all__ = ["psf_conv", "psf_conv_transpose", "apply_psf", "synthesize_psf", "choose", "ALGORITHMS",
           "forced", "work_budget"]

ALGORITHMS = ("stack", "taps", "fft")
MIN_WORK_BYTES = 1 << 18  # a call may always use this much scratch (tiny calls need no loops)
STRIP_BYTES = 1 << 20     # output rows per tap-loop strip: B*C*rows*W elements of about this size
MAX_TAP_CALLS = 20000     # strips are merged so that taps * strips stays under this (call overhead)

# Cost model constants: nanoseconds per unit of work on one core of a current x86 CPU (AVX-512,
# measured once on the development machine; only their ratios matter).
COST = dict(
    conv=0.045,    # one multiply-add inside oneDNN's 1-input-channel direct convolution
    mm=0.01,      # one multiply-add inside a matrix product (synthesis, dw, dbasis)
    tap=0.35,      # one element of an elementwise tap pass (addcmul over a shifted view)
    mix=0.5,       # one element of the weight mix (addcmul over a stack plane)
    fft=0.25,      # one element * log2(size) of an rfft2/irfft2
    call=8000.0,   # per Python-level op call
)

# The tap loops issue thousands of small ops (k*k per strip). Run with torch's OpenMP team, each op
# waits at a barrier for every thread, and as soon as another process holds a core (a shared
# machine) that costs up to a scheduler slice per op: measured 5-20x slower on a loaded 2-core
# machine than one thread. So they run with ONE intra-op thread; TAP_WORKERS > 1 splits the rows
# over that many Python worker threads (one intra-op thread each), which pays on an idle machine
# but lost to one thread under load here (the GIL hand-offs); it is kept, tested, off by default.
TAP_WORKERS = 1
# The same stall hits the conv-stack and FFT ops (fewer, larger ops: measured 5-20x on this shared
# 2-core machine under load 5 for 2 threads vs 1), so by default the whole CPU path runs with this
# many intra-op threads; None: torch's setting (faster on an idle multi-core machine for stack/fft).
INTRAOP_THREADS: int | None = 1

_forced: list[str] = []


@contextlib.contextmanager
def forced(name: str):
    """Inside the block every call runs algorithm ``name`` (tests; apply_psf always runs taps)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _fft_len(n: int) -> int:
    """The smallest 2,3,5-smooth length >= n (fast for pocketfft)."""
    m = max(1, n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def choose(task: str, B: int, C: int, H: int, W: int, J: int, k: int, dilation: int = 1,
           algorithm: str | None = None) -> str:
    """Which algorithm runs ``task`` ("forward": psf_conv's output or the transpose's d(y);
    "adjoint": the transpose's output or psf_conv's d(x); "wgrad": d(weights) and/or d(basis)).

    Estimated time of each, from the work counts below times :data:`COST` (no timing at run time);
    ``algorithm`` (or an enclosing :func:`forced`) overrides. With n = B*H*W and T = k*k:

    - stack: conv J*C*T*n (+ J*C*n mix); for wgrad it answers "taps" (that is what it runs).
    - taps: synthesis J*T*n (matrix product) + C*T*n tap passes + a call per tap per strip;
      wgrad: C*T*n tap passes + 2*J*T*n matrix products.
    - fft: transforms of size N = (H+2P')(W+2P') (P' = dilation*(k//2), 5-smooth):
      forward (C + J*C) planes, adjoint (J*C + C), wgrad (C + 2*J*C), plus the mixing passes.

    The tap loops run single-threaded (see :data:`TAP_WORKERS`), the convolutions and transforms
    with torch's threads: COST's tap and mm constants are single-thread figures.
    """
    if algorithm is None and _forced:
        algorithm = _forced[-1]
    if algorithm is not None:
        return "taps" if task == "wgrad" and algorithm == "stack" else algorithm
    n, T = B * H * W, k * k
    P = dilation * (k // 2)
    Nh, Nw = _fft_len(H + 2 * P), _fft_len(W + 2 * P)
    N = B * Nh * Nw
    logn = math.log2(max(2, Nh * Nw))
    strips = _n_strips(B * C * H * W * 4, H, T)
    tap_calls = T * strips
    c = COST
    wgrad_taps = c["tap"] * C * T * n + c["mm"] * 2 * J * T * n + c["call"] * tap_calls * 2
    if task == "forward":
        costs = {"stack": c["conv"] * J * C * T * n + c["mix"] * J * C * n + c["call"] * 2 * J,
                 "taps": c["mm"] * J * T * n + c["tap"] * C * T * n + c["call"] * tap_calls,
                 "fft": c["fft"] * N * logn * (C + J * C) + c["mix"] * J * C * n * 3 + c["call"] * 4 * J}
    elif task == "adjoint":
        costs = {"stack": c["conv"] * J * C * T * n + c["mix"] * J * C * n + c["call"] * 2 * J,
                 "taps": c["mm"] * J * T * n + c["tap"] * C * T * n + c["call"] * tap_calls,
                 "fft": c["fft"] * N * logn * (C + J * C) + c["mix"] * J * C * (n + 2 * N) + c["call"] * 4 * J}
    else:
        costs = {"taps": wgrad_taps,  # (stack has no wgrad of its own: it uses the tap gradients)
                 "fft": c["fft"] * N * logn * (C + 2 * J * C) + c["mix"] * J * C * (n + 4 * N) + c["call"] * 6 * J}
    return min(costs, key=costs.get)


def _n_strips(strip_bytes_total: int, H: int, taps: int) -> int:
    s = max(1, min(H, -(-strip_bytes_total // STRIP_BYTES)))
    return max(1, min(s, MAX_TAP_CALLS // max(1, taps)))


def work_budget(*tensors: torch.Tensor) -> int:
    """Scratch bytes a call may allocate: the bytes of its inputs and outputs (``tensors``, in the
    accumulation dtype), at least :data:`MIN_WORK_BYTES`."""
    total = sum(t.numel() * torch.empty((), dtype=accumulation_dtype(t.dtype)).element_size() for t in tensors)
    return max(MIN_WORK_BYTES, total)


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(accumulation_dtype(t.dtype)).contiguous()


# ---- the pieces, all in the accumulation dtype, contiguous inputs ------------------------------
# basis is (J,k,k) (shared) or (B,J,k,k) (per sample) throughout.

def _strips(B, C, H, W, T, es, r0=0, r1=None):
    """Row strips of [r0, r1) sized for the cache (see :data:`STRIP_BYTES`)."""
    r1 = H if r1 is None else r1
    s = _n_strips(B * C * (r1 - r0) * W * es, r1 - r0, T)
    rows = -(-(r1 - r0) // s)
    return [(r, min(r1, r + rows)) for r in range(r0, r1, rows)]


_POOL: list = []


def _pool():
    """Worker threads for TAP_WORKERS > 1, each running torch ops with one intra-op thread."""
    if not _POOL:
        import concurrent.futures as cf
        _POOL.append(cf.ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="psfops-cpu",
                                           initializer=lambda: torch.set_num_threads(1)))
    return _POOL[0]


@contextlib.contextmanager
def _threads(n: int | None):
    """torch ops in this block use ``n`` intra-op threads (None: unchanged; restored after)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _one_thread():
    return _threads(1)


def _path_threads(fn):
    """Run an autograd Function's forward/backward under :data:`INTRAOP_THREADS`."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args):
        with _threads(INTRAOP_THREADS):
            return fn(*args)
    return wrapped


def _row_groups(H: int):
    """Contiguous row ranges, one per tap-loop worker (:data:`TAP_WORKERS`)."""
    n = max(1, min(TAP_WORKERS, H))
    rows = -(-H // n)
    return [(r, min(H, r + rows)) for r in range(0, H, rows)]


def _run_groups(fn, H):
    """``[fn(r0, r1) for each row group]``, in parallel when there are several."""
    groups = _row_groups(H)
    if len(groups) == 1:
        with _one_thread():
            return [fn(*g) for g in groups]
    inference = torch.is_inference_mode_enabled()  # (grad modes are per thread: carry the caller's)

    def run(g):
        with torch.inference_mode(inference), torch.no_grad():
            return fn(*g)
    return list(_pool().map(run, groups))


def _tap_chunk(B, rows, W, T, budget, es):
    return max(1, min(T, budget // max(1, 2 * B * rows * W * es * TAP_WORKERS)))


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
            ob += r.view(bb, C, Ho, Wo)
    return out


def _spectra(basis, k, d, Nh, Nw):
    """rfft2 of the dilated kernels placed at the origin: (...,J,Nh,Nw//2+1)."""
    L = (k - 1) * d + 1
    kd = basis.new_zeros((*basis.shape[:-2], L, L))
    kd[..., ::d, ::d] = basis
    return torch.fft.rfft2(kd, s=(Nh, Nw))


def _fft_jchunk(B, C, Nh, Nw, J, budget, es):
    return max(1, min(J, budget // max(1, 8 * B * C * Nh * Nw * es)))  # ~8 planes live per j


def _fft_forward(xpad, w, basis, B, C, H, W, J, k, d, budget, transposed_out=None):
    Nh, Nw = _fft_len(xpad.shape[-2]), _fft_len(xpad.shape[-1])
    X = torch.fft.rfft2(xpad, s=(Nh, Nw))  # (B,C,Nh,F)
    Kh = _spectra(basis, k, d, Nh, Nw).conj()
    Kh = Kh.unsqueeze(1) if basis.dim() == 4 else Kh.unsqueeze(0).unsqueeze(0)  # (B|1,1,J,Nh,F)
    y = xpad.new_zeros((B, C, H, W))
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, xpad.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        st = torch.fft.irfft2(X.unsqueeze(2) * Kh[:, :, j0:j1], s=(Nh, Nw))[..., :H, :W]
        for j in range(j0, j1):
            y.addcmul_(st[:, :, j - j0], w[:, j:j + 1])
    return y


def _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P):
    Hp, Wp = H + 2 * P, W + 2 * P
    Nh, Nw = _fft_len(Hp), _fft_len(Wp)
    Kh = _spectra(basis, k, d, Nh, Nw)
    Kh = Kh.unsqueeze(1) if basis.dim() == 4 else Kh.unsqueeze(0).unsqueeze(0)
    acc = None
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, y.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        Z = torch.fft.rfft2(y.unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))  # (B,C,jc,Nh,F)
        part = (Z * Kh[:, :, j0:j1]).sum(2)
        acc = part if acc is None else acc.add_(part)
    return torch.fft.irfft2(acc, s=(Nh, Nw))[..., :Hp, :Wp]


def _fft_wgrad(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b):
    Nh, Nw = _fft_len(xpad.shape[-2]), _fft_len(xpad.shape[-1])
    P = d * (k // 2)
    X = torch.fft.rfft2(xpad, s=(Nh, Nw))
    Kh = _spectra(basis, k, d, Nh, Nw).conj()
    Kh = Kh.unsqueeze(1) if basis.dim() == 4 else Kh.unsqueeze(0).unsqueeze(0)
    dw = torch.zeros_like(w) if need_w else None
    dbasis = torch.zeros_like(basis) if need_b else None
    jc = _fft_jchunk(B, C, Nh, Nw, J, budget, xpad.element_size())
    for j0 in range(0, J, jc):
        j1 = min(J, j0 + jc)
        if need_w:
            st = torch.fft.irfft2(X.unsqueeze(2) * Kh[:, :, j0:j1], s=(Nh, Nw))[..., :H, :W]
            dw[:, j0:j1] = (st * dy.unsqueeze(2)).sum(1)
        if need_b:
            Z = torch.fft.rfft2(dy.unsqueeze(2) * w[:, j0:j1].unsqueeze(1), s=(Nh, Nw))
            S = (X.unsqueeze(2) * Z.conj()).sum(1)  # (B,jc,Nh,F)
            if basis.dim() == 3:
                S = S.sum(0)
            corr = torch.fft.irfft2(S, s=(Nh, Nw))[..., :2 * P + 1:d, :2 * P + 1:d]
            dbasis[..., j0:j1, :, :] = corr
    return dw, dbasis


def _taps_wgrad(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b):
    T = k * k
    per = basis.dim() == 4
    bflat = basis.reshape(*basis.shape[:-2], T)
    dw = torch.zeros_like(w) if need_w else None
    parts = {}  # row group -> its partial d(basis) (groups run in parallel)
    wf = w.view(B, J, H * W)

    def consume(g0, r0, r1, t0, t1, dK):
        if need_w:
            dw[:, :, r0:r1] += torch.matmul(bflat[..., t0:t1], dK).view(B, J, r1 - r0, W)
        if need_b:
            if g0 not in parts:
                parts[g0] = torch.zeros((B, J, T) if per else (J, T), dtype=w.dtype)
            g = torch.matmul(wf[:, :, r0 * W:r1 * W], dK.transpose(1, 2))  # (B,J,tc)
            parts[g0][..., t0:t1] += g if per else g.sum(0)

    _tap_grads(xpad, dy, B, C, H, W, k, d, T, budget, consume)
    db = sum(parts.values()).view(basis.shape) if need_b else None
    return dw, db


# ---- the four computations behind the ops -------------------------------------------------------

def _forward(x, w, basis, d, padding, algo, budget):
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    xpad = _pad(x, P, P, padding)
    if algo == "stack":
        return _stack_forward(xpad, w, basis, B, C, H, W, J, k, d, budget)
    if algo == "fft":
        return _fft_forward(xpad, w, basis, B, C, H, W, J, k, d, budget)
    T = k * k
    bflat = basis.reshape(*basis.shape[:-2], T)
    wf = w.view(B, J, H * W)
    return _taps_forward(xpad, lambda r0, r1, t0, t1: _synth(wf[:, :, r0 * W:r1 * W], bflat, t0, t1),
                         B, C, H, W, k, d, T, budget)


def _adjoint(y, w, basis, d, padding, algo, budget):
    B, C, H, W = y.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    if algo == "stack":
        out = _stack_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P, padding == "zeros")
        return out if padding == "zeros" else _pad_adjoint(out, P, P, padding)
    if algo == "fft":
        ext = _fft_adjoint(y, w, basis, B, C, H, W, J, k, d, budget, P)
    else:
        T = k * k
        bflat = basis.reshape(*basis.shape[:-2], T)
        wf = w.view(B, J, H * W)
        ext = _taps_scatter(y, lambda r0, r1, t0, t1: _synth(wf[:, :, r0 * W:r1 * W], bflat, t0, t1),
                            B, C, H, W, k, d, T, budget, P)
    return _pad_adjoint(ext, P, P, padding)


def _wgrad(x, dy, w, basis, d, padding, algo, budget, need_w, need_b):
    B, C, H, W = x.shape
    J, k = w.shape[1], basis.shape[-1]
    P = d * (k // 2)
    xpad = _pad(x, P, P, padding)
    fn = _fft_wgrad if algo == "fft" else _taps_wgrad
    return fn(xpad, dy, w, basis, B, C, H, W, J, k, d, budget, need_w, need_b)


def _shape(x, w, basis):
    B, C, H, W = x.shape
    return B, C, H, W, w.shape[1], basis.shape[-1]


def _empty(*ts):
    return any(t.numel() == 0 for t in ts)


def _out(t, dtype):
    return None if t is None else t.to(dtype)


class _PsfConv(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, x, weights, basis, dilation, padding, algorithm):
        ctx.save_for_backward(x, weights, basis)
        ctx.opts = (dilation, padding, algorithm)
        if _empty(x, weights):
            return torch.zeros_like(x, memory_format=torch.contiguous_format)
        xa, wa, ba = _acc(x), _acc(weights), _acc(basis)
        algo = choose("forward", *_shape(x, weights, basis), dilation, algorithm)
        y = _forward(xa, wa, ba, dilation, padding, algo, work_budget(x, weights, x))
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    @_path_threads
    def backward(ctx, g):
        x, weights, basis = ctx.saved_tensors
        d, padding, algorithm = ctx.opts
        nx, nw, nb = ctx.needs_input_grad[:3]
        if _empty(x, weights):
            return (torch.zeros_like(x) if nx else None, torch.zeros_like(weights) if nw else None,
                    torch.zeros_like(basis) if nb else None, None, None, None)
        xa, wa, ba, ga = _acc(x), _acc(weights), _acc(basis), _acc(g)
        shape = _shape(x, weights, basis)
        budget = work_budget(x, weights, g, *([x] if nx else []), *([weights] if nw else []))
        dx = dw = db = None
        if nx:
            dx = _adjoint(ga, wa, ba, d, padding, choose("adjoint", *shape, d, algorithm), budget).to(x.dtype)
        if nw or nb:
            dw, db = _wgrad(xa, ga, wa, ba, d, padding, choose("wgrad", *shape, d, algorithm), budget, nw, nb)
        return dx, _out(dw, weights.dtype), _out(db, basis.dtype), None, None, None


class _PsfConvTranspose(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, y, weights, basis, dilation, padding, algorithm):
        ctx.save_for_backward(y, weights, basis)
        ctx.opts = (dilation, padding, algorithm)
        if _empty(y, weights):
            return torch.zeros_like(y, memory_format=torch.contiguous_format)
        algo = choose("adjoint", *_shape(y, weights, basis), dilation, algorithm)
        out = _adjoint(_acc(y), _acc(weights), _acc(basis), dilation, padding, algo, work_budget(y, weights, y))
        return out.to(y.dtype)

    @staticmethod
    @once_differentiable
    @_path_threads
    def backward(ctx, g):
        y, weights, basis = ctx.saved_tensors
        d, padding, algorithm = ctx.opts
        ny, nw, nb = ctx.needs_input_grad[:3]
        if _empty(y, weights):
            return (torch.zeros_like(y) if ny else None, torch.zeros_like(weights) if nw else None,
                    torch.zeros_like(basis) if nb else None, None, None, None)
        ya, wa, ba, ga = _acc(y), _acc(weights), _acc(basis), _acc(g)
        shape = _shape(y, weights, basis)
        budget = work_budget(y, weights, g, *([y] if ny else []), *([weights] if nw else []))
        dy = dw = db = None
        if ny:
            dy = _forward(ga, wa, ba, d, padding, choose("forward", *shape, d, algorithm), budget).to(y.dtype)
        if nw or nb:  # <T(y), g> = sum_j <w_j y, k_j * pad(g)>: psf_conv's wgrad with x <- g, dy <- y
            dw, db = _wgrad(ga, ya, wa, ba, d, padding, choose("wgrad", *shape, d, algorithm), budget, nw, nb)
        return dy, _out(dw, weights.dtype), _out(db, basis.dtype), None, None, None


class _ApplyPsf(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, x, psf, dilation, padding):
        ctx.save_for_backward(x, psf)
        ctx.opts = (dilation, padding)
        if _empty(x, psf):
            return torch.zeros_like(x, memory_format=torch.contiguous_format)
        B, C, H, W = x.shape
        T = psf.shape[1]
        k = math.isqrt(T)
        P = dilation * (k // 2)
        pf = _acc(psf).view(B, T, H * W)
        y = _taps_forward(_pad(_acc(x), P, P, padding),
                          lambda r0, r1, t0, t1: pf[:, t0:t1, r0 * W:r1 * W],
                          B, C, H, W, k, dilation, T, work_budget(x, psf, x))
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    @_path_threads
    def backward(ctx, g):
        x, psf = ctx.saved_tensors
        d, padding = ctx.opts
        nx, npsf = ctx.needs_input_grad[:2]
        if _empty(x, psf):
            return torch.zeros_like(x) if nx else None, torch.zeros_like(psf) if npsf else None, None, None
        B, C, H, W = x.shape
        T = psf.shape[1]
        k = math.isqrt(T)
        P = d * (k // 2)
        ga = _acc(g)
        budget = work_budget(x, psf, g, *([x] if nx else []), *([psf] if npsf else []))
        dx = dpsf = None
        if nx:
            pf = _acc(psf).view(B, T, H * W)
            ext = _taps_scatter(ga, lambda r0, r1, t0, t1: pf[:, t0:t1, r0 * W:r1 * W],
                                B, C, H, W, k, d, T, budget, P)
            dx = _pad_adjoint(ext, P, P, padding).to(x.dtype)
        if npsf:
            dp = torch.empty((B, T, H, W), dtype=ga.dtype)

            def consume(g0, r0, r1, t0, t1, dK):
                dp[:, t0:t1, r0:r1] = dK.view(B, t1 - t0, r1 - r0, W)

            _tap_grads(_pad(_acc(x), P, P, padding), ga, B, C, H, W, k, d, T, budget, consume)
            dpsf = dp.to(psf.dtype)
        return dx, dpsf, None, None


class _SynthesizePsf(torch.autograd.Function):
    @staticmethod
    @_path_threads
    def forward(ctx, weights, basis):
        ctx.save_for_backward(weights, basis)
        B, J, H, W = weights.shape
        k = basis.shape[-1]
        bflat = _acc(basis).reshape(*basis.shape[:-2], k * k)
        out = _synth(_acc(weights).view(B, J, H * W), bflat, 0, k * k)
        return out.view(B, k * k, H, W).to(weights.dtype)

    @staticmethod
    @once_differentiable
    @_path_threads
    def backward(ctx, g):
        weights, basis = ctx.saved_tensors
        nw, nb = ctx.needs_input_grad[:2]
        B, J, H, W = weights.shape
        k = basis.shape[-1]
        ga = _acc(g).view(B, k * k, H * W)
        bflat = _acc(basis).reshape(*basis.shape[:-2], k * k)
        dw = db = None
        if nw:
            dw = torch.matmul(bflat, ga).view(B, J, H, W).to(weights.dtype)
        if nb:
            gb = torch.matmul(_acc(weights).view(B, J, H * W), ga.transpose(1, 2))  # (B,J,T)
            db = (gb if basis.dim() == 4 else gb.sum(0)).view(basis.shape).to(basis.dtype)
        return dw, db


# ---- public (unchecked) entry points ------------------------------------------------------------

def psf_conv(x, weights, basis, dilation: int = 1, padding: str = "zeros", algorithm: str | None = None):
    """``y = sum_j w_j * (basis_j correlated with pad(x))``; see :mod:`psfops.reference`.
    ``algorithm`` forces one of :data:`ALGORITHMS` (default: :func:`choose`)."""
    return _PsfConv.apply(x, weights, basis, int(dilation), padding, algorithm)


def psf_conv_transpose(y, weights, basis, dilation: int = 1, padding: str = "zeros", algorithm: str | None = None):
    """The exact adjoint of :func:`psf_conv` in ``x`` (scatter, then the padding's adjoint)."""
    return _PsfConvTranspose.apply(y, weights, basis, int(dilation), padding, algorithm)


def apply_psf(x, psf, dilation: int = 1, padding: str = "zeros"):
    """Explicit per-pixel kernels (B,k*k,H,W) applied by the tap loop."""
    return _ApplyPsf.apply(x, psf, int(dilation), padding)


def synthesize_psf(weights, basis):
    """(B,J,H,W), (J,k,k)|(B,J,k,k) -> (B,k*k,H,W) by one matrix product."""
    return _SynthesizePsf.apply(weights, basis)
