"""Static analysis of the psf kernels' sm_90 SASS, and a four-roof time estimate, without a GPU.

    python -m bench sass [--dtypes float32,bfloat16] [--gpus H100,H200] [--json OUT]

How. The psf ops (psf_conv, synthesize_psf, apply_psf), forward and backward, run at the headline
shape (B8 C64 128x128 J40 k7) on CPU tensors with every Triton launch recorded instead of run
(``bench.sm90.recording_launches``) and the GPU's launch plan (its tile shapes, one program per
SM). Each distinct launch is compiled for sm_90 with triton's own compiler; ``nvdisasm -g``
(shipped inside triton) gives the SASS with the source line of every instruction.

Dynamic instruction counts: a backward branch closes a loop; its source loop is the ``for``
statement on the line of the branch (or of the nearest instruction before it on such a line),
and its trip count follows from the launch arguments: ``tile`` (the persistent tile loop) runs
n_tiles times over all programs, ``c0`` C/BLOCK_C, ``jb`` the J blocks,
``chunk0`` the staging chunks, ``epi0`` the epilogue chunks;
``tl.static_range`` loops are unrolled and count once per copy. Every instruction counts once per
warp per execution of the loops around it.

Four roofs per kernel, per GPU (:data:`GPUS`):
    issue = dynamic warp-instructions / (SMs x 4 per clock x clock)
    L1    = bytes the loads request (global and shared, width x 32 lanes) / (SMs x 128 B per clock x clock)
    math  = FMA/FADD/FMUL FLOPs / the CUDA-core fp32 peak + tensor-core FLOPs (HGMMA/HMMA shapes) /
            that dtype's tensor peak
    HBM   = the pass's fewest bytes (each input read once, each output written once) / bandwidth
A pass's estimate is max(sum over its kernels of max(issue, L1, math), HBM); ``binding`` names the
roof that sets it. ``scratch_bytes``: the device memory of the kernels' work areas (per-program
taps and staged halos, d(basis) partials) beyond inputs, outputs and gradients, the largest of the
pass's kernels (each frees its own). These are static estimates, not measurements: they ignore latency, occupancy,
cache misses and the overlap between kernels.
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

# Hopper as the estimate sees it: SMs, sustained clock, HBM bandwidth, peaks (dense) in TFLOP/s.
GPUS = {
    "H100": dict(sms=132, clock_ghz=1.755, hbm_tbs=3.35, fp32_tflops=67.0,
                 tensor_tflops={"tf32": 495.0, "bf16": 990.0, "f16": 990.0}),
    "H200": dict(sms=132, clock_ghz=1.755, hbm_tbs=4.8, fp32_tflops=67.0,
                 tensor_tflops={"tf32": 495.0, "bf16": 990.0, "f16": 990.0}),
}
PSF_OPS = ("psf_conv", "synthesize_psf", "apply_psf")
WARP = 32

_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_\w+):")
_MMA = re.compile(r"^[HQ]?GMMA\.(\d+)x(\d+)x(\d+)\.|^HMMA\.(\d)(\d)(\d+)\.")
# loop variable of a `for ... in range(...)` in the kernels -> its executions, from launch arguments
TRIPS = {
    "c0": lambda a: -(-a["C"] // a["BLOCK_C"]),
    "jb": lambda a: a["NUM_JB"],
    "chunk0": lambda a: a["HALO_PAD"] // a["HALO_CHUNK"],
    "epi0": lambda a: a["TH"] * a["TW"] // a["EPILOGUE"],
}


@functools.lru_cache(maxsize=None)
def _for_lines(path: str) -> dict[int, str]:
    """Line -> loop variable of every runtime ``for v in range(...)`` in a source file (static_range
    loops are unrolled by the compiler and are left out)."""
    loops = {}
    for node in ast.walk(ast.parse(Path(path).read_text())):
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


def loop_multipliers(instrs, args: dict, programs: int) -> list[float]:
    """Executions per warp, over all programs, of each instruction: ``programs`` times the trip
    counts of the loops around it (the tile loop: n_tiles / programs per program)."""
    trips = {**TRIPS, "tile": lambda a: a["n_tiles"] / programs}
    mult = [float(programs)] * len(instrs)
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


def kernel_profile(instrs, mult, num_warps: int) -> dict:
    """Dynamic counts (all warps of all programs) by opcode class, bytes requested, FLOPs."""
    ops = collections.Counter()
    load_bytes = fp32_flops = 0.0
    tensor = collections.Counter()
    tensor_instr = 0
    for (addr, op, rest, _), n in zip(instrs, mult):
        n *= num_warps
        base = op.split(".")[0]
        ops[base] += n
        if base in ("LDG", "LDS", "LDSM", "LDL"):
            load_bytes += n * WARP * _bytes_per_thread(op) * (4 if base == "LDSM" else 1)
        if base in ("FFMA",):
            fp32_flops += 2 * n * WARP
        elif base in ("FADD", "FMUL"):
            fp32_flops += n * WARP
        mma = _mma_flops(op)
        if mma:
            tensor[mma[1]] += mma[0] * n
            tensor_instr += n
    return {"warp_instructions": sum(ops.values()), "by_opcode": dict(ops.most_common()),
            "load_bytes": load_bytes, "fp32_flops": fp32_flops, "tensor_flops": dict(tensor),
            "tensor_core_instructions": tensor_instr,
            "static_tensor_core_instructions": sum(1 for _, op, _, _ in instrs if _mma_flops(op))}


def roofs(profile: dict, gpu: dict) -> dict:
    """Issue, L1 and math times (us) of one kernel on ``gpu``."""
    clock = gpu["clock_ghz"] * 1e9
    math = profile["fp32_flops"] / (gpu["fp32_tflops"] * 1e12)
    for kind, flops in profile["tensor_flops"].items():
        math += flops / (gpu["tensor_tflops"][kind] * 1e12)
    return {"issue_us": 1e6 * profile["warp_instructions"] / (gpu["sms"] * 4 * clock),
            "l1_us": 1e6 * profile["load_bytes"] / (gpu["sms"] * 128 * clock),
            "math_us": 1e6 * math}


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
        cubin = sm90.compile_launch(fn, args, kwargs).asm["cubin"]
        _COMPILED[key] = (disassemble(cubin), sm90._resource_usage(cubin))
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
                    kernels[pass_].append({"kernel": launch["kernel"], "programs": launch["programs"],
                                           "num_warps": launch["num_warps"], "registers": launch.get("reg"),
                                           "spill_bytes": launch.get("stack", 0),
                                           "scratch_bytes": scratch_bytes(fn, args, kwargs), **prof, **roofs(prof, gpu)})
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


def _pass_record(op, pass_, dtype, gpu_name, gpu, shape, kernels, floor_bytes) -> dict:
    hbm_us = 1e6 * floor_bytes / (gpu["hbm_tbs"] * 1e12)
    per_kernel = [max(k["issue_us"], k["l1_us"], k["math_us"]) for k in kernels]
    total = sum(per_kernel)
    if hbm_us >= total:
        binding = "hbm"
    else:
        sums = {r: sum(k[f"{r}_us"] for k in kernels) for r in ("issue", "l1", "math")}
        binding = max(sums, key=sums.get)
    import triton

    import psfops
    return {"op": op, "pass": pass_, "dtype": str(dtype).replace("torch.", ""), "gpu": gpu_name,
            "triton": triton.__version__, "psfops": psfops.__version__,
            "B": shape.B, "C": shape.C, "H": shape.H, "W": shape.W, "J": shape.J, "k": shape.k,
            "estimate_us": max(total, hbm_us), "hbm_floor_us": hbm_us, "binding": binding,
            "tensor_core_instructions": sum(k["static_tensor_core_instructions"] for k in kernels),
            "spill_bytes": sum(k["spill_bytes"] for k in kernels),
            # kernels run one after another, each freeing its work areas: the pass needs the largest
            "scratch_bytes": max(k["scratch_bytes"] for k in kernels),
            "kernels": [{key: k[key] for key in ("kernel", "programs", "num_warps", "registers", "spill_bytes",
                                                  "scratch_bytes",
                                                  "warp_instructions", "load_bytes", "issue_us", "l1_us", "math_us",
                                                  "tensor_core_instructions")} for k in kernels]}


STATIC_DIR = Path(__file__).parent / "results" / "static"


def static_table(paths=None, gpu: str = "H100") -> list[str]:
    """Markdown: the static estimates of the records files (default: bench/results/static), one
    column per (psfops, triton) version, psf ops by pass and dtype, as x the HBM floor."""
    paths = sorted(Path(p) for p in (paths or STATIC_DIR.glob("*.json")))
    runs = {}
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            if r["gpu"] == gpu:
                runs.setdefault((r["psfops"], r["triton"]), {})[(r["op"], r["pass"], r["dtype"])] = r
    if not runs:
        return []
    versions = sorted(runs)
    lines = ["| op | pass | dtype | HBM floor us | " + " | ".join(f"psfops {v} (triton {t})" for v, t in versions)
             + " |", "|---|---|---|---|" + "---|" * len(versions)]
    for key in sorted({k for run in runs.values() for k in run}, key=lambda k: (PSF_OPS.index(k[0]),
                                                                                 ("fwd", "bwd", "fwd+bwd").index(k[1]),
                                                                                 k[2])):
        floor = next(run[key]["hbm_floor_us"] for run in runs.values() if key in run)
        cells = []
        for v in versions:
            r = runs[v].get(key)
            cells.append("-" if r is None else f"{r['estimate_us']:.0f} us ({r['estimate_us'] / floor:.1f}x, "
                         f"{r['binding']}{', spills' if r['spill_bytes'] else ''})")
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
    print(f"{'op':15} {'pass':8} {'dtype':9} {'gpu':5} {'estimate us':>11} {'HBM floor':>9} {'x floor':>7} "
          f"{'binding':8} {'TC instr':>8} {'spills':>6} {'scratch MB':>10}")
    for r in records:
        print(f"{r['op']:15} {r['pass']:8} {r['dtype']:9} {r['gpu']:5} {r['estimate_us']:11.1f} "
              f"{r['hbm_floor_us']:9.1f} {r['estimate_us'] / r['hbm_floor_us']:7.2f} {r['binding']:8} "
              f"{r['tensor_core_instructions']:8d} {r['spill_bytes']:6d} {r['scratch_bytes'] / 1e6:10.1f}")
    print("\nper kernel (H100):")
    seen = set()
    for r in records:
        if r["gpu"] != "H100" or r["pass"] == "fwd+bwd":
            continue
        for k in r["kernels"]:
            key = (r["op"], r["dtype"], k["kernel"])
            if key in seen:
                continue
            seen.add(key)
            print(f"  {r['op']:15} {r['dtype']:9} {k['kernel']:24} regs {k['registers']:>3} spill {k['spill_bytes']:>4} "
                  f"warp-instr {k['warp_instructions'] / 1e6:7.1f}M  issue {k['issue_us']:7.1f}  "
                  f"L1 {k['l1_us']:7.1f}  math {k['math_us']:6.1f} us  scratch {k['scratch_bytes'] / 1e6:5.1f} MB")
    if a.json:
        a.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
