"""Results files and the report: JSON records -> ``bench/RESULTS.md`` tables and PNG plots.

A results file is a JSON list of records (see :func:`bench.harness.measure` for the keys). Saving
merges into an existing file (a newer record with the same key replaces the older one), so a
suite can be run in pieces (``--ops``) or resumed. :func:`write_report` regenerates the markdown
and plots from any set of results files; it never measures anything.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from sdpsfnet.files import atomic_write

from . import cases as C
from .harness import record_key, roof_note
from .sass import static_table

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
EAGER_FORMS = ("eager", "eager-convstack")


# ---- files --------------------------------------------------------------------------------

def load(paths: Iterable[str | os.PathLike]) -> dict[str, list[dict]]:
    """path -> its records, for every results file in ``paths``."""
    out = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            recs = json.load(f)
        if not isinstance(recs, list):
            raise ValueError(f"{p}: a results file must hold a JSON list of records (give the run book's "
                             "folder itself to leave out its env.json, check.json and suite.json)")
        out[str(p)] = recs
    return out


def save(records: Sequence[dict], path: str | os.PathLike) -> list[dict]:
    """Merge ``records`` into the JSON list at ``path`` (created if absent), atomically."""
    path = Path(path)
    merged: dict[tuple, dict] = {}
    if path.exists():
        for rec in load([path])[str(path)]:
            merged[record_key(rec)] = rec
    for rec in records:
        merged[record_key(rec)] = rec
    out = list(merged.values())
    with atomic_write(path) as f:
        f.write((json.dumps(out, indent=1) + "\n").encode())
    return out


def order_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Results files in report order: GPU runs first, then newest first (by file name)."""
    files = sorted((Path(p) for p in paths), key=lambda p: p.name, reverse=True)
    return sorted(files, key=lambda p: p.name.startswith("cpu"))


def results_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The results files ``paths`` name: a file as given; for a folder, each ``*.json`` in it that
    holds a JSON list (the run book's env.json, check.json and suite.json hold objects)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [f for f in sorted(p.glob("*.json"))
                      if isinstance(json.loads(f.read_text(encoding="utf-8")), list)]
        else:
            files.append(p)
    return files


def kernel_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The per-kernel GPU times (``kernels.json``, :mod:`bench.kernel_times`) of the folders in ``paths``."""
    recs = []
    for p in map(Path, paths):
        if (p / "kernels.json").is_file():
            recs += json.loads((p / "kernels.json").read_text(encoding="utf-8"))["kernels"]
    return recs


def kernel_section(recs: Sequence[dict]) -> list[str]:
    """Markdown: each psf kernel's measured time beside its static estimate (nothing without records)."""
    if not recs:
        return []
    lines = ["## Each psf kernel on the GPU beside its static estimate", "",
             "From the run book's `kernels.json` (`bench.kernel_times`): psf_conv's and apply_psf's "
             "forward+backward at the headline under `torch.profiler`, each kernel's device time per "
             "call beside the honest estimate of the same launch (H100 constants) at the same triton "
             "and psfops versions.", "",
             "| device | triton | op | dtype | kernel | measured us | estimate us | measured / estimate | binding |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        est = (f"{r['estimate_us']:.1f} | {r['measured_over_estimate']:.2f} | {r['binding']}" if "estimate_us" in r
               else "- | - | -")
        lines.append(f"| {r['device']} | {r['triton']} | {r['op']} | {r['dtype']} | `{r['kernel']}` | "
                     f"{r['measured_us']:.1f} | {est} |")
    return lines + [""]


def default_results() -> list[Path]:
    """Every results file under ``bench/results``, in report order."""
    return order_results(RESULTS_DIR.glob("*.json"))


# ---- tables -------------------------------------------------------------------------------

def _fmt(v, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _ratio(a, b) -> str:
    return "—" if a is None or b is None or a == 0 else f"{b / a:.2f}x"


def _shape_key(r: dict) -> tuple:
    return (r["B"], r["C"], r["H"], r["W"], r.get("J") or 0, r.get("k") or 0)


def _shape_label(r: dict) -> str:
    s = f"B{r['B']} C{r['C']} {r['H']}x{r['W']}"
    return s + (f" J{r['J']}" if r.get("J") is not None else "") + (f" k{r['k']}" if r.get("k") is not None else "")


def _by_impl(recs: Iterable[dict]) -> dict[str, dict]:
    return {r["impl"]: r for r in recs}


def _ms(rows: dict, impl: str):
    r = rows.get(impl)
    return r["ms"] if r and r["status"] == "ok" else None


def _cell(rows: dict, impl: str) -> str:
    r = rows.get(impl)
    if r is None:
        return ""
    if r["status"] == "ok":
        return _fmt(r["ms"])
    return {"skipped": "skip", "oom": "OOM", "error": "error", "mismatch": "WRONG"}.get(r["status"], r["status"])


def best_eager_ms(rows: dict):
    """Fastest eager form's ms (None if none ran)."""
    ms = [_ms(rows, i) for i in EAGER_FORMS if _ms(rows, i) is not None]
    return min(ms) if ms else None


def op_table(recs: list[dict], op: str, pass_: str) -> list[str]:
    """Markdown table for one op and pass: one row per (dtype, shape). Columns that hold no value
    in any row (e.g. speed-ups without Triton timings, peak memory on CPU) are left out."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in recs:
        if r["op"] == op and r["pass"] == pass_:
            groups[(r["dtype"], _shape_key(r))].append(r)
    if not groups:
        return []
    impls = [i for i in C.IMPLS if any(r["impl"] == i for rs in groups.values() for r in rs)]
    head = ["dtype", "shape"] + [f"{i} ms" for i in impls] + [f"{i} graph ms" for i in impls] + [
        "x eager (best form)", "x compile", "triton GB/s", "% roofline", "triton TFLOP/s", "% FLOP roof",
        "triton bound"] + [f"{i} peak MB" for i in impls]
    rows_out = []
    for (dtype, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows = _by_impl(rs)
        t = rows.get("triton")
        ok_t = t if t and t["status"] == "ok" else None
        bound = f"{ok_t['bound']} {ok_t['pct_bound']:.0f}%" if ok_t and ok_t.get("bound") else "—"
        rows_out.append([dtype, _shape_label(rs[0])] + [_cell(rows, i) for i in impls] +
                        [_fmt(rows[i].get("ms_graph")) if i in rows else "" for i in impls] + [
            _ratio(_ms(rows, "triton"), best_eager_ms(rows)),
            _ratio(_ms(rows, "triton"), _ms(rows, "compile")),
            _fmt(ok_t and ok_t["gbps"], ".1f"),
            _fmt(ok_t and ok_t["pct_roofline"], ".1f") + ("*" if ok_t and roof_note(ok_t) else ""),
            _fmt(ok_t and ok_t["tflops"], ".3g"), _fmt(ok_t and ok_t.get("pct_flops"), ".1f"), bound] +
            [_fmt(rows[i]["peak_mb"], ".1f") if i in rows else "" for i in impls])
    keep = [j for j in range(len(head)) if any(row[j] not in ("—", "") for row in rows_out)]
    lines = ["| " + " | ".join(head[j] for j in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(row[j] for j in keep) + " |" for row in rows_out]
    return lines


def step_table(recs: list[dict]) -> list[str]:
    steps = [r for r in recs if r["op"].startswith("sdpsfnet_step")]
    if not steps:
        return []
    lines = ["| model | backend | dtype | input | ms | peak MB | params | note |", "|---|---|---|---|---|---|---|---|"]
    for r in steps:
        note = f"loss {r.get('loss')}" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['op'].split(':', 1)[-1]} | {r['impl']} | {r['dtype']} | "
                     f"{r['B']}x3x{r['H']}x{r['W']} | {_fmt(r['ms'])} | {_fmt(r['peak_mb'], '.1f')} | "
                     f"{_fmt(r.get('params'), ',')} | {note} |")
    ok = {r["impl"]: r for r in steps if r["status"] == "ok"}
    if "triton" in ok and "reference" in ok:
        lines.append("")
        lines.append(f"Training step speed-up, Triton ops vs reference ops: "
                     f"{_ratio(ok['triton']['ms'], ok['reference']['ms'])}.")
    return lines


def headline_lines(recs: list[dict], op: str = "psf_conv") -> list[str]:
    """The targets for ``op`` fwd+bwd at the headline shape, per dtype, when present."""
    out = []
    for dtype in C.DTYPES:
        rows = _by_impl(r for r in recs if r["pass"] == "fwd+bwd" and r["dtype"] == dtype
                        and r.get("compile") != "dynamic"  # the targets compare with a static compile
                        and all(r.get(k) == v for k, v in {**C.HEADLINE, "op": op}.items()))
        if not rows:
            continue
        out.extend(f"- {line}" for line in target_lines(rows, dtype))
    return out


def headline_section(recs: list[dict]) -> list[str]:
    """A "Headline" section per op of :data:`bench.cases.HEADLINE_OPS` with records here."""
    lines = []
    for op in C.HEADLINE_OPS:
        head = headline_lines(recs, op)
        if head:
            lines += [f"### Headline: {op} fwd+bwd, B8 C64 128x128 J40 k7", ""] + head + [""]
    return lines


# The headline targets: speed-ups in every dtype; bandwidth in float32 (bfloat16 psf_conv is
# bound by arithmetic, see each record's `bound`); peak memory.
TARGETS = {"x_eager": 5.0, "x_compile": 2.0, "pct_copy_float32": 60.0, "memory_ratio": 1.1}


def target_lines(rows: dict, dtype: str) -> list[str]:
    """Target-vs-measured lines for one dtype of the headline case (rows: impl -> record)."""
    t = rows.get("triton")
    if not t or t["status"] != "ok":
        why = t["reason"] if t else "not run"
        return [f"{dtype}: Triton not measured ({why}); targets cannot be checked. "
                f"eager {_fmt(_ms(rows, 'eager'))} ms, eager-convstack {_fmt(_ms(rows, 'eager-convstack'))} ms, "
                f"compile {_fmt(_ms(rows, 'compile'))} ms"]

    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    e, c = best_eager_ms(rows), _ms(rows, "compile")
    sp_e = None if e is None else e / t["ms"]
    sp_c = None if c is None else c / t["ms"]
    mem = None if t["peak_mb"] is None else (t["held_mb"] + t["peak_mb"]) / t["ideal_mb"]
    bw_target = TARGETS["pct_copy_float32"] if dtype == "float32" else None
    bound = ""
    if t.get("bound"):
        bound = f"; binding roof: {t['bound']} ({t['pct_bound']:.1f}% of it"
        bound += f", {t['tflops']:.3g} of {t['peak_tflops']:.3g} TFLOP/s)" if t.get("peak_tflops") else ")"
    return [
        f"{dtype}: triton {t['ms']:.3f} ms, eager {_fmt(_ms(rows, 'eager'))} ms, "
        f"eager-convstack {_fmt(_ms(rows, 'eager-convstack'))} ms, compile {_fmt(c)} ms (medians)",
        f"{dtype}: speed-up vs best eager {_fmt(sp_e, '.2f')}x (target >= {TARGETS['x_eager']:g}x) "
        f"{verdict(sp_e and sp_e >= TARGETS['x_eager'])}",
        f"{dtype}: speed-up vs torch.compile(reference) {_fmt(sp_c, '.2f')}x (target >= {TARGETS['x_compile']:g}x) "
        f"{verdict(sp_c and sp_c >= TARGETS['x_compile'])}",
        f"{dtype}: {t['gbps']:.1f} GB/s = {t['pct_roofline']:.1f}% of the measured copy bandwidth "
        f"{t['roofline_gbps']:.1f} GB/s (target " + (f">= {bw_target:g}%) {verdict(t['pct_roofline'] >= bw_target)}"
                                                     if bw_target else "for float32 only) n/a") + bound,
        f"{dtype}: peak memory / (inputs+outputs+gradients) {_fmt(mem, '.2f')}x (target <= {TARGETS['memory_ratio']:g}x) "
        f"{verdict(None if mem is None else mem <= TARGETS['memory_ratio'])}",
    ]


def roof_lines(recs: list[dict]) -> list[str]:
    """One line per record above 100% of the copy roof, with the reason (see harness.roof_note)."""
    return [f"- `{r['impl']}` {r['op']} {r['pass']} {r['dtype']} {_shape_label(r)}: {roof_note(r)}"
            for r in recs if r["status"] == "ok" and roof_note(r)]


def skipped_lines(recs: list[dict]) -> list[str]:
    counts: dict[tuple, int] = defaultdict(int)
    for r in recs:
        if r["status"] != "ok":
            counts[(r["impl"], r["status"], r["reason"])] += 1
    return [f"- `{impl}` {status} x{n}: {reason}" for (impl, status, reason), n in sorted(counts.items())]


# ---- plots --------------------------------------------------------------------------------

def size_series(recs: list[dict], op: str, pass_: str = "fwd+bwd"):
    """Records of ``op``/``pass_`` in the (B, C, J, k) group with the most sizes H: the size sweep.
    Returns (label, {(impl, dtype): [(H, ms), ...]})."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in recs:
        if r["op"] == op and r["pass"] == pass_ and r["status"] == "ok":
            groups[(r["B"], r["C"], r.get("J"), r.get("k"))].append(r)
    if not groups:
        return None, {}
    key, rs = max(groups.items(), key=lambda kv: len({r["H"] for r in kv[1]}))
    series: dict[tuple, list] = defaultdict(list)
    for r in sorted(rs, key=lambda r: r["H"]):
        series[(r["impl"], r["dtype"])].append((r["H"], r["ms"]))
    B, Cc, J, k = key
    label = f"B{B} C{Cc}" + (f" J{J}" if J is not None else "") + (f" k{k}" if k is not None else "")
    return label, series


def _number_axis(axis) -> None:
    """Plain numbers on a log axis at 1-2-5 steps (major and minor ticks): a range of less than a
    decade has no major tick, and matplotlib leaves minor ticks unlabelled, so the axis showed no
    numbers at all."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    label = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    axis.set_major_formatter(label)
    axis.set_minor_formatter(label)


def plot_op(recs: list[dict], op: str, path: Path) -> bool:
    """PNG for ``op``: fwd+bwd time vs size per impl, and Triton speed-up vs size. False if no data."""
    import matplotlib.pyplot as plt

    fig = op_figure(recs, op)
    if fig is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def op_figure(recs: list[dict], op: str):
    """The figure of :func:`plot_op` (None without two sizes): time on a log axis labelled in ms
    at 1-2-5 steps, speed-up on a linear axis, sizes on a log2 axis."""
    label, series = size_series(recs, op)
    if len({h for pts in series.values() for h, _ in pts}) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    for (impl, dtype), pts in sorted(series.items()):
        ax_t.plot([h for h, _ in pts], [m for _, m in pts], marker="o", label=f"{impl} {dtype}")
    ax_t.set(yscale="log", xlabel="H = W", ylabel="ms (median)",
             title=f"{op} fwd+bwd, {label}")
    ax_t.legend(fontsize=7)
    any_speedup = False
    for (impl, dtype), pts in sorted(series.items()):
        if impl == "triton":
            continue
        tri = dict(series.get(("triton", dtype), []))
        xs = [h for h, m in pts if h in tri]
        if xs:
            any_speedup = True
            ax_s.plot(xs, [m / tri[h] for h, m in pts if h in tri], marker="o", label=f"vs {impl} {dtype}")
    ax_s.set(xlabel="H = W", ylabel="speed-up of triton", title="Triton speed-up")
    if any_speedup:
        ax_s.axhline(1.0, color="gray", lw=0.8)
        ax_s.legend(fontsize=7)
    else:
        ax_s.text(0.5, 0.5, "no Triton timings in this run", ha="center", va="center",
                  transform=ax_s.transAxes)
    sizes = sorted({h for pts in series.values() for h, _ in pts})
    for ax in (ax_t, ax_s) if any_speedup else (ax_t,):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(h) for h in sizes])
        ax.xaxis.set_minor_locator(NullLocator())  # the x axis only: the y axes keep their numbers
    _number_axis(ax_t.yaxis)
    fig.tight_layout()
    return fig


# ---- the report ---------------------------------------------------------------------------

METHOD = """\
Method (see `bench/cases.py`, `bench/harness.py`): times are medians, on CUDA of
`triton.testing.do_bench` (warm-up, synchronized, L2 flushed), on CPU of repeated
`time.perf_counter` calls after warm-up. Cases under 0.2 ms are also timed as replays of one
`torch.cuda.CUDAGraph` capture of the same step (`graph ms`: launch gaps removed). Before
timing, every implementation's outputs (and input gradients) are checked once against
`psfops.reference` in float32 on the same inputs; a wrong one shows as `WRONG` and is not timed.
`peak MB` is `torch.cuda.max_memory_allocated` (reset per case) minus what was allocated before
the call (the inputs and cotangents); not measured on CPU. GB/s counts the fewest bytes any
implementation must move (each input read once, each output written once; fwd+bwd adds the
backward's reads of cotangents and inputs and its writes of input gradients); `% roofline`
compares that with the device's measured copy bandwidth (1 GiB device-to-device copy, read +
write). TFLOP/s counts the op's modelled FLOPs (fwd+bwd: 3x fwd); `% FLOP roof` compares them
with a measured 8192^3 matrix product in the case's dtype (float32 without TF32). `bound` names
the roof whose floor is longer for the case, and the share of it reached. `eager` is
`psfops.reference` (psf_conv: unfold + einsum; `eager-convstack`: depthwise conv stack +
per-pixel mix), `compile` is `torch.compile` of the reference (`dynamic=True` in the sweep unless
run with `--compile static`; static in `python -m bench headline`; each record's `compile` field
says which), `triton` the psfops op under `psfops.backend("triton")`.
`x eager`/`x compile` are speed-ups of `triton` (time of the baseline / time of triton)."""


def cpu_path_lines() -> list[str]:
    """The newest ``python -m bench cpu`` run in ``results/cpu-path/`` as markdown, one heading level down."""
    runs = sorted((RESULTS_DIR / "cpu-path").glob("*.json"))
    if not runs:
        return []
    from .cpu import markdown
    text = markdown(json.loads(runs[-1].read_text(encoding="utf-8")))
    return ["#" + ln if ln.startswith("#") else ln for ln in text.splitlines()] + [
        f"Records: `results/cpu-path/{runs[-1].name}` (`python -m bench cpu --threads 1`).", ""]


def render(results: dict[str, list[dict]], md_path: Path, plot_dir: Path, kernels: Sequence[dict] = ()) -> str:
    """Markdown for all results files (one section each) and the per-kernel GPU times ``kernels``;
    writes the plots into ``plot_dir``."""
    lines = ["# psfops benchmarks", "",
             "Generated by `python -m bench report` from " +
             ", ".join(f"`{os.path.relpath(p, md_path.parent)}`" for p in results) + ".",
             "Run the suite with `python -m bench` on a CUDA machine (`--quick` for the CPU smoke "
             "subset; `python -m bench gpu-suite` for the whole GPU run book); check the headline "
             "targets with `python -m bench headline`.", "", METHOD, ""]
    if not any(r.get("device_type") == "cuda" for recs in results.values() for r in recs):
        lines += ["**GPU results are pending**: no CUDA run has been recorded yet. The numbers below "
                  "come from a CPU smoke run (`--quick`, reference paths only) and say nothing about "
                  "the Triton kernels' speed.", ""]
    static = static_table()
    lines += (["## Static estimate of the psf kernels (not a measurement)", "",
                  "From `python -m bench sass` (records in `results/static/`): each kernel's sm_90 SASS, "
                  "compiled on a CPU, its dynamic instruction count and bytes requested, and the "
                  "four roofs (issue, L1, math, HBM) on an H100 at the headline shape B8 C64 128x128 "
                  "J40 k7; `x` is the estimate over the HBM floor, and the binding roof is named. "
                  "psfops 0.1.0 is the first kernels, 0.2.0 the rewrite; triton 3.6 is the GPU image's "
                  "compiler (ptxas 12.8), 3.9 CI's (ptxas 13.4), and they allocate registers "
                  "differently.", ""] + static + [""] if static else []) + cpu_path_lines()
    lines += kernel_section(kernels)
    for path, recs in results.items():
        if not recs:
            continue
        r0 = recs[0]
        cpu = r0.get("device_type") != "cuda"
        lines += [f"## {r0['device']}, {r0['date']}" + (" (CPU run: reference paths only)" if cpu else ""),
                  "", f"torch {r0['torch']}, triton {r0['triton']}, psfops {r0.get('psfops')}; "
                  + (f"torch CPU threads {r0.get('cpu_threads')}; " if cpu else "")
                  + f"copy roofline {r0['roofline_gbps']:.1f} GB/s; {len(recs)} records in "
                  f"`{os.path.relpath(path, md_path.parent)}`.", ""]
        if any(r.get("triton_interpret") and r["impl"] == "triton" and r["status"] == "ok" for r in recs):
            lines += ["Triton timings in this run come from the CPU interpreter (`TRITON_INTERPRET=1`): "
                      "they test the harness, not the kernels' speed.", ""]
        lines += headline_section(recs)
        stem = Path(path).stem
        for op in C.OPS:
            body = []
            for pass_ in C.PASSES:
                table = op_table(recs, op, pass_)
                if table:
                    body += [f"**{pass_}**", ""] + table + [""]
            if not body:
                continue
            lines += [f"### {op}", ""] + body
            png = plot_dir / f"{stem}-{op}.png"
            if plot_op(recs, op, png):
                lines += [f"![{op} vs size]({os.path.relpath(png, md_path.parent)})", ""]
        steps = step_table(recs)
        if steps:
            lines += ["### SD-PSFNet training step", ""] + steps + [""]
        above = roof_lines(recs)
        lines += ["### Above the copy roof (marked *)", ""] + above + [""] if above else []
        skipped = skipped_lines(recs)
        if skipped:
            lines += ["### Not measured", ""] + skipped + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(json_paths: Sequence[str | os.PathLike] | None = None,
                 md_path: str | os.PathLike = RESULTS_MD,
                 plot_dir: str | os.PathLike | None = None) -> Path:
    """Regenerate the markdown (and plots) from results files or folders of them (:func:`results_files`;
    default: all in bench/results)."""
    paths = order_results(results_files(json_paths)) if json_paths else default_results()
    if not paths:
        where = ", ".join(map(str, json_paths)) if json_paths else RESULTS_DIR
        raise FileNotFoundError(f"no results files (JSON lists of records) in {where}")
    md_path = Path(md_path)
    plot_dir = Path(plot_dir) if plot_dir else Path(paths[0]).parent / "plots"
    text = render(load(paths), md_path, plot_dir, kernel_records(json_paths or ()))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    return md_path
