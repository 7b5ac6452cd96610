"""The jit helpers of the psf kernels (:mod:`kernels.psf_kernels`): tiles of the persistent grid,
channel planes, the basis and weights blocks of the synthesis, the staged halo and its windows,
quads (4 contiguous pixels a thread holds), tap tiles, the tap loops of the gather and its
adjoint, and the synthesize backward's tile products. The design is in :mod:`kernels.psf`'s docstring."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import matmul_add


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
def _plane_width(H, W, QUAD: tl.constexpr):
    """(W, H*W) as the kernels index with them. QUAD (W % 4 == 0, the launcher's check): W written
    as W // 4 * 4, so the compiler knows rows, planes and quads start 4-aligned and vectorizes a
    quad's global loads and stores at any such W."""
    if QUAD:
        W = W // 4 * 4
    return W, H * W


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
def _next_quads(left, right):
    """Over the quads (last axis, even length): quad 2o takes ``left``'s quad 2o + 1 and quad 2o + 1
    ``right``'s quad 2o. Where a thread holds both quads of each pair, register renaming."""
    _, left_odd = tl.split(tl.reshape(left, left.shape[:-1] + (left.shape[-1] // 2, 2)))
    right_even, _ = tl.split(tl.reshape(right, right.shape[:-1] + (right.shape[-1] // 2, 2)))
    return tl.reshape(tl.join(left_odd, right_even), left.shape)


@triton.jit
def _paired_window(ptr, NV: tl.constexpr, ACC: tl.constexpr):
    """:func:`_window` for an odd NV over quads that come in horizontal pairs (quad 2o + 1 starts 4
    pixels right of quad 2o: tile rows a multiple of 8 pixels wide), loading only the even vectors:
    vector m (odd) of quad 2o is vector m - 1 of quad 2o + 1, and of quad 2o + 1 vector m + 1 of quad
    2o. Each distinct vector is loaded and converted once by construction, and where a thread holds
    a pair (8 contiguous pixels: half precision on sm_90) the neighbour's vectors are its own
    registers; ptxas merges the repeated loads of :func:`_window` under triton 3.9's version but not
    3.6's (+50% window loads in half precision)."""
    even = ()
    for n in tl.static_range(0, NV, 2):
        even = even + (_quad_split(tl.load(ptr + 4 * n).to(ACC)),)
    values = even[0]
    for n in tl.static_range(1, (NV + 1) // 2):
        left, right = even[n - 1], even[n]
        values = values + (_next_quads(left[0], right[0]), _next_quads(left[1], right[1]),
                           _next_quads(left[2], right[2]), _next_quads(left[3], right[3])) + right
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
def _program_areas(taps_ptr, stage_ptr, TAP_PLANE: tl.constexpr, KK: tl.constexpr, P: tl.constexpr, TW: tl.constexpr,
                   RD: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr, BLOCK_C: tl.constexpr):
    """Of the forward, d(x) and fold programs: the program id, the tile's pixel indices (P), this
    program's tap scratch (KK planes of TAP_PLANE pixels: the tile's, or its halo's) and its staging
    area (:func:`_staging_area`: area, window starts, their pointers per channel)."""
    pid = tl.program_id(0)
    i = tl.arange(0, P)
    stage, here, staged = _staging_area(stage_ptr, pid, i, TW, RD, HALO_W, HALO, BLOCK_C)
    return pid, i, taps_ptr + pid.to(tl.int64) * (KK * TAP_PLANE), stage, here, staged


@triton.jit
def _filter_row(accs, u, staged, taps, here, i, FORWARD: tl.constexpr, P: tl.constexpr, HALO: tl.constexpr,
                KSIZE: tl.constexpr, DIL: tl.constexpr, WPAD: tl.constexpr, HALO_W: tl.constexpr, ACC: tl.constexpr,
                PAIRED: tl.constexpr):
    """Tap row u (a constexpr when the rows are unrolled, else a loop index) of :func:`_filter_block`
    added to its four accumulators: the row's window of the staged block (PAIRED: by
    :func:`_paired_window`) and its k taps."""
    R: tl.constexpr = KSIZE // 2
    SIGN: tl.constexpr = 1 if FORWARD else -1
    window = staged + SIGN * (u - R) * DIL * HALO_W
    if PAIRED:
        values = _paired_window(window, 1 + 2 * WPAD // 4, ACC)
    else:
        values = _window(window, 1 + 2 * WPAD // 4, ACC)
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
    The k taps of a row are unrolled; the k rows too, or (ROW_LOOP, large k) a loop over them.
    Half inputs (8-byte vectors: a thread holds pairs of quads) read the unrolled rows' windows
    paired; float32 (16-byte vectors, a quad a thread) and the row loop (where pairing kept 24
    bytes of bfloat16 on the stack at k = 15, sm_90) do not."""
    zero = tl.zeros((BLOCK_C, P // 4), ACC)
    accs = (zero, zero, zero, zero)
    if ROW_LOOP:
        for u in range(KSIZE):
            accs = _filter_row(accs, u, staged, taps, here, i, FORWARD, P, HALO, KSIZE, DIL, WPAD, HALO_W, ACC,
                               False)
    else:
        for u in tl.static_range(KSIZE):
            accs = _filter_row(accs, u, staged, taps, here, i, FORWARD, P, HALO, KSIZE, DIL, WPAD, HALO_W, ACC,
                               staged.dtype.element_ty.primitive_bitwidth == 16)
    return accs
