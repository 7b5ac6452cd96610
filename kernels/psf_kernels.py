"""The psf kernels: the gather (``_psf_fwd_kernel``), its adjoint (``_psf_dx_kernel``, and the
padding fold ``_psf_fold_kernel``), the tap gradients (``_psf_dk_kernel``) and the synthesis and
its backward (``_synthesize_fwd_kernel``, ``_synthesize_bwd_kernel``), each with the helpers only
it uses. Launched by :mod:`kernels.psf`, whose docstring gives the design."""
from __future__ import annotations

import triton
import triton.language as tl

from .psf_tiles import (_channel_rows, _filter_block, _mix_basis, _plane, _plane_width, _program_areas, _quad_join,
                        _quad_split, _source, _stage_halo, _staging_area, _store_quads, _store_taps, _tap_row_grads,
                        _tile_basis_grads, _tile_origin, _tile_pixels, _window, _window_taps)


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
    W, HW = _plane_width(H, W, QUAD)
    pid, i, taps, stage, here, staged = _program_areas(taps_ptr, stage_ptr, P, KK, P, TW, RD, HALO_W, HALO, BLOCK_C)
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
    W, HW = _plane_width(H, W, QUAD)
    pid, i, taps, stage, here, staged = _program_areas(taps_ptr, stage_ptr, HALO, KK, P, TW, RD, HALO_W, HALO,
                                                       BLOCK_C)
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
    W, HW = _plane_width(H, W, QUAD)
    pid, i, taps, stage, here, staged = _program_areas(taps_ptr, stage_ptr, HALO, KK, P, TW, RD, HALO_W, HALO,
                                                       BLOCK_C)
    cl = tl.arange(0, BLOCK_C)
    owner = fold_ptr + pid.to(tl.int64) * ((C + BLOCK_C - 1) // BLOCK_C + 1) * (BLOCK_C * P)
    band = owner + (C + BLOCK_C - 1) // BLOCK_C * (BLOCK_C * P)
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
    W, HW = _plane_width(H, W, QUAD)
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
