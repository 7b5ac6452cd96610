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

This module holds the launch plans and the launchers; the kernels are in :mod:`kernels.psf_kernels`,
their shared jit helpers in :mod:`kernels.psf_tiles`. Three launchers serve every psf op and its
gradients: :func:`filter_forward` (the gather form, ``_psf_fwd_kernel``), :func:`filter_scatter`
(its adjoint, the d(x) kernel) and :func:`tap_grads` (``_psf_dk_kernel``, then
``_synthesize_bwd_kernel`` for psf_conv). psf_conv_transpose's forward is the scatter; its
gradients are the gather (for its input) and the tap gradients with the roles of x and dy
swapped. A padding mode other than zeros is applied where the gather kernels stage their input
(the indices remapped, ``_source``); the scatter folds what it spreads outside the image back
onto the pixels the padding copies there, in a second kernel over the border tiles
(``_psf_fold_kernel``).

Work layout. Every kernel runs a persistent grid (:data:`PROGRAMS_PER_SM` programs per SM; a fixed
tile order: program ``pid`` takes tiles pid, pid + programs, ...). A tile is TH x TW pixels of one
image (TW contiguous columns; :data:`GPU_SHAPES`) and all its channels, BLOCK_C at a time (on the GPU
a power of two chosen from C, :func:`channel_block`: C=40 takes 16-channel blocks, not 64).

- Quads: a thread holds aligned runs of 4 contiguous pixels (``_quad_split``), so one 16-byte
  vector load brings a quad's values and a tap row of width k is read as a few aligned windows
  reused across its k horizontal taps (registers, not reloads). In half precision a thread holds
  two adjacent quads, whose windows share all but one vector: the tap loops load each vector once
  (``_paired_window``) rather than leave the repeats for ptxas to merge (triton 3.9's does, 3.6's
  does not: +50% window loads and conversions, a bfloat16 forward estimated at 61 us instead of 54).
  Outputs are stored as whole quads (the four accumulators joined back into the pixel axis): one
  16-byte (float32) or 8-byte (half) store per quad where W % 4 == 0 (``QUAD``: the kernels then
  tell the compiler the rows are 4-aligned); other widths store pixel by pixel (their rows are not
  aligned in memory).
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

from ._common import acc_dtype, dot_mode, gradient_buffers, torch_acc_dtype
from .launch import gpu_plans, launcher, sm_count
from .psf_kernels import (_psf_dk_kernel, _psf_dx_kernel, _psf_fold_kernel, _psf_fwd_kernel, _synthesize_bwd_kernel,
                          _synthesize_fwd_kernel)


# --------------------------------------------------------------------------------------------
# launch plans and launchers (inputs already checked by psfops; here: layout, allocation, grid)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Launch shape of one psf kernel: TH x TW pixel tiles (TW a multiple of 8: pairs of quads),
    channels per block, basis kernels per block (and blocks), halo pixels per staging step and per
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

    def __post_init__(self):
        if self.TW % 8:
            raise ValueError(f"tile width TW={self.TW} must be a multiple of 8 (pairs of quads)")

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
