"""Compile every Triton kernel the psfops launchers launch for Hopper (sm_90), ahead of time and
without a GPU, and report each one's registers, stack (spills), local and shared memory.

How: in a process where ``TRITON_INTERPRET`` is unset, the launchers of ``psfops.kernels`` run on
small CPU tensors shaped like a real workload, with ``JITFunction.run`` patched to record each
launch (kernel, arguments, constexprs, ``num_warps``) instead of running it. Each distinct launch
is then compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and
the cubin's resource usage is read with the ``cuobjdump`` shipped inside triton. The block sizes
and constexprs are the launchers' own, so this checks what a GPU would compile: a kernel that
only fails on the GPU compiler (a ``tl.dot`` shape or dtype, a layout) fails here, on a CPU.

    python -m bench sm90 [--dtypes float32,bfloat16,float64] [--ops OP,...] [--basis J] [--ksize k] [--json OUT]

Each record also says, from the PTX, how wide the kernel's global loads and stores are, which
tensor-core instructions it uses and how many ``bar.sync`` it has (:func:`ptx_facts`), and from
the SASS where its CTA barriers (``BAR.SYNC``) are: ``barriers`` = ``total``, ``in_loops``,
``inner`` (inside a loop other than the persistent tile loop: the channel-block, tap, staging,
J-block and epilogue loops) and ``by_loop`` (per source loop variable, the barriers anywhere
inside it), from :func:`bench.sass.barrier_counts`. A barrier inside the channel-block loop runs
C/BLOCK_C times per tile: those are the ones that cost.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET = ("cuda", 90, 32)  # Hopper: H100 / H200
_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                  torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64"}
# Shapes of the headline workload (C64 J40 k7), spatially small: block choices depend on C, J, k
# and (for H*W >= the pixel block) nothing else, so 16x16 images give the full-size launches.
WORKLOAD = dict(B=2, C=64, H=16, W=16, J=40, k=7)


@contextlib.contextmanager
def recording_launches(sms: int | None = None):
    """Within the block, Triton kernels record their launches in the yielded list as (kernel,
    arguments, keyword arguments with the launch ``grid`` added), and the launchers accept CPU
    tensors and plan for a GPU of ``sms`` SMs (default :data:`RECORDED_SMS`; ``launch_target``).
    Nothing is executed."""
    from triton.runtime.jit import JITFunction

    from psfops.kernels import launch_target

    launches = []
    real_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, {**kwargs, "grid": grid}))

    JITFunction.run = record
    try:
        with launch_target(sm_count=sms or RECORDED_SMS, any_device=True, gpu_plans=True):
            yield launches
    finally:
        JITFunction.run = real_run


# Further shapes for ops whose launch depends on the image size beyond 16x16: a whole-plane and a
# split-plane spatial_normalize (on an H100's SM count, below), and full-width pixel blocks.
EXTRA_WORKLOADS = {
    "spatial_normalize": (dict(B=8, C=64, H=64, W=64), dict(B=1, C=3, H=1024, W=1024)),
    "gated_blend": (dict(B=2, C=64, H=32, W=32),),
    "lstm_cell": (dict(B=2, C=32, H=32, W=32),),
}
RECORDED_SMS = 132  # the SM count launchers see while recording: an H100's


def _drive_launchers(dtype: torch.dtype, shape, ops=None, variants: str = "all") -> None:
    """Call every custom op of the op table (or those named in ``ops``), forward and backward, on
    every sample variant (so every kernel path launches) with CPU tensors of ``shape`` and of the
    op's :data:`EXTRA_WORKLOADS`; nothing executes while recording."""
    from psfops.testing import OPS, Shape, backward_args

    for info in OPS.values():
        if ops is not None and info.name not in ops:
            continue
        for s in [shape] + [Shape(**w) for w in EXTRA_WORKLOADS.get(info.name, ())]:
            samples = info.samples(s, dtype, "cpu")
            for sample in samples if variants == "all" else samples[:1]:
                info.backward(*backward_args(info, sample))


def ptx_facts(ptx: str) -> dict:
    """What the PTX says about memory and matrix instructions: the widest global load and store
    (bits per thread and instruction), the tensor-core instructions (``mma``/``wgmma`` with
    their operand types) and the number of CTA barriers (``bar.sync``/``barrier.sync``), e.g.
    ``{"load_bits": 128, "store_bits": 128, "mma": ["mma.bf16"], "bar_sync": 2}``."""
    def widest(op):
        bits = [0]
        for vec, width in re.findall(rf"\b{op}\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfus](\d+)\b", ptx):
            bits.append(int(vec or 1) * int(width))
        return max(bits)
    mma = sorted({f"{kind}.{ty}" for kind, ty in
                  re.findall(r"\b(w?gmma|mma)\.[a-z0-9_.:]*?\.(bf16|f16|tf32|f64|e4m3|e5m2)\b", ptx)})
    bars = len(re.findall(r"^\s*(?:@!?%p\d+\s+)?(?:bar|barrier)\.sync\b", ptx, re.M))
    return {"load_bits": widest("ld"), "store_bits": widest("st"), "mma": mma, "bar_sync": bars}


def _signature(fn, args, kwargs):
    """(signature, constexprs, options) of one recorded launch, as triton.compile wants them."""
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in kwargs}
    kwargs.pop("grid", None)
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    signature, constexprs = {}, {}
    for param in fn.params:
        value = values[param.name]
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TRITON_DTYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {param.name}={value!r}")
    return signature, constexprs, options


def _divisibility(fn, args, kwargs) -> dict:
    """The JIT's specialization of one launch, as ``ASTSource`` attrs: a tensor argument whose
    address is 16-byte aligned, or an int argument divisible by 16, is compiled as such
    (``tt.divisibility`` 16), as a launch on the GPU does. Alignment decides how wide the
    kernel's loads and stores can be."""
    values = dict(zip(fn.arg_names, args))
    values.update(kwargs)
    attrs = {}
    for i, param in enumerate(fn.params):
        value = values.get(param.name)
        if param.is_constexpr or isinstance(value, bool):
            continue
        if (isinstance(value, torch.Tensor) and value.data_ptr() % 16 == 0) or \
                (isinstance(value, int) and value % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def _resource_usage(cubin: bytes) -> dict:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    return {key.lower(): int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def compile_launch(fn, args, kwargs):
    """One recorded launch compiled for sm_90 as a GPU launch would compile it (same constexprs,
    options and alignment specialization)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, options = _signature(fn, args, dict(kwargs))
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                    attrs=_divisibility(fn, args, kwargs)),
                          target=GPUTarget(*TARGET), options=options)


def _barriers(cubin: bytes) -> dict:
    """Where the kernel's CTA barriers are in its SASS (:func:`bench.sass.barrier_counts`)."""
    from . import sass
    return sass.barrier_counts(sass.disassemble(cubin))


def compile_report(dtypes=(torch.float32, torch.bfloat16, torch.float64), workload=WORKLOAD,
                   ops=None, variants: str = "all") -> list[dict]:
    """One record per distinct launch: kernel, dtype, constexprs, num_warps, the compile time
    (``compile_s``: seconds, near 0 when triton's cache had it), the resources and
    :func:`ptx_facts` (``ops``: only these ops' launches; ``variants`` "first": only each op's
    usual sample, not its padding and per-sample-basis variants)."""
    from psfops.testing import Shape

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter does not compile kernels")
    records, seen = [], set()
    for dtype in dtypes:
        with recording_launches() as launches:
            _drive_launchers(dtype, Shape(**workload), ops, variants)
        for fn, args, kwargs in launches:
            signature, constexprs, options = _signature(fn, args, dict(kwargs))
            attrs = _divisibility(fn, args, kwargs)
            key = (fn.__name__, tuple(signature.items()), repr(sorted(constexprs.items())), repr(options),
                   repr(sorted(attrs)))
            if key in seen:
                continue
            seen.add(key)
            rec = {"kernel": fn.__name__, "dtype": str(dtype).replace("torch.", ""),
                   "constexprs": {k: str(v) for k, v in constexprs.items()},
                   "num_warps": options.get("num_warps", 4)}
            try:
                start = time.perf_counter()
                compiled = compile_launch(fn, args, kwargs)
                rec["compile_s"] = round(time.perf_counter() - start, 1)  # (0 from triton's cache)
                rec.update(_resource_usage(compiled.asm["cubin"]), **ptx_facts(compiled.asm["ptx"]))
                rec.update(barriers=_barriers(compiled.asm["cubin"]), ok=True)
            except Exception as e:  # report every failing kernel, not just the first
                rec.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            records.append(rec)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sm90", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="float32,bfloat16,float64")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument("--ops", default=None, help="comma-separated op names (default: every op)")
    p.add_argument("--basis", type=int, default=WORKLOAD["J"],
                   help=f"J, the number of basis kernels (default {WORKLOAD['J']}; above 64: several J blocks)")
    p.add_argument("--variants", choices=("all", "first"), default="all",
                   help="every sample variant of each op (padding modes, per-sample bases), or only the first")
    p.add_argument("--ksize", type=int, default=WORKLOAD["k"],
                   help=f"k, the psf kernel size (default {WORKLOAD['k']}; 15, 31: large-kernel launches)")
    a = p.parse_args(argv)
    dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    records = compile_report(dtypes, dict(WORKLOAD, J=a.basis, k=a.ksize), ops=a.ops.split(",") if a.ops else None,
                             variants=a.variants)
    print(f"{'kernel':28} {'dtype':9} {'warps':>5} {'regs':>5} {'stack':>6} {'local':>6} {'shared':>7} {'compile s':>9} "
          f"{'ld/st bits':>10} {'mma':>10} {'BAR.SYNC all/inner':>18}  barriers by loop; constexprs")
    for r in records:
        if r["ok"]:
            bars = r["barriers"]
            print(f"{r['kernel']:28} {r['dtype']:9} {r['num_warps']:>5} {r.get('reg', '?'):>5} {r.get('stack', 0):>6} "
                  f"{r.get('local', 0):>6} {r.get('shared', 0):>7} {r['compile_s']:>9} {r['load_bits']:>4}/{r['store_bits']:<5} "
                  f"{','.join(r['mma']) or '-':>10} {bars['total']:>8}/{bars['inner']:<9}  {bars['by_loop']}; "
                  f"{r['constexprs']}")
        else:
            print(f"{r['kernel']:28} {r['dtype']:9} FAILED: {r['error']}")
    if a.json:
        a.json.write_text(json.dumps(records, indent=1))
    failed = [r for r in records if not r["ok"]]
    print(f"{len(records) - len(failed)} of {len(records)} kernels compiled for sm_{TARGET[1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
