"""Static analysis of the psf kernels' sm_90 SASS, and a time estimate, without a GPU.

    python -m bench sass [--dtypes float32,bfloat16] [--gpus H100,H200] [--json OUT]

How. The psf ops (psf_conv, psf_conv_transpose, synthesize_psf, apply_psf; their usual use: zeros
padding, one basis), forward and backward, run at the headline
shape (B8 C64 128x128 J40 k7) on CPU tensors with every Triton launch recorded instead of run
(``bench.sm90.recording_launches``) and the GPU's launch plan (its tile shapes, one program per
SM). Each distinct launch is compiled for sm_90 with triton's own compiler; ``nvdisasm -g``
(shipped inside triton) gives the SASS with the source line of every instruction.

Dynamic instruction counts: a backward branch closes a loop; its source loop is the ``for``
statement on the line of the branch (or of the nearest instruction before it on such a line),
and its trip count follows from the launch arguments: ``tile`` (the persistent tile loop) runs
n_tiles times over all programs, ``c0`` C/BLOCK_C, ``jb`` the J blocks,
``chunk0`` the staging chunks, ``pix0`` the synthesis chunks, ``epi0`` the epilogue chunks, ``u``
the tap rows and ``t0`` the tap blocks of a product (loops for large k);
``tl.static_range`` loops are unrolled and count once per copy. Every instruction counts once per
warp per execution of the loops around it.

Roofs per kernel, per GPU (:data:`GPUS`; every constant of the model is named in one block of
:mod:`bench.sass_model`):
    issue = dynamic warp-instructions / (SMs x 4 per clock x clock), divided by the occupancy factor
            min(1, resident warps per scheduler / HIDING_WARPS), plus the synchronisation stalls:
            each BAR.SYNC a program executes stalls its SM for BAR_SYNC_CYCLES, each wgmma wait
            (WARPGROUP.DEPBAR) for WGMMA_WAIT_CYCLES, hidden only by other resident programs
    L1    = bytes the loads and stores move through the SM (global and shared, width x 32 lanes) /
            (SMs x 128 B per clock x clock)
    L2    = bytes between the SMs and L2 / the L2 bandwidth: for the psf kernels every global load
            and store once, the scratch round trips included (staged halos and tap tiles go through
            global memory), each contiguous run in whole 32-byte sectors (:func:`l2_traffic`; loads
            of the same bytes again within a tile are taken as L1 hits); for other kernels every
            global access of the SASS in whole sectors (``l2_bytes_every_access``, also recorded
            for the psf kernels: the bound if L1 kept nothing)
    math  = FMA/FADD/FMUL FLOPs / the CUDA-core fp32 peak + tensor-core FLOPs (HGMMA/HMMA shapes) /
            that dtype's tensor peak
    HBM   = per kernel, its own tensors beyond work areas once (inputs, outputs, and a pass's
            intermediates, such as d(taps)' d(psf) that the synthesize backward reads) / bandwidth;
            per pass, the pass's fewest bytes (each input read once, each output written once)
A pass's estimate is max(sum over its kernels of max(issue, L1, L2, math, HBM), pass HBM); ``binding`` names
the roof that sets it (the largest of the roofs summed over the pass's kernels, or hbm), and each
kernel record names its own. Every record also keeps the earlier four-roof estimate
(``estimate_4roof_us``, ``binding_4roof``: issue without occupancy or stalls, L1 of loads only, no
L2 roof), the "before" of RESULTS.md. ``scratch_bytes``: the device memory of the kernels' work
areas (per-program taps and staged halos, d(basis) partials) beyond inputs, outputs and gradients,
the largest of the pass's kernels (each frees its own). These are static estimates, not
measurements: they still ignore cache misses beyond the HBM floor, memory latency beyond what the
occupancy factor stands for, barrier skew (warps arriving at different times), masked-off lanes
(counted as active) and the overlap between kernels.
"""
from __future__ import annotations

import argparse
import ast
import collections
import functools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from . import sm90
from .cases import HEADLINE, min_bytes
from .sass_model import (BAR_SYNC_CYCLES, BARRIER_OPS, GLOBAL_OPS, GPUS, HIDING_WARPS, LOAD_OPS, ROOFS, SECTOR,
                         STORE_OPS, WARP, WGMMA_WAIT_CYCLES, WGMMA_WAIT_OPS, binding_roof, l2_traffic,
                         pass_estimate, resident_programs, roofs)

PSF_OPS = ("psf_conv", "psf_conv_transpose", "synthesize_psf", "apply_psf")

_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_\w+):")
_MMA = re.compile(r"^[HQ]?GMMA\.(\d+)x(\d+)x(\d+)\.|^HMMA\.(\d)(\d)(\d+)\.")
# loop variable of a `for ... in range(...)` in the kernels -> its executions, from launch arguments
TRIPS = {
    "c0": lambda a: -(-a["C"] // a["BLOCK_C"]),
    "c": lambda a: a["C"] / -(-a["C"] // a["BLOCK_C"]),  # d(taps)' channels of a block (C over the blocks)
    "v0": lambda a: -(-a["KSIZE"] // a["TAP_GROUP"]),  # d(taps)' tap groups of a row (one up to k = 7)
    "jb": lambda a: a["NUM_JB"],
    "chunk0": lambda a: a["HALO_PAD"] // a["HALO_CHUNK"],
    "epi0": lambda a: a["TH"] * a["TW"] // a["EPILOGUE"],
    "t0": lambda a: a["KK_PAD"] // a["KB"],  # the tap blocks of a product, one (no loop) up to k = 7
    "u": lambda a: a["KSIZE"],  # the tap rows, a loop above kernels.psf.UNROLLED_K
    # the synthesis products of a tile's taps (the forward: its pixels) or of its halo's (d(x))
    "pix0": lambda a: -(-(a["HALO"] if "dx_ptr" in a else a["TH"] * a["TW"]) // a["SYNTH_CHUNK"]),
}


def _source_path(path: str) -> Path:
    """The file to read a listing's source lines from: the kernels of this checkout. (Triton's cache
    is keyed by the kernels' source and line numbers, not their path, so a cubin may name another
    clone's file, whose text may have changed since: the imported kernels' file has the lines the
    cache key vouches for.)"""
    import psfops.kernels
    ours = Path(psfops.kernels.__file__).parent / Path(path).name
    return ours if Path(path).parent.name == "kernels" and ours.exists() else Path(path)


@functools.lru_cache(maxsize=None)
def _for_lines(path: str) -> dict[int, str]:
    """Line -> loop variable of every runtime ``for v in range(...)`` in a source file (static_range
    loops are unrolled by the compiler and are left out)."""
    loops = {}
    for node in ast.walk(ast.parse(_source_path(path).read_text())):
        if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
                and getattr(node.iter.func, "id", None) == "range" and isinstance(node.target, ast.Name)):
            loops[node.lineno] = node.target.id
    return loops


def _tool(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def disassemble(cubin: bytes) -> list[tuple[int, str, str, tuple[str, int]]]:
    """(address, opcode, operands, (source file, line)) of every SASS instruction; branch targets
    in the operands are written as addresses (``0x...``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("nvdisasm"), "-g", "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    return parse_listing(text)


def parse_listing(text: str) -> list[tuple[int, str, str, tuple[str, int]]]:
    """:func:`disassemble` of an ``nvdisasm -g -c`` listing (its text)."""
    out, line, path, labels, pending = [], 0, "", {}, []
    for raw in text.splitlines():
        if m := _LINE.search(raw):
            path, line = m.group(1), int(m.group(2))
        elif m := _LABEL.match(raw.strip()):
            pending.append(m.group(1))
        elif m := _INSTR.search(raw):
            addr = int(m.group(1), 16)
            labels.update((name, addr) for name in pending)
            pending = []
            out.append((addr, m.group(2), m.group(3), (path, line)))
    label = re.compile(r"`?\((\.L_\w+)\)")
    return [(a, op, label.sub(lambda m: hex(labels[m.group(1)]), rest), src) for a, op, rest, src in out]


def loops(instrs) -> list[tuple[int, int, str | None]]:
    """(first address, address of the closing backward branch, source loop variable or None) of
    every loop: a backward branch closes a loop; its source loop is the ``for`` statement on the
    line of the branch, or of the nearest instruction before it on such a line."""
    out = []
    for k, (addr, op, rest, _) in enumerate(instrs):
        target = re.search(r"0x([0-9a-f]+)", rest)
        if not op.startswith("BRA") or not target or int(target.group(1), 16) >= addr:
            continue  # (a branch to itself is the trap after the kernel's exit)
        start, var = int(target.group(1), 16), None
        for back in range(k, -1, -1):  # the loop's own line: the branch's, or the nearest before it
            path, line = instrs[back][3]
            var = _for_lines(path).get(line) if path else None
            if var or instrs[back][0] < start:
                break
        out.append((start, addr, var))
    return out


def barrier_counts(instrs) -> dict:
    """Static counts of the CTA barriers (``BAR.SYNC``) of a kernel's SASS: ``total``,
    ``in_loops`` (inside any loop), ``inner`` (inside a loop other than the persistent ``tile``
    loop: the channel-block, tap, staging, J-block and epilogue loops, where each barrier runs
    many times per tile; that is, inside two nested loops, or inside one loop that the source
    names and that is not ``tile``), and ``by_loop``: per source loop variable, the barriers anywhere inside that loop
    (nested loops included; ``?`` for a loop with no source ``for``)."""
    bars = [addr for addr, op, _, _ in instrs if op.startswith(BARRIER_OPS)]
    found = loops(instrs)
    by_loop = collections.Counter()
    in_loops = inner = 0
    for addr in bars:
        around = sorted((e - s, var) for s, e, var in found if s <= addr <= e)
        for var in {var or "?" for _, var in around}:
            by_loop[var] += 1
        if around:
            in_loops += 1
            if len(around) >= 2 or around[0][1] not in (None, "tile"):
                inner += 1
    return {"total": len(bars), "in_loops": in_loops, "inner": inner, "by_loop": dict(by_loop)}


def loop_multipliers(instrs, args: dict, programs: int) -> list[float]:
    """Executions per warp, over all programs, of each instruction: ``programs`` times the trip
    counts of the loops around it (the tile loop: n_tiles / programs per program)."""
    trips = {**TRIPS, "tile": lambda a: a["n_tiles"] / programs}
    mult = [float(programs)] * len(instrs)
    for start, addr, var in loops(instrs):
        if var not in trips:
            raise RuntimeError(f"cannot tell which source loop the branch at {addr:#x} closes ({var})")
        n = trips[var](args)
        for i, ins in enumerate(instrs):
            if start <= ins[0] <= addr:
                mult[i] *= n
    return mult


def _bytes_per_thread(op: str) -> int:
    for width, nbytes in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if width in op:
            return nbytes
    return 4


def _mma_flops(op: str) -> tuple[float, str] | None:
    """(FLOPs per warp execution, operand type) of a tensor-core instruction, else None. HGMMA is
    issued by the 4 warps of a warpgroup together: its M x N x K is shared among them."""
    m = _MMA.match(op)
    if not m:
        return None
    kind = "tf32" if ".TF32" in op else ("bf16" if ".BF16" in op else "f16")
    if m.group(1):
        return 2.0 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) / 4, kind
    return 2.0 * int(m.group(4)) * int(m.group(5)) * int(m.group(6)), kind


def _warp_bytes(op: str) -> int:
    """Bytes one warp's access moves (32 lanes; ldmatrix/stmatrix .4: 16 bytes a lane)."""
    base = op.split(".")[0]
    return WARP * _bytes_per_thread(op) * (4 if base in ("LDSM", "STSM") else 1)


def kernel_profile(instrs, mult, num_warps: int) -> dict:
    """Dynamic counts (all warps of all programs) by opcode class, bytes loaded and stored through
    L1, bytes to and from L2 (whole sectors), FLOPs; and the synchronisation events (per program,
    summed over programs): barriers and wgmma waits."""
    ops = collections.Counter()
    load_bytes = store_bytes = l2_bytes = fp32_flops = barriers = wgmma_waits = 0.0
    tensor = collections.Counter()
    tensor_instr = 0
    for (addr, op, rest, _), n in zip(instrs, mult):
        if op.startswith(BARRIER_OPS):
            barriers += n  # every warp of the program executes it once per event
        elif op.startswith(WGMMA_WAIT_OPS):
            wgmma_waits += n
        n *= num_warps
        base = op.split(".")[0]
        ops[base] += n
        if base in LOAD_OPS:
            load_bytes += n * _warp_bytes(op)
        elif base in STORE_OPS:
            store_bytes += n * _warp_bytes(op)
        if base in GLOBAL_OPS:  # a warp's access in whole sectors (contiguous lanes assumed)
            l2_bytes += n * SECTOR * -(-_warp_bytes(op) // SECTOR)
        if base in ("FFMA",):
            fp32_flops += 2 * n * WARP
        elif base in ("FADD", "FMUL"):
            fp32_flops += n * WARP
        mma = _mma_flops(op)
        if mma:
            tensor[mma[1]] += mma[0] * n
            tensor_instr += n
    return {"warp_instructions": sum(ops.values()), "by_opcode": dict(ops.most_common()),
            "load_bytes": load_bytes, "store_bytes": store_bytes, "l2_bytes": l2_bytes,
            "barriers": barriers, "wgmma_waits": wgmma_waits,
            "fp32_flops": fp32_flops, "tensor_flops": dict(tensor),
            "tensor_core_instructions": tensor_instr,
            "static_tensor_core_instructions": sum(1 for _, op, _, _ in instrs if _mma_flops(op))}


def record_pass_launches(op: str, pass_: str, dtype: torch.dtype, shape, sms: int) -> list:
    """The Triton launches of ``op``'s forward (``pass_`` "fwd") or backward ("bwd") at ``shape``."""
    from psfops.testing import OPS, backward_args

    info = OPS[op]
    sample = info.samples(shape, dtype, "cpu")[0]
    with sm90.recording_launches(sms) as launches:
        args = backward_args(info, sample)
    fwd = list(launches)  # backward_args runs the forward once
    with sm90.recording_launches(sms) as launches:
        info.backward(*args)
    bwd = list(launches)
    return fwd if pass_ == "fwd" else bwd


_COMPILED: dict = {}


def compile_launch(fn, args, kwargs) -> dict:
    """One recorded launch compiled for sm_90 (once per distinct specialization): its argument
    values, warps, programs, SASS and resources (registers, stack)."""
    signature, constexprs, options = sm90._signature(fn, args, dict(kwargs))
    key = (fn, tuple(signature.items()), repr(sorted(constexprs.items())), repr(options),
           repr(sorted(sm90._divisibility(fn, args, kwargs))))
    if key not in _COMPILED:
        compiled = sm90.compile_launch(fn, args, kwargs)
        cubin = compiled.asm["cubin"]
        resources = sm90._resource_usage(cubin)
        # the launch's shared memory: triton's dynamic allocation (cuobjdump shows the static part)
        resources["shared"] = max(resources.get("shared", 0), int(getattr(compiled.metadata, "shared", 0) or 0))
        _COMPILED[key] = (disassemble(cubin), resources)
    instrs, resources = _COMPILED[key]
    values = {**dict(zip(fn.arg_names, args)), **constexprs}
    return {"kernel": fn.__name__, "args": values, "num_warps": options.get("num_warps", 4),
            "programs": kwargs["grid"][0], "instrs": instrs, **resources}


def analyse(dtype: torch.dtype, shape=None, gpus=GPUS) -> list[dict]:
    """One record per psf op, pass (fwd, bwd, fwd+bwd) and GPU at ``shape`` (default: headline)."""
    from psfops.testing import OPS, Shape

    shape = shape or Shape(**{k: v for k, v in HEADLINE.items() if k != "op"}, W=HEADLINE["H"])
    records = []
    for gpu_name, gpu in gpus.items():
        for op in PSF_OPS:
            kernels = {}
            for pass_ in ("fwd", "bwd"):
                kernels[pass_] = []
                for fn, args, kwargs in record_pass_launches(op, pass_, dtype, shape, gpu["sms"]):
                    launch = compile_launch(fn, args, kwargs)
                    prof = kernel_profile(launch["instrs"], loop_multipliers(launch["instrs"], launch["args"],
                                                                             launch["programs"]),
                                          launch["num_warps"])
                    prof["l2_bytes_every_access"] = prof["l2_bytes"]
                    prof["hbm_bytes"] = io_bytes(fn, args)
                    modelled = l2_traffic(launch["kernel"], launch["args"])
                    if modelled is not None:
                        prof["l2_bytes"] = modelled
                    resident = resident_programs(gpu, launch["num_warps"], launch.get("reg"),
                                                 launch.get("shared", 0), launch["programs"])
                    k = {"kernel": launch["kernel"], "programs": launch["programs"],
                         "num_warps": launch["num_warps"], "registers": launch.get("reg"),
                         "shared_bytes": launch.get("shared", 0), "resident_programs": resident,
                         "spill_bytes": launch.get("stack", 0), "barrier_sites": barrier_counts(launch["instrs"]),
                         "scratch_bytes": scratch_bytes(fn, args, kwargs), **prof,
                         **roofs(prof, gpu, launch["num_warps"], resident, launch["programs"])}
                    k["binding"] = binding_roof(k)
                    kernels[pass_].append(k)
            kernels["fwd+bwd"] = kernels["fwd"] + kernels["bwd"]
            sample = OPS[op].samples(shape, dtype, "meta")[0]
            outs = OPS[op].reference(*sample.args)  # on the meta device: only the sizes matter
            floors = {p: min_bytes(sample.tensors, outs if isinstance(outs, tuple) else (outs,), p)
                      for p in ("fwd", "fwd+bwd")}
            floors["bwd"] = floors["fwd+bwd"] - floors["fwd"]
            for pass_, ks in kernels.items():
                records.append(_pass_record(op, pass_, dtype, gpu_name, gpu, shape, ks, floors[pass_]))
    return records


SCRATCH_ARGS = ("taps_ptr", "stage_ptr", "part_ptr")  # the psf kernels' work areas, beyond inputs and outputs


def scratch_bytes(fn, args, kwargs) -> int:
    """Device memory of a launch's work areas (per-program taps, staged halos, d(basis) partials;
    without NEED_DBASIS the partials argument is a placeholder pointer, not a work area)."""
    used = [n for n in SCRATCH_ARGS if n != "part_ptr" or kwargs.get("NEED_DBASIS", False)]
    return sum(a.numel() * a.element_size() for name, a in zip(fn.arg_names, args)
               if name in used and isinstance(a, torch.Tensor))


def io_bytes(fn, args) -> int:
    """Bytes of a launch's tensors beyond its work areas (inputs, outputs, a pass's intermediates),
    each tensor once: what the launch moves to or from HBM at the least."""
    seen = {}
    for name, a in zip(fn.arg_names, args):
        if isinstance(a, torch.Tensor) and name not in SCRATCH_ARGS:
            seen[(a.data_ptr(), a.numel())] = a.numel() * a.element_size()
    return sum(seen.values())


KERNEL_FIELDS = ("kernel", "programs", "num_warps", "registers", "shared_bytes", "resident_programs",
                 "warps_per_scheduler", "occupancy", "spill_bytes", "scratch_bytes", "warp_instructions",
                 "load_bytes", "store_bytes", "l2_bytes", "l2_bytes_every_access", "hbm_bytes", "barriers", "wgmma_waits", "barrier_sites",
                 "issue_4roof_us", "l1_4roof_us", "sync_us", "issue_us", "l1_us", "l2_us", "math_us", "hbm_us", "binding",
                 "tensor_core_instructions")


def _pass_record(op, pass_, dtype, gpu_name, gpu, shape, kernels, floor_bytes) -> dict:
    hbm_us = 1e6 * floor_bytes / (gpu["hbm_tbs"] * 1e12)
    total, binding = pass_estimate(kernels, hbm_us, {r: "_us" for r in ROOFS})
    before, binding_before = pass_estimate(kernels, hbm_us, {"issue": "_4roof_us", "l1": "_4roof_us", "math": "_us"})
    import triton

    import psfops
    return {"op": op, "pass": pass_, "dtype": str(dtype).replace("torch.", ""), "gpu": gpu_name,
            "triton": triton.__version__, "psfops": psfops.__version__,
            "B": shape.B, "C": shape.C, "H": shape.H, "W": shape.W, "J": shape.J, "k": shape.k,
            "estimate_us": total, "hbm_floor_us": hbm_us, "binding": binding,
            "estimate_4roof_us": before, "binding_4roof": binding_before,
            "l2_bytes": sum(k["l2_bytes"] for k in kernels),
            "roof_sums_us": {r: sum(k[f"{r}_us"] for k in kernels) for r in ROOFS},
            "tensor_core_instructions": sum(k["static_tensor_core_instructions"] for k in kernels),
            "spill_bytes": sum(k["spill_bytes"] for k in kernels),
            # kernels run one after another, each freeing its work areas: the pass needs the largest
            "scratch_bytes": max(k["scratch_bytes"] for k in kernels),
            "kernels": [{key: k[key] for key in KERNEL_FIELDS} for k in kernels]}


STATIC_DIR = Path(__file__).parent / "results" / "static"


STATIC_PREAMBLE = (
    "Before: the four-roof estimate (issue at full rate, L1 bytes of the loads, math, HBM floor), a "
    "lower bound. After: the honest estimate of the same SASS: issue divided by the occupancy factor "
    f"min(1, resident warps per scheduler / {HIDING_WARPS}) plus {BAR_SYNC_CYCLES} cycles per CTA barrier "
    f"(BAR.SYNC) and {WGMMA_WAIT_CYCLES} per wgmma wait (WARPGROUP.DEPBAR) of each program; L1 with the "
    "stores; an L2 roof (every global load and store once, the scratch round trips of the staged halos "
    f"and tap tiles included, in whole {SECTOR}-byte sectors, at {GPUS['H100']['l2_tbs']} TB/s); math; "
    "HBM per kernel (its own inputs, outputs and intermediates once) and per pass (the floor). Static "
    "estimates from instruction counts, not measurements.")


def static_table(paths=None, gpu: str = "H100") -> list[str]:
    """Markdown: the static estimates of the records files (default: bench/results/static), for
    each (psfops, triton) version the four-roof estimate ("before") and, where the records have
    it, the honest one ("after"), psf ops by pass and dtype, as x the HBM floor, binding roof named."""
    paths = sorted(Path(p) for p in (paths or STATIC_DIR.glob("sass-*.json")))
    runs = {}
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            if r["gpu"] == gpu:
                runs.setdefault((r["psfops"], r["triton"]), {})[(r["op"], r["pass"], r["dtype"])] = r
    if not runs:
        return []
    versions = sorted(runs)
    honest = {v for v in versions if any("estimate_4roof_us" in r for r in runs[v].values())}
    heads = []
    for v, t in versions:
        heads.append(f"psfops {v} (triton {t}) before")
        if (v, t) in honest:
            heads.append(f"psfops {v} (triton {t}) after")
    lines = [STATIC_PREAMBLE, "", "| op | pass | dtype | HBM floor us | " + " | ".join(heads) + " |",
             "|---|---|---|---|" + "---|" * len(heads)]

    def cell(us, floor, binding, spills):
        return f"{us:.0f} us ({us / floor:.1f}x, {binding}{', spills' if spills else ''})"

    for key in sorted({k for run in runs.values() for k in run}, key=lambda k: (PSF_OPS.index(k[0]),
                                                                                 ("fwd", "bwd", "fwd+bwd").index(k[1]),
                                                                                 k[2])):
        floor = next(run[key]["hbm_floor_us"] for run in runs.values() if key in run)
        cells = []
        for v in versions:
            r = runs[v].get(key)
            if r is None:
                cells += ["-"] * (2 if v in honest else 1)
                continue
            if "estimate_4roof_us" in r:
                cells.append(cell(r["estimate_4roof_us"], floor, r["binding_4roof"], r["spill_bytes"]))
            else:
                cells.append(cell(r["estimate_us"], floor, r["binding"], r["spill_bytes"]))
            if v in honest:
                cells.append("-" if "estimate_4roof_us" not in r else
                             cell(r["estimate_us"], floor, r["binding"], r["spill_bytes"]))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {floor:.1f} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sass", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--gpus", default=",".join(GPUS))
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    a = p.parse_args(argv)
    import triton
    gpus = {g: GPUS[g] for g in a.gpus.split(",")}
    records = []
    for name in a.dtypes.split(","):
        records += analyse(getattr(torch, name), gpus=gpus)
    print(f"static estimate (not a measurement): triton {triton.__version__}, sm_90, shape "
          f"B{HEADLINE['B']} C{HEADLINE['C']} {HEADLINE['H']}x{HEADLINE['H']} J{HEADLINE['J']} k{HEADLINE['k']}")
    print(f"{'op':15} {'pass':8} {'dtype':9} {'gpu':5} {'before us':>9} {'(binding)':9} {'after us':>9} "
          f"{'HBM floor':>9} {'x floor':>7} {'binding':8} {'L2 MB':>7} {'TC instr':>8} {'spills':>6} {'scratch MB':>10}")
    for r in records:
        print(f"{r['op']:15} {r['pass']:8} {r['dtype']:9} {r['gpu']:5} {r['estimate_4roof_us']:9.1f} "
              f"{r['binding_4roof']:9} {r['estimate_us']:9.1f} "
              f"{r['hbm_floor_us']:9.1f} {r['estimate_us'] / r['hbm_floor_us']:7.2f} {r['binding']:8} "
              f"{r['l2_bytes'] / 1e6:7.0f} {r['tensor_core_instructions']:8d} {r['spill_bytes']:6d} "
              f"{r['scratch_bytes'] / 1e6:10.1f}")
    print("\nper kernel (H100; us; issue = issue at full rate / occupancy + sync stalls):")
    seen = set()
    for r in records:
        if r["gpu"] != "H100" or r["pass"] == "fwd+bwd":
            continue
        for k in r["kernels"]:
            key = (r["op"], r["dtype"], k["kernel"])
            if key in seen:
                continue
            seen.add(key)
            bars = k["barrier_sites"]
            print(f"  {r['op']:15} {r['dtype']:9} {k['kernel']:24} regs {k['registers']:>3} spill {k['spill_bytes']:>4} "
                  f"warps/sched {k['warps_per_scheduler']:3.1f}  warp-instr {k['warp_instructions'] / 1e6:6.1f}M  "
                  f"issue {k['issue_4roof_us']:5.1f}/{k['occupancy']:.2f}+{k['sync_us']:5.1f}={k['issue_us']:6.1f}  "
                  f"L1 {k['l1_us']:6.1f}  L2 {k['l2_us']:6.1f}  math {k['math_us']:5.1f}  -> {k['binding']:5}  "
                  f"BAR.SYNC {bars['total']} (inner loops {bars['inner']}), {k['barriers'] / k['programs']:.0f} "
                  f"per program; wgmma waits {k['wgmma_waits'] / k['programs']:.0f} per program")
    if a.json:
        a.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
