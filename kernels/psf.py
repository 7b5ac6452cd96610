"""Fused kernels for spatially varying PSF filtering: psf_conv, psf_conv_transpose, apply_psf,
synthesize_psf.

A per-pixel tap weight ``K_t(p)`` (t = u*k + v, shift s_t = ((u - k//2) d, (v - k//2) d)) comes
either from an explicit psf tensor (``apply_psf``, SYNTH=False) or from the kernel dictionary
(``psf_conv``, SYNTH=True): ``K[p, :] = weights[:, p] @ basis``, synthesized per tile as one matrix
product ``(pixels x J) @ (J x k*k)`` (tensor cores) and never written to device memory whole.

    forward    y[c, p]   = sum_t K_t(p) x[c, p + s_t]                            _psf_fwd_kernel
    d(x)       dx[c, q]  = sum_t K_t(q - s_t) dy[c, q - s_t]   (gather form)     _psf_dx_kernel
    d(taps)    dK_t(p)   = sum_c dy[c, p] x[c, p + s_t]                          _psf_dk_kernel
               apply_psf: d(psf) = dK.  psf_conv: dK (a (B, k*k, H, W) float32 buffer, the psf's
               size) through the synthesize backward, d(weights)[:, p] = basis @ dK[p, :] and
               d(basis) = sum_p weights[:, p] (x) dK[p, :], matrix products per tile.
    synthesize_psf forward / backward: the synthesis and that backward.

Three launchers serve every psf op and its gradients: :func:`filter_forward` (the gather form,
``_psf_fwd_kernel``), :func:`filter_scatter` (its adjoint, the d(x) kernel) and
:func:`tap_grads` (``_psf_dk_kernel``, then ``_synthesize_bwd_kernel`` for psf_conv).
psf_conv_transpose's forward is the scatter; its gradients are the gather (for its input) and the
tap gradients with the roles of x and dy swapped. A padding mode other than zeros is applied where the gather kernels stage their input
(the indices remapped, ``_source``); the scatter folds what it spreads outside the image back
onto the pixels the padding copies there, in a second kernel over the border tiles
(``_psf_fold_kernel``).

Work layout. Every kernel runs a persistent grid (:data:`PROGRAMS_PER_SM` programs per SM; a fixed
tile order: program ``pid`` takes tiles pid, pid + programs, ...). A tile is TH x TW pixels of one
image (TW contiguous columns; :data:`GPU_SHAPES`) and all its channels, BLOCK_C at a time (on the GPU
a power of two chosen from C, :func:`channel_block`: C=40 takes 16-channel blocks, not 64).

- Quads: a thread holds aligned runs of 4 contiguous pixels (``_quad_split``), so one 16-byte
  vector load brings a quad's values and a tap row of width k is read as a few aligned windows
  reused across its k horizontal taps (registers, not reloads). Outputs are stored as whole quads
  (the four accumulators joined back into the pixel axis): one 16-byte (float32) or 8-byte (half)
  store per quad where W % 4 == 0 (``QUAD``: the kernels then tell the compiler the rows are
  4-aligned); other widths store pixel by pixel (their rows are not aligned in memory).
- Staging: per channel block, the input planes the tap loop reads (x in the forward and d(taps),
  dy in d(x)) are copied with their halo into a per-program scratch area, zeros outside the image
  (``_stage_halo``: RD = (k//2)*dilation rows above and below, WPAD = RD rounded up to a
  multiple of 4 columns left and right, HALO_W = TW + 2*WPAD). The tap loops then read it at
  constant, aligned offsets with no masks; a CTA barrier separates writes from reads. d(taps)
  stages half inputs in float32 (converted once, not in every window that reads them: its
  bfloat16 estimate at the headline drops from the instruction-throughput roof, 41 us, to L2's 37).
- Taps: the tile's per-pixel taps (synthesized, or the psf tensor's) are written once per tile to
  scratch and read back per channel block. d(x) synthesizes the taps of its tile and halo (in
  halo coordinates: the pixels its outputs read from), so it needs no taps from other programs.
- d(taps) sums over channels inside each thread, each channel a separate tensor over the thread's
  quads, so the channel sum is plain adds in the thread whatever layouts the compiler picks (no
  shuffles, no shared memory, no barriers). Up to k = UNROLLED_K the tap rows are split over groups
  of threads (``dk_row_groups``, at most two rows a thread) and each thread's sums stay in registers
  over all C channels: d(psf) is written once per tile, and each channel's dy quad is loaded once.
  Above, a block of channels is unrolled per tap-row group and added into the d(psf) planes.
  psf_conv's d(weights)/d(basis) products then run in the synthesize backward, in EPILOGUE-pixel
  matrix products, a tile's d(basis) block summed in registers over its chunks (fused into the
  16-warp d(taps), they spilled 600 bytes at its 128 registers a thread on sm_90).
- The basis is zero-padded to (NUM_JB*BLOCK_J, KK_PAD) so its blocks load without masks (one
  such matrix per sample for a per-sample (B,J,k,k) basis). d(basis) is summed per program, over
  its tiles in a fixed order, into a (programs, NB, NUM_JB*BLOCK_J, KK_PAD) buffer (NB = 1, or B
  per sample) that a fixed-order ``torch.sum`` reduces: deterministic for a given number of
  programs (the SM count: bitwise-equal runs on one GPU model), no atomics, about 4 MB per basis
  sample on an H100 at any image size.
- Large kernels: the synthesis and epilogue products take the taps in blocks of TAP_BLOCK (KB; one
  block up to k = 7), so their tiles do not grow with k; the tap loops unroll all k x k taps up to
  k = UNROLLED_K and above it only a row's k taps, in a loop over the rows (``ROW_LOOP``), so
  registers and compile time grow with k, not k*k (sm_90, k = 31: see docs/kernels.md).

Scratch is per program, so its size depends on the tile shape and C but not on the image size:
on an H100 at C=64, k=7, about 15 MB for the forward, 20 MB (float32) for d(x) and 15 MB for
d(taps)' staging; psf_conv's backward also holds the (B, k*k, H, W) float32 dK.

Precision: float32 inputs multiply in float32 (the matrix products as three tf32 tensor-core
passes, ``tf32x3``, accurate to float32 rounding); half inputs run the synthesis on their own
dtype on tensor cores (exact products, float32 accumulation) and psf_conv's d(weights)/d(basis)
products, an input (exact in tf32) times the float32 dK, in two tf32 passes (``tf32x2``: dK split,
as accurate as tf32x3); float64 uses plain multiply-adds. Under the interpreter every
product is an exact float32 (float64) ``tl.dot``. Channel planes are addressed in int64; in-plane
pixel indices in int32, so a plane may hold up to 2**31 - 1 pixels.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, dot_mode, gradient_buffers, matmul_add, torch_acc_dtype
from .launch import gpu_plans, launcher, sm_count


# --------------------------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _everywhere(flag, idx):
    """``flag != 0`` broadcast to the shape of the int tensor ``idx``, as a mask (the interpreter
    cannot combine a scalar bool with a tensor mask)."""
    return (idx * 0 + flag) != 0


@triton.jit
def _tile_origin(tile, tiles_w, tiles_per_img, TH: tl.constexpr, TW: tl.constexpr):
    """Image (int64), first row and first column of persistent-grid tile ``tile``."""
    t_in = tile % tiles_per_img
    return (tile // tiles_per_img).to(tl.int64), (t_in // tiles_w) * TH, (t_in % tiles_w) * TW


@triton.jit
def _tile_pixels(h0, w0, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """The tile's TH*TW pixels, row-major: rows h, columns w, in-image mask, in-plane index."""
    i = tl.arange(0, TH * TW)
    h = h0 + i // TW
    w = w0 + i % TW
    return h, w, (h < H) & (w < W), h * W + w


@triton.jit
def _channel_rows(b, C, c0, HW, BLOCK_C: tl.constexpr):
    """int64 offsets of channel planes c0 .. c0+BLOCK_C-1 of image b, clamped to the last channel
    (so loads need no channel mask), and the mask of the real channels (for stores and sums)."""
    cc = c0 + tl.arange(0, BLOCK_C)
    return (b * C + tl.minimum(cc, C - 1)) * HW, cc < C


@triton.jit
def _plane(b, C, c, HW):
    """int64 offset of channel plane c of image b, clamped to the last channel (loads need no
    channel mask; the caller masks what channels past C contribute)."""
    return (b * C + tl.minimum(c, C - 1)) * HW


@triton.jit
def _basis_block(basis_ptr, jb, t0, KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr, KB: tl.constexpr):
    """Block (jb, t0) of the zero-padded (NUM_JB*BLOCK_J, KK_PAD) basis: a (BLOCK_J, KB) tile of
    taps t0 .. t0+KB-1, no masks (the launcher pads it)."""
    return tl.load(basis_ptr + jb * BLOCK_J * KK_PAD + tl.arange(0, BLOCK_J)[:, None] * KK_PAD
                   + t0 + tl.arange(0, KB)[None, :])


@triton.jit
def _weights_block(w_ptr, jb, b, J, HW, pix, ok, BLOCK_J: tl.constexpr):
    """weights[b, jb*BLOCK_J + j, pix[p]] as a (len(pix), BLOCK_J) tile (zero where not ``ok``)."""
    jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    return tl.load(w_ptr + ((b * J + jj) * HW)[None, :] + pix[:, None], mask=ok[:, None] & (jj < J)[None, :],
                   other=0.0)


@triton.jit
def _mix_basis(w_ptr, basis_ptr, b, J, HW, pix, ok, t0, KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr,
               NUM_JB: tl.constexpr, KB: tl.constexpr, DOT: tl.constexpr):
    """Synthesized taps t0 .. t0+KB-1, ``K[p, t] = sum_j weights[b, j, pix[p]] basis[j, t]``, as a
    (len(pix), KB) tile (zero where ``ok`` is False and, the basis being zero-padded, for t >= k*k).
    The J blocks are a loop, not unrolled, accumulated inside the products: registers do not grow
    with J."""
    k = tl.zeros((pix.shape[0], KB), tl.float64 if DOT == "fma" else tl.float32)
    for jb in range(NUM_JB):
        k = matmul_add(k, _weights_block(w_ptr, jb, b, J, HW, pix, ok, BLOCK_J),
                       _basis_block(basis_ptr, jb, t0, KK_PAD, BLOCK_J, KB), DOT)
    return k


@triton.jit
def _window_taps(taps, STRIDE: tl.constexpr, src_ptr, basis_ptr, b, J, H, W, HW, r0, c0, ROW_W: tl.constexpr,
                 NPIX: tl.constexpr, CHUNK: tl.constexpr, SYNTH: tl.constexpr, KK: tl.constexpr,
                 KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, KB: tl.constexpr,
                 DOT: tl.constexpr, ROW_LOOP: tl.constexpr):
    """The taps of the NPIX pixels of a ROW_W-wide window of the image (top-left at (r0, c0),
    row-major) into ``taps[t * STRIDE + index]``, zero outside the image: synthesized (SYNTH) or
    copied from the psf ``src_ptr``, CHUNK pixels and KB taps per product. The chunks are a loop
    (a large k's halo takes many; a synthesizing chunk's product tiles stay out of the tap loops'
    registers: unrolled, sm_90 float32 d(x) spills 8 bytes under triton 3.6), except copied taps at
    small k, unrolled (looped, sm_90 bfloat16 apply_psf d(x) spills 16 bytes under triton 3.6)."""
    if ROW_LOOP or SYNTH:
        for pix0 in range(0, NPIX, CHUNK):
            _window_chunk(taps, STRIDE, src_ptr, basis_ptr, b, J, H, W, HW, r0, c0, pix0, ROW_W, NPIX, CHUNK,
                          SYNTH, KK, KK_PAD, BLOCK_J, NUM_JB, KB, DOT)
    else:
        for chunk in tl.static_range((NPIX + CHUNK - 1) // CHUNK):
            _window_chunk(taps, STRIDE, src_ptr, basis_ptr, b, J, H, W, HW, r0, c0, chunk * CHUNK, ROW_W, NPIX,
                          CHUNK, SYNTH, KK, KK_PAD, BLOCK_J, NUM_JB, KB, DOT)


@triton.jit
def _window_chunk(taps, STRIDE: tl.constexpr, src_ptr, basis_ptr, b, J, H, W, HW, r0, c0, pix0,
                  ROW_W: tl.constexpr, NPIX: tl.constexpr, CHUNK: tl.constexpr, SYNTH: tl.constexpr,
                  KK: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                  KB: tl.constexpr, DOT: tl.constexpr):
    """Pixels pix0 .. pix0+CHUNK-1 of :func:`_window_taps`' window."""
    idx = pix0 + tl.arange(0, CHUNK)
    hh = r0 + idx // ROW_W
    ww = c0 + idx % ROW_W
    ok = (idx < NPIX) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    for t0 in range(0, KK_PAD, KB):  # one block up to k = 7 (KB = KK_PAD: no loop)
        if SYNTH:
            k = _mix_basis(src_ptr, basis_ptr, b, J, HW, hh * W + ww, ok, t0, KK_PAD, BLOCK_J, NUM_JB, KB, DOT)
        else:
            k = _load_taps(src_ptr + b * KK * HW, hh * W + ww, HW, ok, t0, KK, KB)
        _store_taps(taps, k, idx, STRIDE, idx < STRIDE, t0, KK)


@triton.jit
def _store_taps(ptr, k, idx, STRIDE, valid, t0, KK: tl.constexpr):
    """Tap-major store of a (len(idx), KB) tile of taps t0 .. t0+KB-1: ``ptr[t * STRIDE + idx[p]] =
    k[p, t - t0]`` for t < KK where ``valid``."""
    tt = t0 + tl.arange(0, k.shape[1])
    tl.store(ptr + tt[None, :].to(tl.int64) * STRIDE + idx[:, None], k.to(ptr.dtype.element_ty),
             mask=valid[:, None] & (tt < KK)[None, :])


@triton.jit
def _load_taps(ptr, idx, STRIDE, valid, t0, KK: tl.constexpr, KB: tl.constexpr):
    """The (len(idx), KB) tile of taps t0 .. t0+KB-1, ``ptr[t * STRIDE + idx[p]]`` (zeros for t >= KK
    and where ``valid`` is False)."""
    tt = t0 + tl.arange(0, KB)
    return tl.load(ptr + tt[None, :].to(tl.int64) * STRIDE + idx[:, None], mask=valid[:, None] & (tt < KK)[None, :],
                   other=0.0)


@triton.jit
def _source(e, n, PADDING: tl.constexpr):
    """The source index of extended index ``e`` on an axis of length ``n`` (``psfops.padding``'s
    maps): replicate clamps, circular wraps, reflect mirrors without repeating the edge (period
    2(n-1)); zeros keeps ``e`` (the caller masks what falls outside)."""
    if PADDING == "replicate":
        return tl.minimum(tl.maximum(e, 0), n - 1)
    elif PADDING == "circular":
        return (e % n + n) % n
    elif PADDING == "reflect":
        period = tl.maximum(2 * (n - 1), 1)
        m = (e % period + period) % period
        return tl.where(m < n, m, period - m)
    else:
        return e


@triton.jit
def _stage_halo(src_ptr, rows, h0, w0, H, W, stage, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
                HALO: tl.constexpr, HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                PADDING: tl.constexpr):
    """Copy planes ``rows`` around the tile (rows h0-RD .., columns w0-WPAD .., HALO_W wide, HALO
    pixels) into the staging area ``stage[c, halo index]``, the image extended by PADDING (the
    indices remapped, or zeros): the tap loops then read it at constant, aligned offsets with no
    masks."""
    cl = tl.arange(0, BLOCK_C)
    for chunk0 in range(0, HALO_PAD, HALO_CHUNK):  # (a loop, not unrolled: keeps the index math out of registers)
        idx = chunk0 + tl.arange(0, HALO_CHUNK)
        hh = _source(h0 - RD + idx // HALO_W, H, PADDING)
        ww = _source(w0 - WPAD + idx % HALO_W, W, PADDING)
        ok = (idx < HALO) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        v = tl.load(src_ptr + rows[:, None] + (hh * W + ww)[None, :], mask=ok[None, :], other=0.0)
        tl.store(stage + cl[:, None] * HALO + idx[None, :], v, mask=(idx < HALO)[None, :])


@triton.jit
def _split4(v):
    """The four components of the last axis (size 4) of ``v``, each shaped ``v.shape[:-1]``."""
    a, b = tl.split(tl.reshape(v, v.shape[:-1] + (2, 2)))
    v0, v2 = tl.split(a)
    v1, v3 = tl.split(b)
    return v0, v1, v2, v3


@triton.jit
def _quad_split(v):
    """A tensor over the tile's pixels (last axis, P) as four tensors over its quads (P // 4): the
    values of pixels 4q, 4q+1, 4q+2, 4q+3. The pixel axis is laid out 4 contiguous pixels per
    thread (the loads are 16-byte vectors), so this is register renaming, not data movement."""
    return _split4(tl.reshape(v, v.shape[:-1] + (v.shape[-1] // 4, 4)))


@triton.jit
def _quad_join(v0, v1, v2, v3):
    """Inverse of :func:`_quad_split`: four tensors over the quads as one over the pixels."""
    joined = tl.join(tl.join(v0, v2), tl.join(v1, v3))
    return tl.reshape(joined, v0.shape[:-1] + (4 * v0.shape[-1],))


@triton.jit
def _quad_starts(i, TW: tl.constexpr, RD: tl.constexpr, HALO_W: tl.constexpr):
    """Each tile pixel's window start in the staged halo (row + RD, the pixel's column; the halo's
    left pad WPAD cancels the window's). Declared contiguous in runs of 4 only, so a load is one
    4-vector per quad in every dtype (bfloat16 would otherwise take 8-vectors and break the quads)."""
    return tl.max_contiguous((i // TW + RD) * HALO_W + i % TW, 4)


@triton.jit
def _window(ptr, NV: tl.constexpr, ACC: tl.constexpr):
    """NV aligned 4-vectors per quad at ``ptr``, ``ptr + 4``, ... (``ptr``: pointers over the
    tile's pixels, the quads' first pixels aligned), as a tuple of 4*NV tensors over the quads
    (the window's values, left to right) in the ACC dtype."""
    values = ()
    for m in tl.static_range(NV):
        values = values + _quad_split(tl.load(ptr + 4 * m).to(ACC))
    return values


@triton.jit
def _shifted_quad(ptr, SHIFT: tl.constexpr, ACC: tl.constexpr):
    """Per quad, the four values at ``ptr + SHIFT`` for its pixels (``ptr`` as in :func:`_window`),
    from the one or two aligned 4-vectors that hold them."""
    values = _window(ptr + SHIFT // 4 * 4, 1 + (SHIFT % 4 + 3) // 4, ACC)
    return values[SHIFT % 4], values[SHIFT % 4 + 1], values[SHIFT % 4 + 2], values[SHIFT % 4 + 3]


@triton.jit
def _add_taps(accs, taps, values, OFFSET: tl.constexpr, SIGN: tl.constexpr, KSIZE: tl.constexpr,
              DIL: tl.constexpr):
    """One tap row for the four pixels of each quad: ``accs[j] += taps[v][j] * values[OFFSET + j +
    SIGN * (v - k//2) * DIL]`` over the row's taps v (``taps[v]``: the tap's four per-pixel weights)."""
    for v in tl.static_range(KSIZE):
        for j in tl.static_range(4):
            accs = accs[:j] + (accs[j] + taps[v][j][None, :] * values[OFFSET + j + SIGN * (v - KSIZE // 2) * DIL],) \
                + accs[j + 1:]
    return accs


@triton.jit
def _tap_row_grads(dks, dyq, values, OFFSET: tl.constexpr, NT: tl.constexpr, DIL: tl.constexpr):
    """One channel's share of NT taps of one tap row of d(taps): ``dks[v][j] += dyq[j] *
    values[OFFSET + j + v * DIL]`` for the quads' pixels 4q + j (every operand a tensor over the
    quads: plain multiply-adds in the thread, no reduction over a tensor axis)."""
    out = ()
    for v in tl.static_range(NT):
        out = out + ((dks[v][0] + dyq[0] * values[OFFSET + v * DIL],
                      dks[v][1] + dyq[1] * values[OFFSET + 1 + v * DIL],
                      dks[v][2] + dyq[2] * values[OFFSET + 2 + v * DIL],
                      dks[v][3] + dyq[3] * values[OFFSET + 3 + v * DIL]),)
    return out


@triton.jit
def _store_quads(ptr, accs, rows, cvalid, pix, valid):
    """Store the four accumulators of the quads, ``ptr[rows[c] + pix[4q + j]] = accs[j][c, q]``,
    joined back into the pixel axis in the quad layout (a thread's 4 contiguous pixels), so each
    quad of each channel is one vector store (16 bytes in float32, 8 in half) wherever the image
    rows let the compiler prove 4-pixel alignment (``pix`` declared contiguous in runs of 4 only, as
    the loads: a wider run would take another layout, through shared memory)."""
    tl.store(ptr + rows[:, None] + tl.max_contiguous(pix, 4)[None, :],
             _quad_join(accs[0], accs[1], accs[2], accs[3]).to(ptr.dtype.element_ty),
             mask=cvalid[:, None] & valid[None, :])


@triton.jit
def _epilogue_pixels(epi0, h0, w0, H, W, TW: tl.constexpr, EPILOGUE: tl.constexpr):
    """Epilogue chunk ``epi0`` of a tile TW pixels wide (EPILOGUE pixels): their in-plane index and
    in-image mask."""
    idx = epi0 + tl.arange(0, EPILOGUE)
    hc = h0 + idx // TW
    wc = w0 + idx % TW
    return hc * W + wc, (hc < H) & (wc < W)


@triton.jit
def _tile_basis_grads(dpsf, w_ptr, basis_ptr, dw_ptr, part, b, h0, w0, H, W, J, not_first, TH: tl.constexpr,
                      TW: tl.constexpr, EPILOGUE: tl.constexpr, NEED_DW: tl.constexpr, NEED_DBASIS: tl.constexpr,
                      KK: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                      KB: tl.constexpr, DOT: tl.constexpr):
    """From a TH x TW tile of image b's tap gradients ``dk[p, t] = dpsf[t * H * W + p]`` (its d(psf)
    planes): ``d(weights)[b, :, p] = basis @ dk[p, :]`` (stored) and this program's padded d(basis)
    partial ``part[j, t] += sum_p weights[b, j, p] dk[p, t]`` (read back unless ``not_first`` is 0:
    this program's first tile; per-sample partials start zeroed and pass a nonzero ``not_first``).
    Loops, none unrolled: J blocks, KB-tap blocks (one up to k = 7) and EPILOGUE-pixel chunks, so
    registers grow with none of J, k and the tile. The d(basis) block is summed over the tile's
    chunks in registers and read-modify-written once per tile."""
    for jb in range(NUM_JB):
        jj = jb * BLOCK_J + tl.arange(0, BLOCK_J)
        if NEED_DW:
            for epi0 in range(0, TH * TW, EPILOGUE):
                pix, valid = _epilogue_pixels(epi0, h0, w0, H, W, TW, EPILOGUE)
                dw = tl.zeros((BLOCK_J, EPILOGUE), tl.float64 if DOT == "fma" else tl.float32)
                for t0 in range(0, KK_PAD, KB):
                    dw = matmul_add(dw, _basis_block(basis_ptr, jb, t0, KK_PAD, BLOCK_J, KB),
                                    tl.trans(_load_taps(dpsf, pix, H * W, valid, t0, KK, KB)), DOT)
                tl.store(dw_ptr + ((b * J + jj) * H * W)[:, None] + pix[None, :], dw.to(dw_ptr.dtype.element_ty),
                         mask=(jj < J)[:, None] & valid[None, :])
        if NEED_DBASIS:
            for t0 in range(0, KK_PAD, KB):
                acc = tl.zeros((BLOCK_J, KB), tl.float64 if DOT == "fma" else tl.float32)
                for epi0 in range(0, TH * TW, EPILOGUE):
                    pix, valid = _epilogue_pixels(epi0, h0, w0, H, W, TW, EPILOGUE)
                    acc = matmul_add(acc, tl.trans(_weights_block(w_ptr, jb, b, J, H * W, pix, valid, BLOCK_J)),
                                     _load_taps(dpsf, pix, H * W, valid, t0, KK, KB), DOT)
                offs = jj[:, None] * KK_PAD + t0 + tl.arange(0, KB)[None, :]
                # The partial was written by the previous tile in the store's layout and is read here
                # in the load's (other threads): the writes must be complete and visible to the whole
                # CTA before this read.
                tl.debug_barrier()
                tl.store(part + offs, acc + tl.load(part + offs, mask=_everywhere(not_first, offs), other=0.0))


@triton.jit
def _staging_area(stage_ptr, pid, i, TW: tl.constexpr, RD: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """Program ``pid``'s staging area (BLOCK_C planes of HALO pixels), the halo index of each tile
    pixel's window start (``i``: the tile's pixels), and those starts' pointers for every channel."""
    stage = stage_ptr + pid.to(tl.int64) * (BLOCK_C * HALO)
    here = _quad_starts(i, TW, RD, HALO_W)
    return stage, here, stage + (tl.arange(0, BLOCK_C) * HALO)[:, None] + here[None, :]


@triton.jit
def _filter_row(accs, u, staged, taps, here, i, FORWARD: tl.constexpr, P: tl.constexpr, HALO: tl.constexpr,
                KSIZE: tl.constexpr, DIL: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr, ACC: tl.constexpr):
    """Tap row u (a constexpr when the rows are unrolled, else a loop index) of :func:`_filter_block`
    added to its four accumulators: the row's window of the staged block and its k taps."""
    R: tl.constexpr = KSIZE // 2
    SIGN: tl.constexpr = 1 if FORWARD else -1
    values = _window(staged + SIGN * (u - R) * DIL * HALO_W, 1 + 2 * WPAD // 4, ACC)
    row = ()
    for v in tl.static_range(KSIZE):
        if FORWARD:
            row = row + (_quad_split(tl.load(taps + (u * KSIZE + v) * P + i).to(ACC)),)
        else:  # K_t at q - s_t for the quad's pixels: halo columns pw + WPAD - dv + 0..3
            row = row + (_shifted_quad(taps + (u * KSIZE + v) * HALO - (u - R) * DIL * HALO_W + here,
                                       WPAD - (v - R) * DIL, ACC),)
    return _add_taps(accs, row, values, WPAD, SIGN, KSIZE, DIL)


@triton.jit
def _filter_block(staged, taps, here, i, FORWARD: tl.constexpr, P: tl.constexpr, HALO: tl.constexpr,
                  KSIZE: tl.constexpr, DIL: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr, ROW_LOOP: tl.constexpr):
    """One staged channel block through the taps, as four accumulators over the quads. FORWARD:
    ``sum_t K_t(p) x[p + s_t]`` with the tile's taps (P per plane); else the gather form of d(x),
    ``sum_t K_t(q - s_t) dy[q - s_t]`` with the halo's taps (HALO per plane, halo coordinates).
    The k taps of a row are unrolled; the k rows too, or (ROW_LOOP, large k) a loop over them."""
    zero = tl.zeros((BLOCK_C, P // 4), ACC)
    accs = (zero, zero, zero, zero)
    if ROW_LOOP:
        for u in range(KSIZE):
            accs = _filter_row(accs, u, staged, taps, here, i, FORWARD, P, HALO, KSIZE, DIL, WPAD, HALO_W, ACC)
    else:
        for u in tl.static_range(KSIZE):
            accs = _filter_row(accs, u, staged, taps, here, i, FORWARD, P, HALO, KSIZE, DIL, WPAD, HALO_W, ACC)
    return accs


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _psf_fwd_kernel(x_ptr, src_ptr, basis_ptr, y_ptr, taps_ptr, stage_ptr, C, H, W, J, n_tiles, tiles_w,
                    tiles_per_img, basis_stride, SYNTH: tl.constexpr, PADDING: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr,
                    TW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                    KK_PAD: tl.constexpr, KB: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
                    HALO: tl.constexpr, HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, SYNTH_CHUNK: tl.constexpr,
                    DOT: tl.constexpr, ACC: tl.constexpr, QUAD: tl.constexpr, ROW_LOOP: tl.constexpr):
    """y = apply(x, K). Per tile: the taps K (synthesized, SYNTH, or copied from the psf src) go
    to ``taps``; per channel block, x and its halo are staged, then each tap row reads a window of
    aligned 4-vectors once for the four pixels of every quad."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    if QUAD:  # W % 4 == 0 (the launcher's check): rows, planes and quads start 4-aligned; said so,
        W = W // 4 * 4  # the compiler vectorizes a quad's global loads and stores at any such W
    HW = H * W
    pid = tl.program_id(0)
    i = tl.arange(0, P)
    taps = taps_ptr + pid.to(tl.int64) * (KK * P)
    stage, here, staged = _staging_area(stage_ptr, pid, i, TW, RD, HALO_W, HALO, BLOCK_C)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        _window_taps(taps, P, src_ptr, basis_ptr + b * basis_stride, b, J, H, W, HW, h0, w0, TW, P, SYNTH_CHUNK,
                     SYNTH, KK, KK_PAD, BLOCK_J, NUM_JB, KB, DOT, ROW_LOOP)
        for c0 in range(0, C, BLOCK_C):
            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
            _stage_halo(x_ptr, rows, h0, w0, H, W, stage, RD, WPAD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C,
                        PADDING)
            tl.debug_barrier()  # the staged block (and this tile's taps) are written
            accs = _filter_block(staged, taps, here, i, True, P, HALO, KSIZE, DIL, WPAD, HALO_W, BLOCK_C, ACC,
                                 ROW_LOOP)
            _store_quads(y_ptr, accs, rows, cvalid, pix, valid)
            tl.debug_barrier()  # every read of the staged block (and the taps) is done


@triton.jit
def _band_tiles(n, T: tl.constexpr, R: tl.constexpr, PADDING: tl.constexpr):
    """On an axis of length ``n`` tiled by T from 0: the tiles (their first index) that hold a
    band position (within R outside the axis): ``count`` of them, the first ``below`` of which lie
    below 0 (origins -T, -2T, ..), the rest from ``above`` (the tile holding n) up. None with zeros
    padding (nothing is folded)."""
    below = (R + T - 1) // T
    above = n // T * T
    count = below + (n + R - 1) // T - n // T + 1
    if PADDING == "zeros" or R == 0:
        count = 0
    return count, below, above


@triton.jit
def _band_tile(m, o0, below, above, T: tl.constexpr):
    """Candidate ``m`` of an axis: 0 the owner's own tile ``o0``, then :func:`_band_tiles`' tiles."""
    if m == 0:
        e0 = o0
    elif m <= below:
        e0 = -m * T
    else:
        e0 = above + (m - 1 - below) * T
    return e0


@triton.jit
def _folds_into(e0, o0, n, T: tl.constexpr, R: tl.constexpr, PADDING: tl.constexpr):
    """Whether the axis tile at ``e0`` holds a band position (within R outside the axis) whose
    source index (``_source``) lies in the owner's tile at ``o0`` (never with zeros padding)."""
    e = e0 + tl.arange(0, T)
    src = _source(e, n, PADDING)
    band = ((e < 0) | (e >= n)) & (e >= -R) & (e < n + R)
    return (tl.max((band & (src >= o0) & (src < o0 + T)).to(tl.int32), axis=0) > 0) & (PADDING != "zeros")


@triton.jit
def _fold_band(owner, band, eh0, ew0, oh0, ow0, H, W, R, TH: tl.constexpr, TW: tl.constexpr,
               BLOCK_C: tl.constexpr, PADDING: tl.constexpr):
    """The adjoint of the padding, inside the kernel: each value ``band[c, e]`` of the tile at
    (eh0, ew0) that lies outside the image, within R of it, is added onto its source pixel (the
    pixel the padding copies there), ``owner[c, pixel]``, where that pixel is in the owner's tile at
    (oh0, ow0) (both blocks tile-local, TH*TW per channel). One position at a time, in a fixed
    order: many positions fold onto one pixel (a replicate edge), so the adds are sequential and
    deterministic, with no atomics. Each channel's load, add and store stay in the thread that
    holds it (one 1-D layout), so the next position's read sees the write."""
    cl = tl.arange(0, BLOCK_C) * (TH * TW)
    for eh in range(tl.maximum(eh0, -R), tl.minimum(eh0 + TH, H + R)):
        sh = _source(eh, H, PADDING)
        for ew in range(tl.maximum(ew0, -R), tl.minimum(ew0 + TW, W + R)):
            sw = _source(ew, W, PADDING)
            outside = (eh < 0) | (eh >= H) | (ew < 0) | (ew >= W)
            if outside & (sh >= oh0) & (sh < oh0 + TH) & (sw >= ow0) & (sw < ow0 + TW):
                at = owner + cl + (sh - oh0) * TW + (sw - ow0)
                tl.store(at, tl.load(at) + tl.load(band + cl + (eh - eh0) * TW + (ew - ew0)))


@triton.jit
def _scatter_block(dy_ptr, rows, h0, w0, H, W, stage, staged, taps, here, i, P: tl.constexpr, KSIZE: tl.constexpr,
                   DIL: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr,
                   HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
                   ROW_LOOP: tl.constexpr):
    """One channel block (planes ``rows``) of the zeros-padding scatter on the tile at (h0, w0),
    which may lie outside the image, as its gather form: dy staged with its halo (zeros outside
    the image), then each tap row's shifted window against the halo's taps (``taps``, written for
    this tile). The four accumulators over the quads (the caller stores them)."""
    _stage_halo(dy_ptr, rows, h0, w0, H, W, stage, RD, WPAD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C, "zeros")
    tl.debug_barrier()  # the staged block (and the tile's taps) are written
    return _filter_block(staged, taps, here, i, False, P, HALO, KSIZE, DIL, WPAD, HALO_W, BLOCK_C, ACC, ROW_LOOP)


@triton.jit
def _psf_dx_kernel(dy_ptr, src_ptr, basis_ptr, dx_ptr, taps_ptr, stage_ptr, C, H, W, J, n_tiles, tiles_w,
                   tiles_per_img, basis_stride, SYNTH: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr,
                   TW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr,
                   KK_PAD: tl.constexpr, KB: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
                   HALO: tl.constexpr, HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, SYNTH_CHUNK: tl.constexpr,
                   DOT: tl.constexpr, ACC: tl.constexpr, QUAD: tl.constexpr, ROW_LOOP: tl.constexpr):
    """dx[c, q] = sum_t K_t(q - s_t) dy[c, q - s_t]. Per tile: the taps of the tile and its halo
    (the pixels its outputs read from) go to ``taps`` in halo coordinates, synthesized (SYNTH) or
    copied from the psf src; per channel block dy is staged with its halo and read as in the
    forward, with the shifts reversed."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    if QUAD:  # W % 4 == 0 (the launcher's check): rows, planes and quads start 4-aligned; said so,
        W = W // 4 * 4  # the compiler vectorizes a quad's global loads and stores at any such W
    HW = H * W
    pid = tl.program_id(0)
    taps = taps_ptr + pid.to(tl.int64) * (KK * HALO)
    i = tl.arange(0, P)
    stage, here, staged = _staging_area(stage_ptr, pid, i, TW, RD, HALO_W, HALO, BLOCK_C)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        _window_taps(taps, HALO, src_ptr, basis_ptr + b * basis_stride, b, J, H, W, HW, h0 - RD, w0 - WPAD, HALO_W,
                     HALO, SYNTH_CHUNK, SYNTH, KK, KK_PAD, BLOCK_J, NUM_JB, KB, DOT, ROW_LOOP)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        for c0 in range(0, C, BLOCK_C):
            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
            accs = _scatter_block(dy_ptr, rows, h0, w0, H, W, stage, staged, taps, here, i, P, KSIZE, DIL, RD, WPAD,
                                  HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C, ACC, ROW_LOOP)
            _store_quads(dx_ptr, accs, rows, cvalid, pix, valid)
            tl.debug_barrier()


@triton.jit
def _owned_tile(owner, dx_ptr, b, C, HW, pix, valid, TO_OWNER: tl.constexpr, P: tl.constexpr,
                BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """The owned tile's d(x), every channel, from ``dx`` into the owner area in ACC (TO_OWNER), or
    back, rounded to dx's dtype."""
    cl = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
        at = dx_ptr + rows[:, None] + pix[None, :]
        mine = owner + c0 * P + cl[:, None] * P + tl.arange(0, P)[None, :]
        if TO_OWNER:
            tl.store(mine, tl.load(at, mask=cvalid[:, None] & valid[None, :], other=0.0).to(ACC))
        else:
            tl.store(at, tl.load(mine).to(dx_ptr.dtype.element_ty), mask=cvalid[:, None] & valid[None, :])


@triton.jit
def _psf_fold_kernel(dy_ptr, src_ptr, basis_ptr, dx_ptr, taps_ptr, stage_ptr, fold_ptr, C, H, W, J, n_tiles,
                     tiles_w, tiles_per_img, basis_stride, SYNTH: tl.constexpr, PADDING: tl.constexpr,
                     KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, KK_PAD: tl.constexpr,
                     KB: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr,
                     HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, SYNTH_CHUNK: tl.constexpr, DOT: tl.constexpr,
                     ACC: tl.constexpr, QUAD: tl.constexpr, ROW_LOOP: tl.constexpr):
    """The adjoint of PADDING (not zeros), after the d(x) kernel has written the zeros-padding
    scatter into ``dx``: the program that owns a tile near the border computes the same sum as
    d(x) on every tile of the extended image (up to RD outside it, on the same tile grid) that
    holds positions whose padding source is in its tile, and folds those positions onto their
    sources (``_fold_band``), with no extended copy of anything and no atomics. The owned tile is
    summed in ACC in this program's ``fold`` area (all its channels, then one band block) and
    written back once. Tiles away from the border are skipped."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    if QUAD:  # W % 4 == 0 (the launcher's check): as in the d(x) kernel
        W = W // 4 * 4
    HW = H * W
    pid = tl.program_id(0)
    taps = taps_ptr + pid.to(tl.int64) * (KK * HALO)
    i = tl.arange(0, P)
    cl = tl.arange(0, BLOCK_C)
    owner = fold_ptr + pid.to(tl.int64) * ((C + BLOCK_C - 1) // BLOCK_C + 1) * (BLOCK_C * P)
    band = owner + (C + BLOCK_C - 1) // BLOCK_C * (BLOCK_C * P)
    stage, here, staged = _staging_area(stage_ptr, pid, i, TW, RD, HALO_W, HALO, BLOCK_C)
    rows_n, rows_below, rows_above = _band_tiles(H, TH, RD, PADDING)
    cols_n, cols_below, cols_above = _band_tiles(W, TW, RD, PADDING)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, oh0, ow0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        if (oh0 <= RD) | (oh0 + TH >= H - RD) | (ow0 <= RD) | (ow0 + TW >= W - RD):  # a pixel with a band source
            h, w, valid, pix = _tile_pixels(oh0, ow0, H, W, TH, TW)
            _owned_tile(owner, dx_ptr, b, C, HW, pix, valid, True, P, BLOCK_C, ACC)
            tl.debug_barrier()
            # Candidate m (n) = 0 is the owned tile's own rows (columns), then the band tiles.
            for m in range(rows_n + 1):
                h0 = _band_tile(m, oh0, rows_below, rows_above, TH)
                rows_fold = _folds_into(h0, oh0, H, TH, RD, PADDING)
                for n in range(cols_n + 1):
                    w0 = _band_tile(n, ow0, cols_below, cols_above, TW)
                    repeat = ((m > 0) & (h0 == oh0)) | ((n > 0) & (w0 == ow0))  # the owned tile, met again
                    cols_fold = _folds_into(w0, ow0, W, TW, RD, PADDING)
                    if ((rows_fold & (cols_fold | (n == 0))) | ((m == 0) & cols_fold)) & ~repeat:
                        _window_taps(taps, HALO, src_ptr, basis_ptr + b * basis_stride, b, J, H, W, HW, h0 - RD,
                                     w0 - WPAD, HALO_W, HALO, SYNTH_CHUNK, SYNTH, KK, KK_PAD, BLOCK_J, NUM_JB, KB,
                                     DOT, ROW_LOOP)
                        for c0 in range(0, C, BLOCK_C):
                            rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)
                            accs = _scatter_block(dy_ptr, rows, h0, w0, H, W, stage, staged, taps, here, i, P, KSIZE,
                                                  DIL, RD, WPAD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C, ACC,
                                                  ROW_LOOP)
                            _store_quads(band, accs, cl * P, cl < BLOCK_C, i, i < P)
                            tl.debug_barrier()  # the band block is written
                            _fold_band(owner + c0 * P, band, h0, w0, oh0, ow0, H, W, RD, TH, TW, BLOCK_C, PADDING)
                            tl.debug_barrier()
            _owned_tile(owner, dx_ptr, b, C, HW, pix, valid, False, P, BLOCK_C, ACC)  # rounded once more
            tl.debug_barrier()


@triton.jit
def _channel_quad(dy_ptr, b, C, c, HW, pix, valid, ACC: tl.constexpr):
    """dy of channel c at the tile's pixels as four tensors over the quads; zero past C."""
    ok = valid & ((pix * 0 + c) < C)
    return _quad_split(tl.load(dy_ptr + _plane(b, C, c, HW) + pix, mask=ok, other=0.0).to(ACC))


@triton.jit
def _channel_quads(dy_ptr, b, C, c0, HW, pix, valid, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """:func:`_channel_quad` of channels c0 .. c0+BLOCK_C-1, a tuple (a static loop: each a
    separate tensor, so sums over them are adds in the thread)."""
    dyq = ()
    for c in tl.static_range(BLOCK_C):
        dyq = dyq + (_channel_quad(dy_ptr, b, C, c0 + c, HW, pix, valid, ACC),)
    return dyq


@triton.jit
def _tap_plane(dpsf, t, HW):
    """Tap t's plane of an image's d(psf) planes (offset in int64: k*k planes may pass 2**31)."""
    return dpsf + t * HW.to(tl.int64)


@triton.jit
def _tap_group(dpsf, stage, here, dyq, pix, valid, HW, u, c0, v0, NT: tl.constexpr, HALO: tl.constexpr,
               KSIZE: tl.constexpr, DIL: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
               BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Large k: taps v0 .. v0+NT-1 of tap row u (a loop index) for one staged channel block (its dy
    quads ``dyq``), summed over the block's channels in the thread and added to the d(psf) planes
    (written over by the first block, c0 = 0; a thread reads back only what it wrote). ``v0`` is a
    multiple of 4, so each channel's window is NV aligned 4-vectors from ``v0 * DIL`` columns in;
    past the row's last tap they read the next staged values, or the staging area's tail, for sums
    that are never stored: a thread holds 4 x NT sums, not 4 x k."""
    OFFSET: tl.constexpr = WPAD - (KSIZE // 2) * DIL  # window index of tap v0's first pixel
    NV: tl.constexpr = (OFFSET + 3 + (NT - 1) * DIL) // 4 + 1
    zero = tl.zeros((pix.shape[0] // 4,), ACC)
    dks = ()
    for v in tl.static_range(NT):
        dks = dks + ((zero, zero, zero, zero),)
    for c in tl.static_range(BLOCK_C):
        dks = _tap_row_grads(dks, dyq[c], _window(stage + c * HALO + (u - KSIZE // 2) * DIL * HALO_W + v0 * DIL
                                                  + here, NV, ACC), OFFSET, NT, DIL)
    for v in tl.static_range(NT):
        if v0 + v < KSIZE:
            at = _tap_plane(dpsf, u * KSIZE + v0 + v, HW) + pix
            dk = _quad_join(dks[v][0], dks[v][1], dks[v][2], dks[v][3])
            tl.store(at, dk + tl.load(at, mask=valid & (c0 != 0), other=0.0), mask=valid)


@triton.jit
def _held_tap_sums(x_ptr, dy_ptr, dpsf, stage, here, b, C, H, W, HW, h0, w0, pix, valid, P: tl.constexpr,
                   HALO: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr,
                   HALO_W: tl.constexpr, HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                   ROW_GROUPS: tl.constexpr, PADDING: tl.constexpr, ACC: tl.constexpr):
    """Up to k = UNROLLED_K: a tile's tap gradients summed over all C channels in registers, then
    stored once into the d(psf) planes. The tap rows are split over ROW_GROUPS groups of threads (a
    (ROW_GROUPS, P) tensor: group g takes rows g*RPG .. g*RPG+RPG-1, RPG = ceil(k / ROW_GROUPS) <= 2),
    so a thread holds 4 x k x RPG sums, its quad's share of its rows, across every channel. Per
    staged channel block, a loop over its real channels loads each channel's dy quad once and adds it
    times the window of each of the group's rows (rows past k, in the last group, repeat row k-1:
    sums never stored)."""
    R: tl.constexpr = KSIZE // 2
    RPG: tl.constexpr = (KSIZE + ROW_GROUPS - 1) // ROW_GROUPS
    OFFSET: tl.constexpr = WPAD - R * DIL  # window index of the row's first tap's first pixel
    NV: tl.constexpr = (OFFSET + 3 + (KSIZE - 1) * DIL) // 4 + 1
    g = tl.arange(0, ROW_GROUPS)[:, None]
    windows = ()  # per group row: (ROW_GROUPS, P) pointers to its window in channel 0 of the staged block
    for r in tl.static_range(RPG):
        u = tl.minimum(g * RPG + r, KSIZE - 1)
        windows = windows + (stage + (u - R) * DIL * HALO_W + here[None, :],)
    at = pix[None, :] + g * 0
    in_image = valid[None, :] & (g >= 0)
    zero = tl.zeros((ROW_GROUPS, P // 4), ACC)
    sums = ()
    for t in tl.static_range(RPG * KSIZE):
        sums = sums + ((zero, zero, zero, zero),)
    for c0 in range(0, C, BLOCK_C):
        rows, _ = _channel_rows(b, C, c0, HW, BLOCK_C)
        _stage_halo(x_ptr, rows, h0, w0, H, W, stage, RD, WPAD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C,
                    PADDING)
        tl.debug_barrier()  # the staged block is written
        for c in range(0, tl.minimum(BLOCK_C, C - c0)):
            dy = _channel_quad(dy_ptr, b, C, c0 + c, HW, at, in_image, ACC)
            out = ()
            for r in tl.static_range(RPG):
                out = out + _tap_row_grads(sums[r * KSIZE:(r + 1) * KSIZE], dy,
                                           _window(windows[r] + c * HALO, NV, ACC), OFFSET, KSIZE, DIL)
            sums = out
        tl.debug_barrier()  # every read of the staged block is done
    for r in tl.static_range(RPG):
        u = g * RPG + r
        for v in tl.static_range(KSIZE):
            s = sums[r * KSIZE + v]
            tl.store(_tap_plane(dpsf, u * KSIZE + v, HW) + at,
                     _quad_join(s[0], s[1], s[2], s[3]).to(dpsf.dtype.element_ty), mask=in_image & (u < KSIZE))


@triton.jit
def _psf_dk_kernel(x_ptr, dy_ptr, dpsf_ptr, stage_ptr, C, H, W, n_tiles, tiles_w, tiles_per_img,
                   PADDING: tl.constexpr, KSIZE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                   BLOCK_C: tl.constexpr, RD: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr,
                   HALO: tl.constexpr, HALO_PAD: tl.constexpr, HALO_CHUNK: tl.constexpr, TAP_GROUP: tl.constexpr,
                   ROW_GROUPS: tl.constexpr, ACC: tl.constexpr, QUAD: tl.constexpr, ROW_LOOP: tl.constexpr):
    """d(psf)[b, t, p] = dK_t(p) = sum_c dy[c, p] x[c, p + s_t] (summed in ACC; the planes in ACC for
    the row loop, which adds into them, else in their own dtype): x staged as in the
    forward, each tap row read as a window per quad, each channel a separate tensor over the quads,
    so the channel sum is plain adds in the thread by construction, whatever layouts the compiler
    picks. Up to k = UNROLLED_K the sums stay in registers over all channels
    (:func:`_held_tap_sums`); above, each channel block's sums over a tap row's groups of TAP_GROUP
    taps are added into the planes (:func:`_tap_group`)."""
    KK: tl.constexpr = KSIZE * KSIZE
    P: tl.constexpr = TH * TW
    if QUAD:  # W % 4 == 0 (the launcher's check): rows, planes and quads start 4-aligned; said so,
        W = W // 4 * 4  # the compiler vectorizes a quad's global loads and stores at any such W
    HW = H * W
    pid = tl.program_id(0)
    stage, here, _ = _staging_area(stage_ptr, pid, tl.arange(0, P), TW, RD, HALO_W, HALO, BLOCK_C)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        pix = tl.max_contiguous(pix, 4)
        dpsf = dpsf_ptr + b * KK * HW
        if ROW_LOOP:
            for c0 in range(0, C, BLOCK_C):
                rows, cvalid = _channel_rows(b, C, c0, HW, BLOCK_C)  # (not ``_``: triton takes it for the one above)
                _stage_halo(x_ptr, rows, h0, w0, H, W, stage, RD, WPAD, HALO_W, HALO, HALO_PAD, HALO_CHUNK, BLOCK_C,
                            PADDING)
                dyq = _channel_quads(dy_ptr, b, C, c0, HW, pix, valid, BLOCK_C, ACC)
                tl.debug_barrier()  # the staged block is written
                for u in range(KSIZE):
                    for v0 in range(0, KSIZE, TAP_GROUP):
                        _tap_group(dpsf, stage, here, dyq, pix, valid, HW, u, c0, tl.multiple_of(v0, 4), TAP_GROUP,
                                   HALO, KSIZE, DIL, WPAD, HALO_W, BLOCK_C, ACC)
                tl.debug_barrier()  # every read of the staged block is done
        else:
            _held_tap_sums(x_ptr, dy_ptr, dpsf, stage, here, b, C, H, W, HW, h0, w0, pix, valid, P, HALO, KSIZE, DIL,
                           RD, WPAD, HALO_W, HALO_PAD, HALO_CHUNK, BLOCK_C, ROW_GROUPS, PADDING, ACC)


@triton.jit
def _synthesize_fwd_kernel(w_ptr, basis_ptr, psf_ptr, H, W, J, n_tiles, tiles_w, tiles_per_img, basis_stride,
                           KSIZE: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BLOCK_J: tl.constexpr,
                           NUM_JB: tl.constexpr, KK_PAD: tl.constexpr, KB: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        h, w, valid, pix = _tile_pixels(h0, w0, H, W, TH, TW)
        for t0 in range(0, KK_PAD, KB):
            k = _mix_basis(w_ptr, basis_ptr + b * basis_stride, b, J, HW, pix, valid, t0, KK_PAD, BLOCK_J, NUM_JB,
                           KB, DOT)
            _store_taps(psf_ptr + b * KK * HW, k, pix, HW, valid, t0, KK)


@triton.jit
def _synthesize_bwd_kernel(dpsf_ptr, w_ptr, basis_ptr, dw_ptr, part_ptr, H, W, J, n_tiles, tiles_w, tiles_per_img,
                           basis_stride, part_stride, NEED_DW: tl.constexpr, NEED_DBASIS: tl.constexpr, KSIZE: tl.constexpr, TH: tl.constexpr,
                           TW: tl.constexpr, BLOCK_J: tl.constexpr, NUM_JB: tl.constexpr, KK_PAD: tl.constexpr,
                           EPILOGUE: tl.constexpr, KB: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    HW = H * W
    pid = tl.program_id(0)
    part = part_ptr + pid.to(tl.int64) * part_stride
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        b, h0, w0 = _tile_origin(tile, tiles_w, tiles_per_img, TH, TW)
        _tile_basis_grads(dpsf_ptr + b * KK * HW, w_ptr, basis_ptr + b * basis_stride, dw_ptr,
                          part + b * basis_stride, b, h0, w0, H, W, J, tile - pid + basis_stride, TH, TW, EPILOGUE,
                          NEED_DW, NEED_DBASIS, KK, KK_PAD, BLOCK_J, NUM_JB, KB, DOT)


# --------------------------------------------------------------------------------------------
# launch plans and launchers (inputs already checked by psfops; here: layout, allocation, grid)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Launch shape of one psf kernel: TH x TW pixel tiles (TW a multiple of 4: quads), channels
    per block, basis kernels per block (and blocks), halo pixels per staging step and per
    synthesis product, warps per program, programs in the persistent grid."""
    TH: int
    TW: int
    BLOCK_C: int
    BLOCK_J: int
    NUM_JB: int
    HALO_CHUNK: int
    SYNTH_CHUNK: int
    num_warps: int
    programs: int

    def halo(self, k: int, dilation: int) -> dict:
        """The staged halo of a tile for taps of size k at ``dilation``: RD rows above and below,
        WPAD (RD rounded up to a multiple of 4, so windows stay 16-byte aligned) columns left and
        right. A plane's staged halo and a d(x) tap plane hold HALO pixels; HALO_PAD, HALO rounded up
        to whole staging chunks, is only the staging loop's extent."""
        rd = (k // 2) * dilation
        wpad = triton.cdiv(rd, 4) * 4
        halo = (self.TH + 2 * rd) * (self.TW + 2 * wpad)
        return dict(RD=rd, WPAD=wpad, HALO_W=self.TW + 2 * wpad, HALO=halo,
                    HALO_PAD=triton.cdiv(halo, self.HALO_CHUNK) * self.HALO_CHUNK, HALO_CHUNK=self.HALO_CHUNK)

    def launch_args(self, limit_registers: bool = False) -> dict:
        """The plan's constexprs and launch options; ``limit_registers``: an explicit register
        limit (``maxnreg``, :data:`MAX_REGISTERS`). Left to itself, sm_90's ptxas kept 2-3
        loop-invariant values of some launches on the stack at 64-128 registers (the large-k ones,
        k > 7: apply_psf's at k = 15 and 31, 8-56 bytes under triton 3.9 and 3.6); with the limit it
        keeps them in registers. Not at k <= 7: there the limit made ptxas take all 255 registers and
        spill 8-96 bytes in the forward, d(x) and fold launches (triton 3.9); nor for a 16-warp
        launch (255 registers a thread would not fit an SM)."""
        return dict(TH=self.TH, TW=self.TW, BLOCK_J=self.BLOCK_J, NUM_JB=self.NUM_JB, num_warps=self.num_warps,
                    num_stages=1, **({"maxnreg": MAX_REGISTERS} if limit_registers else {}))


# GPU tile shapes per kernel, (TH, TW, largest BLOCK_C (see channel_block), num_warps), read off the
# sm_90 SASS (``python -m bench sass``): aligned vector loads, no layout conversions through shared memory, no spills.
# The forward and d(x) take 8 x 16 tiles: 32 quads, as 4 x 32 (the (channels, quads) block matches the 1-D
# tap layout; at 8 x 32 it did not: 100-200 barriers in the channel loop), and a halo of 2.6 pixels per
# output pixel at k = 7, not 3.1 (L2 estimate at the headline, float32: forward 80 -> 73 us, d(x)
# 111 -> 97). d(taps): up to k = UNROLLED_K, num_warps per row
# group (dk_row_groups: 16 warps at k = 5 and 7, a quad per thread per group), its sums held in registers
# over all channels, so its channel block sets only how much is staged between barriers.
GPU_SHAPES = {"fwd": (8, 16, 64, 8), "dx": (8, 16, 64, 8), "dk": (16, 32, 32, 4), "synth": (4, 16, 1, 4)}
# The forward and d(x) of apply_psf (taps loaded, not synthesized) and of every op above k = UNROLLED_K
# keep 4 x 32 tiles: at 8 x 16 apply_psf's float32 d(x) spilled 24 bytes and its bfloat16 forward 8 under
# triton 3.6, its float32 circular fold 24 under 3.9, and psf_conv's float32 d(x) 8 at k = 15 under 3.6
WIDE_TILE = (4, 32)
# Programs per SM in the GPU's persistent grids: d(taps) up to k = UNROLLED_K fills an SM with 16 warps
# (at most 128 registers a thread); above it, two 4-warp programs (at most 255 registers) hide each
# other's latency and barriers; the forward and d(x) (8 warps, 170-250 registers) fit one; the
# synthesis and its gradient (4 warps, up to 224 registers) two.
PROGRAMS_PER_SM = {"fwd": 1, "dx": 1, "dk": 2, "synth": 2}
DK_WARPS_PER_SM = 16
EPILOGUE = 64  # pixels per d(weights)/d(basis) product of the synthesize backward (half that above k = 7)
TAP_BLOCK = 64  # taps per synthesis and epilogue product (KK_PAD above it: several blocks)
# d(taps)' largest channel block above UNROLLED_K, unrolled in the thread (16 channels with whole tap
# rows spilled 40-80 bytes on sm_90 at k = 31, float32 and bfloat16)
LARGE_K_DK_BLOCK_C = 8
DK_TAP_GROUP = 8  # d(taps)' taps per group above UNROLLED_K (a multiple of 4: the groups' windows stay aligned)
UNROLLED_K = 7  # the tap loops unroll all k x k taps up to this k; above it, only a row's k taps (compile time)
MAX_REGISTERS = 255  # the explicit register limit of the large-k launches (Plan.launch_args)
GPU_CHUNKS = (128, 128)  # halo pixels per staging step, per synthesis product
FWD_SYNTH_CHUNK = 128  # the forward's tile pixels per synthesis product
FOLD_BLOCK_C = 16  # channels per block of the padding fold (border tiles only): its bookkeeping needs registers


BLOCK_OVERHEAD = 8  # a channel block's fixed cost (the thread's tap loads, staging), in channels' work


def channel_block(C: int, largest: int, smallest: int = 1) -> int:
    """Channels per block on the GPU for C channels, a power of two from ``smallest`` up to
    ``largest`` (the kernel's GPU_SHAPES value): the one that minimizes ``blocks x (channels per
    block + BLOCK_OVERHEAD)``, so few channels are padded (C=40: 16 in 3 blocks, not 64 with 24
    padded; C=80: 16 in 5 blocks; C=3: 8 in the forward and d(x), 4 in d(taps)) without many more
    blocks (C=60 and C=64: 64). Ties: fewer padded channels, then larger blocks. The forward and
    d(x) hold a (BLOCK_C, quads) block over their threads: ``smallest`` (channels x quads = threads,
    one value each) keeps it from being replicated over threads, which costs layout conversions
    through shared memory in the tap loop (sm_90, C=3 with 4-channel blocks: 89 barriers in the
    channel loop, and d(x) spilled)."""
    def cost(bc):
        blocks = triton.cdiv(C, bc)
        return blocks * (bc + BLOCK_OVERHEAD), blocks * bc, -bc
    return min((2 ** e for e in range(largest.bit_length()) if min(smallest, largest) <= 2 ** e <= largest),
               key=cost)


def plan(kind: str, B: int, C: int, H: int, W: int, J: int, device: torch.device, synth: bool = True,
         k: int = 1) -> Plan:
    """The launch plan of kernel ``kind`` ("fwd", "dx", "dk", "synth"). The GPU's plans (also in
    the interpreter inside ``launch_target(gpu_plans=True)``): the tile shapes of
    :data:`GPU_SHAPES` and :data:`PROGRAMS_PER_SM` programs per SM (fewer if there are fewer
    tiles). The interpreter's, which runs programs one after the other in Python: tiles as large as the image (up to 16 x 32
    pixels, so fewer, larger programs) and as many programs as :func:`launch.sm_count` gives a CPU
    (a few), so the persistent loop always runs. ``synth`` False (apply_psf: taps loaded, not
    synthesized) keeps the forward and d(x) on :data:`WIDE_TILE` tiles (so does k > UNROLLED_K)
    and quarters the forward's largest channel block: at C=64 sm_90 spilled 24 bytes in bfloat16
    with the full block, and 16 with half; a quarter spills nothing (``python -m bench sm90 --ops
    apply_psf``). Above k = UNROLLED_K (``k``) d(taps) takes at most
    :data:`LARGE_K_DK_BLOCK_C` channels, and apply_psf's forward an eighth of the largest block (a
    quarter: 8 bytes spilled in bfloat16 at k = 31 under triton 3.6); up to it, d(taps) runs
    :func:`dk_row_groups` groups of GPU_SHAPES' warps."""
    block_j = max(16, min(64, triton.next_power_of_2(max(J, 1))))
    if not gpu_plans():
        tw = max(16, min(32, triton.next_power_of_2(max(W, 1))))
        th = min(16, triton.next_power_of_2(max(H, 1)))
        bc, warps, chunks = min(16, triton.next_power_of_2(max(C, 1))), 4, (256, 256)
        per_sm = 1
    else:
        th, tw, bc, warps = GPU_SHAPES[kind]
        if kind in ("fwd", "dx") and (not synth or k > UNROLLED_K):
            th, tw = WIDE_TILE
        per_sm = PROGRAMS_PER_SM[kind]
        if kind == "dk" and k <= UNROLLED_K:
            warps *= dk_row_groups(k)
            per_sm = DK_WARPS_PER_SM // warps
        if kind == "fwd" and not synth:
            bc //= 8 if k > UNROLLED_K else 4
        # d(taps) holds channels in a static loop (any count); the others a (BLOCK_C, TH*TW/4) tensor
        bc = channel_block(C, bc, 1 if kind == "dk" else max(1, warps * 32 // (th * tw // 4)))
        chunks = GPU_CHUNKS
    if kind == "dk" and k > UNROLLED_K:
        bc = min(bc, LARGE_K_DK_BLOCK_C)
    n_tiles = B * triton.cdiv(H, th) * triton.cdiv(W, tw)
    return Plan(th, tw, bc, block_j, triton.cdiv(J, block_j), *chunks, warps,
                max(1, min(n_tiles, per_sm * sm_count(device))))


def dk_row_groups(k: int) -> int:
    """d(taps)' groups of threads that split a tile's tap rows up to k = UNROLLED_K: the fewest
    (a power of two) that leave each thread at most two rows' sums (8k registers); 1 above."""
    return 1 if k > UNROLLED_K else min(4, triton.next_power_of_2(triton.cdiv(k, 2)))


def _kk_pad(k: int) -> int:
    return max(16, triton.next_power_of_2(k * k))


def _tap_block(kk_pad: int) -> int:
    """KB, the taps per synthesis and epilogue product: all of them up to k = 7, else blocks of
    :data:`TAP_BLOCK` (a product tile of pixels x KB values does not grow with k)."""
    return min(kk_pad, TAP_BLOCK)


def _dot_modes(dtype: torch.dtype) -> tuple[str, str]:
    """(products of inputs, products of an input with a float32 accumulated operand, the input
    first): see the module docstring."""
    inputs = dot_mode(dtype, float32="tf32x3")
    return inputs, {"half": "tf32x2"}.get(inputs, inputs)


def _grid_args(p: Plan, B: int, H: int, W: int) -> tuple[int, int, int]:
    """(n_tiles, tiles_w, tiles_per_img) of the persistent grid."""
    tiles_w = triton.cdiv(W, p.TW)
    tiles_per_img = triton.cdiv(H, p.TH) * tiles_w
    return B * tiles_per_img, tiles_w, tiles_per_img


def _scratch(p: Plan, per_program: int, dtype: torch.dtype, device, tail: int = 0) -> torch.Tensor:
    """Per-program work areas (taps or a staged halo block), each read back by the program that
    wrote it, and ``tail`` elements after the last (for reads past an area's end)."""
    return torch.empty(p.programs * per_program + tail, device=device, dtype=dtype)


def _staging(p: Plan, halo: dict, x: torch.Tensor, tail: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The staging areas (one channel block of ``x``'s halo planes per program, :meth:`Plan.halo`),
    in ``x``'s dtype or ``dtype``."""
    return _scratch(p, p.BLOCK_C * halo["HALO"], dtype or x.dtype, x.device, tail)


class _Basis:
    """The basis, (J, k, k) shared or (B, J, k, k) per sample, as the kernels read it: zero-padded
    (NB, NUM_JB*BLOCK_J, KK_PAD) blocks (NB = 1 shared, B per sample; no masks in the kernels),
    ``stride`` elements from one sample's blocks to the next (0 when shared)."""

    def __init__(self, basis: torch.Tensor, p: Plan):
        self.basis, self.k, J = basis, basis.shape[-1], basis.shape[-3]
        self.kk_pad = _kk_pad(self.k)
        per_sample = basis.dim() == 4
        nb = basis.shape[0] if per_sample else 1
        self.padded = basis.new_zeros((nb, p.NUM_JB * p.BLOCK_J, self.kk_pad))
        self.padded[:, :J, :self.k * self.k] = basis.reshape(nb, J, self.k * self.k)
        self.stride = self.padded[0].numel() if per_sample else 0

    def partials(self, p: Plan, dtype) -> torch.Tensor:
        """Each program's padded d(basis) partial sums, (programs, NB, ...): written over by a
        program's first tile when shared; per sample they start zeroed (a program adds every
        image's tiles into that image's slot)."""
        alloc = torch.zeros if self.stride else torch.empty
        return alloc((p.programs, *self.padded.shape), device=self.basis.device, dtype=dtype)

    def reduce(self, partials: torch.Tensor) -> torch.Tensor:
        """d(basis) from the programs' partials: a fixed-order sum (deterministic), unpadded, in
        the basis's shape."""
        J = self.basis.shape[-3]
        return partials.sum(dim=0)[:, :J, :self.k * self.k].reshape(self.basis.shape)


def _capped(n: int, p: Plan, kb: int, dot: str) -> int:
    """``n`` pixels per synthesis or epilogue product, fewer for float64: its product (pixels x
    BLOCK_J x KB, a broadcast multiply) stays within triton's 2**20 elements per tensor."""
    return min(n, max(1, 2 ** 20 // (p.BLOCK_J * kb))) if dot == "fma" else n


def _epilogue(p: Plan, kk_pad: int, dot: str) -> int:
    """Pixels per epilogue product: :data:`EPILOGUE`, half that where the taps take several blocks
    (k > 7: the products accumulate over the blocks, sm_90 spilled with 64), at most the tile."""
    kb = _tap_block(kk_pad)
    return _capped(min(EPILOGUE if kk_pad <= kb else EPILOGUE // 2, p.TH * p.TW), p, kb, dot)


def _check_plane(H: int, W: int) -> None:
    if H * W >= 2 ** 31:
        raise ValueError(f"the psf kernels index a plane with int32: H*W must be < 2**31, got {H}x{W}")


def _shapes(x, src, basis):
    """(B, C, H, W, J, k) of a filter launch: ``src`` is the weights (with ``basis``) or the psf."""
    B, C, H, W = x.shape
    _check_plane(H, W)
    if basis is None:
        return B, C, H, W, 1, int(round(src.shape[1] ** 0.5))
    return B, C, H, W, src.shape[1], basis.shape[-1]


@launcher
def filter_forward(x, src, basis, dilation: int, padding: str = "zeros") -> torch.Tensor:
    """Gather form: y = psf_conv(x, src, basis) if ``basis`` is given, else apply_psf(x, src),
    the input extended by ``padding`` (its indices remapped while staging). (B,C,H,W) out."""
    x, src = x.contiguous(), src.contiguous()
    B, C, H, W, J, k = _shapes(x, src, basis)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0 or src.numel() == 0:
        return y.zero_()
    p = plan("fwd", B, C, H, W, J, x.device, synth=basis is not None, k=k)
    b = _Basis(basis.contiguous(), p) if basis is not None else None
    kk_pad = _kk_pad(k)
    kb = _tap_block(kk_pad)
    dot = _dot_modes(x.dtype)[0]
    _psf_fwd_kernel[(p.programs,)](
        x, src, b.padded if b else src, y, _scratch(p, k * k * p.TH * p.TW, torch_acc_dtype(x), x.device),
        _staging(p, p.halo(k, dilation), x), C, H, W, J,
        *_grid_args(p, B, H, W), b.stride if b else 0, SYNTH=b is not None, PADDING=padding, KSIZE=k, DIL=dilation,
        BLOCK_C=p.BLOCK_C, KK_PAD=kk_pad, KB=kb, SYNTH_CHUNK=_capped(FWD_SYNTH_CHUNK, p, kb, dot), DOT=dot,
        ACC=acc_dtype(x), QUAD=W % 4 == 0, ROW_LOOP=k > UNROLLED_K, **p.halo(k, dilation), **p.launch_args(k > UNROLLED_K))
    return y


@launcher
def filter_scatter(y, src, basis, dilation: int, padding: str = "zeros") -> torch.Tensor:
    """Scatter form, the adjoint of :func:`filter_forward` with the same ``padding``: each pixel
    spreads ``K_t(p) y[p]`` to ``p + s_t``, and what lands outside the image is folded back onto
    the pixel the padding copies there (zeros: dropped): the gather ``out[q] = sum_t K_t(q - s_t)
    y[q - s_t]`` (the d(x) kernel), then, for another padding, the fold near the border (a second
    kernel, with channel blocks of at most :data:`FOLD_BLOCK_C`). (B,C,H,W) out."""
    y, src = y.contiguous(), src.contiguous()
    B, C, H, W, J, k = _shapes(y, src, basis)
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    if y.numel() == 0 or src.numel() == 0:
        return out.zero_()
    p = plan("dx", B, C, H, W, J, y.device, synth=basis is not None, k=k)
    b = _Basis(basis.contiguous(), p) if basis is not None else None
    halo = p.halo(k, dilation)
    kk_pad = _kk_pad(k)
    kb = _tap_block(kk_pad)
    dot = _dot_modes(y.dtype)[0]
    taps = _scratch(p, k * k * halo["HALO"], torch_acc_dtype(y), y.device)
    stage = _staging(p, halo, y)
    args = (y, src, b.padded if b else src, out, taps, stage)
    meta = dict(SYNTH=b is not None, KSIZE=k, DIL=dilation, KK_PAD=kk_pad, KB=kb,
                SYNTH_CHUNK=_capped(p.SYNTH_CHUNK, p, kb, dot), DOT=dot, ACC=acc_dtype(y), QUAD=W % 4 == 0,
                ROW_LOOP=k > UNROLLED_K, **halo)
    _psf_dx_kernel[(p.programs,)](*args, C, H, W, J, *_grid_args(p, B, H, W), b.stride if b else 0,
                                  BLOCK_C=p.BLOCK_C, **meta, **p.launch_args(k > UNROLLED_K))
    if padding != "zeros":
        fold_c = min(p.BLOCK_C, FOLD_BLOCK_C)
        fold = _scratch(p, (triton.cdiv(C, fold_c) + 1) * fold_c * p.TH * p.TW, torch_acc_dtype(y), y.device)
        _psf_fold_kernel[(p.programs,)](*args, fold, C, H, W, J, *_grid_args(p, B, H, W), b.stride if b else 0,
                                        PADDING=padding, BLOCK_C=fold_c, **meta, **p.launch_args(k > UNROLLED_K))
    return out


@launcher
def tap_grads(x, dy, src, basis, dilation: int, padding: str, need_src: bool, need_basis: bool):
    """The gradients through the per-pixel taps of :func:`filter_forward` (x extended by
    ``padding``), ``dK_t(p) = sum_c dy[c, p] x[c, p + s_t]``: (d(src), d(basis)) where asked for
    (0-element placeholders elsewhere): d(psf) = dK (no ``basis``), or d(weights) and d(basis)
    (reduced deterministically) from dK by the synthesize backward. For the latter, and above
    k = UNROLLED_K (the kernel adds into it per channel block), dK is a (B, k*k, H, W) buffer in the
    accumulation dtype (float32 for half inputs): the psf's size, no C and no J in it."""
    x, dy, src = x.contiguous(), dy.contiguous(), src.contiguous()
    B, C, H, W, J, k = _shapes(x, src, basis)
    need_basis = need_basis and basis is not None
    if x.numel() == 0 or src.numel() == 0 or not (need_src or need_basis):
        dsrc, dbasis = gradient_buffers((need_src, need_basis), src, src if basis is None else basis)
        return dsrc.zero_(), dbasis.zero_()
    p = plan("dk", B, C, H, W, J, x.device, k=k)
    halo = p.halo(k, dilation)
    group = k if k <= UNROLLED_K else DK_TAP_GROUP
    tail = (group + 1) * dilation + 4  # the last tap group reads at most 3 + (group - 1) * dilation past a row
    direct = basis is None and k <= UNROLLED_K  # d(psf) written once, from sums in registers
    dk = torch.empty((B, k * k, H, W), device=x.device, dtype=src.dtype if direct else torch_acc_dtype(x))
    _psf_dk_kernel[(p.programs,)](
        x, dy, dk, _staging(p, halo, x, tail, torch_acc_dtype(x)), C, H, W, *_grid_args(p, B, H, W), PADDING=padding, KSIZE=k,
        DIL=dilation, BLOCK_C=p.BLOCK_C, TAP_GROUP=group, ROW_GROUPS=dk_row_groups(k), ACC=acc_dtype(x),
        QUAD=W % 4 == 0, ROW_LOOP=k > UNROLLED_K, **halo, **p.launch_args(k > UNROLLED_K))
    if basis is None:
        return dk.to(src.dtype), src.new_empty(0)  # (a copy only above UNROLLED_K with half inputs)
    return _basis_grads(dk, src, basis, (need_src, need_basis), _dot_modes(x.dtype)[1])


@launcher
def synthesize_forward(weights, basis) -> torch.Tensor:
    """(B,J,H,W), (J,k,k) or (B,J,k,k) -> (B,k*k,H,W)."""
    weights, basis = weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    _check_plane(H, W)
    k = basis.shape[-1]
    psf = torch.empty((B, k * k, H, W), device=weights.device, dtype=weights.dtype)
    if weights.numel() == 0:
        return psf.zero_()
    p = plan("synth", B, 1, H, W, J, weights.device)
    b = _Basis(basis, p)
    _synthesize_fwd_kernel[(p.programs,)](
        weights, b.padded, psf, H, W, J, *_grid_args(p, B, H, W), b.stride, KSIZE=k, KK_PAD=b.kk_pad,
        KB=_tap_block(b.kk_pad), DOT=_dot_modes(weights.dtype)[0], **p.launch_args())
    return psf


@launcher
def synthesize_backward(dpsf, weights, basis, needs):
    """Gradients of :func:`synthesize_forward`: (d(weights), d(basis)) where ``needs`` asks."""
    weights = weights.contiguous()
    return _basis_grads(dpsf, weights, basis, needs, _dot_modes(weights.dtype)[0])


def _basis_grads(dpsf, weights, basis, needs, dot: str):
    """(d(weights), d(basis)) from d(psf) (B, k*k, H, W) where ``needs`` asks (placeholders
    elsewhere), the products in ``dot`` mode (d(psf) may be in a wider dtype than the weights)."""
    dpsf, weights, basis = dpsf.contiguous(), weights.contiguous(), basis.contiguous()
    B, J, H, W = weights.shape
    _check_plane(H, W)
    k = basis.shape[-1]
    dw, dbasis = gradient_buffers(needs, weights, basis)
    if weights.numel() == 0 or not any(needs):
        return dw.zero_(), dbasis.zero_()
    p = plan("synth", B, 1, H, W, J, weights.device)
    b = _Basis(basis, p)
    partials = b.partials(p, torch_acc_dtype(weights)) if needs[1] else dw
    _synthesize_bwd_kernel[(p.programs,)](
        dpsf, weights, b.padded, dw, partials, H, W, J, *_grid_args(p, B, H, W), b.stride, partials[0].numel(),
        NEED_DW=needs[0], NEED_DBASIS=needs[1], KSIZE=k, KK_PAD=b.kk_pad, KB=_tap_block(b.kk_pad),
        EPILOGUE=_epilogue(p, b.kk_pad, dot), DOT=dot, **p.launch_args())
    if needs[1]:
        dbasis.copy_(b.reduce(partials))
    return dw, dbasis
