"""The time model of ``bench sass`` (:mod:`bench.sass`): the GPUs, every constant of the honest
estimate in one place, and the roofs of a kernel from its dynamic profile: issue (with the
occupancy factor and the barrier and wgmma-wait stalls), L1, L2 (:func:`l2_traffic`: the psf
launches' global traffic with the scratch round trips, in whole sectors), math, HBM (the launch's
own inputs and outputs); a pass's estimate
and binding roof (:func:`pass_estimate`)."""
from __future__ import annotations

WARP = 32

# Hopper as the estimate sees it: SMs, sustained clock, HBM bandwidth, peaks (dense) in TFLOP/s,
# L2 bandwidth in TB/s, and the per-SM limits that decide how many programs are resident.
# l2_tbs: the L2 read bandwidth that public microbenchmarks of the H100 SXM report (about 5.5 TB/s,
# well under the L2's nominal peak); the H200 has the same GH100 die, L2 and clocks. Stores are
# assumed to go at the same rate.
GPUS = {
    "H100": dict(sms=132, clock_ghz=1.755, hbm_tbs=3.35, l2_tbs=5.5, fp32_tflops=67.0,
                 tensor_tflops={"tf32": 495.0, "bf16": 990.0, "f16": 990.0}),
    "H200": dict(sms=132, clock_ghz=1.755, hbm_tbs=4.8, l2_tbs=5.5, fp32_tflops=67.0,
                 tensor_tflops={"tf32": 495.0, "bf16": 990.0, "f16": 990.0}),
}

# ---- the honest model: every constant in one place -----------------------------------------
SCHEDULERS = 4            # warp schedulers per SM; each issues one warp-instruction per clock
L1_BYTES_PER_CLOCK = 128  # per SM: LSU/L1 data path, loads and stores alike
SECTOR = 32               # bytes: the L2's access granularity; a partial sector costs a whole one
REGS_PER_SM = 65536       # 32-bit registers per SM
REG_ALLOC_WARP = 256      # registers are allocated per warp in units of 256 (8 per thread)
MAX_WARPS_PER_SM = 64
SMEM_PER_SM = 228 * 1024  # bytes of shared memory per SM (227 KB usable by one block)
HIDING_WARPS = 4          # resident warps per scheduler needed to hide ALU, shared-memory and L1
#                           latency: with fewer, the instruction-issue roof is divided by warps / HIDING_WARPS
BAR_SYNC_CYCLES = 24      # a CTA barrier (BAR.SYNC) when every warp arrives together: ~20-30
#                           cycles in public Volta..Hopper microbenchmarks; all of a program's warps
#                           wait at once, so one program's SM loses this once per barrier
WGMMA_WAIT_CYCLES = 128   # waiting on an in-flight wgmma group (WARPGROUP.DEPBAR.LE): the latency
#                           of a small dense wgmma (m64nNk16, N <= 128), ~100-130 cycles in public
#                           Hopper microbenchmarks; exposed because each wait comes right after
#                           its wgmma, with nothing independent in between
BARRIER_OPS = ("BAR.SYNC", "BAR.RED")        # CTA barriers that wait (BAR.ARV does not)
WGMMA_WAIT_OPS = ("WARPGROUP.DEPBAR",)       # the wait for a wgmma group's results
GLOBAL_OPS = ("LDG", "STG", "ATOMG", "RED", "LDGSTS")  # accesses that reach L2
LOAD_OPS = ("LDG", "LDS", "LDSM", "LDL", "LDGSTS")
STORE_OPS = ("STG", "STS", "STSM", "STL", "ATOMG", "RED")

def resident_programs(gpu: dict, num_warps: int, registers: int | None, shared_bytes: int, programs: int) -> int:
    """Programs of one launch resident on an SM at once: as many as the launch has per SM, within
    the SM's registers (allocated per warp in REG_ALLOC_WARP units), warps and shared memory."""
    per_warp = -(-(registers or 0) * WARP // REG_ALLOC_WARP) * REG_ALLOC_WARP
    limits = [-(-programs // gpu["sms"]), MAX_WARPS_PER_SM // num_warps]
    if per_warp:
        limits.append(REGS_PER_SM // (per_warp * num_warps))
    if shared_bytes:
        limits.append(SMEM_PER_SM // shared_bytes)
    return max(1, min(limits))


def roofs(profile: dict, gpu: dict, num_warps: int = 4, resident: int = 1, programs: int | None = None) -> dict:
    """The roofs (us) of one kernel on ``gpu``: issue (with the occupancy factor and the
    synchronisation stalls), L1 (loads and stores), L2, math, HBM (the launch's own inputs and
    outputs once: a pass's intermediates between its kernels count where written and where read);
    and the four-roof model's issue and L1 (``issue_4roof_us``, ``l1_4roof_us``). ``resident``
    programs of ``num_warps`` warps share an SM; ``programs`` (default: one per SM) run on
    min(programs, SMs) SMs."""
    clock = gpu["clock_ghz"] * 1e9
    math = profile["fp32_flops"] / (gpu["fp32_tflops"] * 1e12)
    for kind, flops in profile["tensor_flops"].items():
        math += flops / (gpu["tensor_tflops"][kind] * 1e12)
    issue = 1e6 * profile["warp_instructions"] / (gpu["sms"] * SCHEDULERS * clock)
    warps_per_scheduler = resident * num_warps / SCHEDULERS
    occupancy = min(1.0, warps_per_scheduler / HIDING_WARPS)
    sms_used = min(gpu["sms"], programs or gpu["sms"])
    stall_cycles = (profile.get("barriers", 0.0) * BAR_SYNC_CYCLES
                    + profile.get("wgmma_waits", 0.0) * WGMMA_WAIT_CYCLES)
    sync = 1e6 * stall_cycles / (sms_used * resident * clock)  # other resident programs fill the stall
    l1_bytes = profile["load_bytes"] + profile.get("store_bytes", 0.0)
    out = {"issue_4roof_us": issue,
           "l1_4roof_us": 1e6 * profile["load_bytes"] / (gpu["sms"] * L1_BYTES_PER_CLOCK * clock),
           "warps_per_scheduler": warps_per_scheduler, "occupancy": occupancy, "sync_us": sync,
           "issue_us": issue / occupancy + sync,
           "l1_us": 1e6 * l1_bytes / (gpu["sms"] * L1_BYTES_PER_CLOCK * clock),
           "l2_us": 1e6 * profile.get("l2_bytes", 0.0) / (gpu["l2_tbs"] * 1e12) if "l2_tbs" in gpu else 0.0,
           "math_us": 1e6 * math,
           "hbm_us": 1e6 * profile.get("hbm_bytes", 0.0) / (gpu["hbm_tbs"] * 1e12) if "hbm_tbs" in gpu else 0.0}
    return out


ROOFS = ("issue", "l1", "l2", "math", "hbm")


def binding_roof(k: dict, names=ROOFS) -> str:
    """The kernel's largest roof."""
    return max(names, key=lambda r: k[f"{r}_us"])


def _sectors(nbytes: float, offset: float = 0) -> float:
    """Bytes of the 32-byte sectors that a contiguous run of ``nbytes`` starting ``offset`` bytes
    into a sector touches (a partial sector costs a whole one)."""
    return SECTOR * -(-(offset % SECTOR + nbytes) // SECTOR)


def l2_traffic(kernel: str, args: dict) -> float | None:
    """Bytes between the SMs and L2 of one psf launch, from its launch arguments: every global
    load and store once (loads of the same bytes again within a tile are L1 hits: the staged
    block and the tap tile fit in L1), the scratch round trips included (the staged halo block
    written and read back, the tap tile written and read back per channel block; d(taps) writes
    its d(psf) tile once, or above k = 7 read-modifies-writes it per channel block), each
    contiguous run in whole 32-byte sectors (the halo rows start WPAD columns left of a
    32-byte-aligned tile column). None for a kernel without such a model (then the L2 roof counts
    every global access of the SASS)."""
    if kernel not in ("_psf_fwd_kernel", "_psf_dx_kernel", "_psf_dk_kernel", "_synthesize_fwd_kernel",
                      "_synthesize_bwd_kernel"):
        return None
    tiles, J, th, tw, k = args["n_tiles"], args.get("J"), args["TH"], args["TW"], args["KSIZE"]
    kk, P = k * k, th * tw
    if kernel.startswith("_synthesize"):
        es = args["w_ptr"].element_size()
        moved = kk * th * _sectors(tw * es) + J * th * _sectors(tw * es)  # psf (or d(psf)) and weights
        if kernel == "_synthesize_bwd_kernel" and args.get("NEED_DW"):
            moved += J * th * _sectors(tw * es)
        return tiles * moved
    es = args["x_ptr" if "x_ptr" in args else "dy_ptr"].element_size()  # the staged input's
    C, bc, halo_rows, halo_w = args["C"], args["BLOCK_C"], th + 2 * args["RD"], args["HALO_W"]
    blocks = -(-C // bc)
    halo_src = bc * halo_rows * _sectors(halo_w * es, -args["WPAD"] * es)   # a channel block's halo, read
    staged = bc * _sectors(args["HALO"] * args["stage_ptr"].element_size())  # written, then read back once
    plane = bc * th * _sectors(tw * es)                                      # a channel block of the tile
    if kernel == "_psf_dk_kernel":  # x staged, dy read; the tile's d(psf) planes written once with
        # the sums held over all channels, or read-modify-written per channel block (the row loop, large k)
        dpsf = kk * th * _sectors(tw * args["dpsf_ptr"].element_size())
        return tiles * (blocks * (halo_src + 2 * staged + plane) + (2 * blocks - 1 if args["ROW_LOOP"] else 1) * dpsf)
    acc, src_es = args["taps_ptr"].element_size(), args["src_ptr"].element_size()
    src_planes = J if args["SYNTH"] else kk  # weights (synthesis) or the psf's taps
    if kernel == "_psf_fwd_kernel":
        taps = kk * _sectors(P * acc)
        per_tile = src_planes * th * _sectors(tw * src_es) + taps + blocks * (halo_src + 2 * staged + taps + plane)
    else:  # d(x): the taps of the tile's halo synthesized (or copied) into scratch
        taps = kk * _sectors(args["HALO"] * acc)
        src = src_planes * halo_rows * _sectors(halo_w * src_es, -args["WPAD"] * src_es)
        per_tile = src + taps + blocks * (halo_src + 2 * staged + taps + plane)
    return tiles * per_tile


def pass_estimate(kernels, hbm_us: float, suffix: dict) -> tuple[float, str]:
    """(estimate us, binding roof) of a pass: max(sum over kernels of their largest roof, HBM).
    ``suffix``: roof -> the key suffix of its time in the kernel records (the four-roof model
    reads ``issue_4roof_us`` ...)."""
    total = sum(max(k[f"{r}{sfx}"] for r, sfx in suffix.items()) for k in kernels)
    if hbm_us >= total:
        return hbm_us, "hbm"
    sums = {r: sum(k[f"{r}{sfx}"] for k in kernels) for r, sfx in suffix.items()}
    return total, max(sums, key=sums.get)
