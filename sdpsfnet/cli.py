"""The sdpsfnet command (also python -m sdpsfnet): train, evaluate, score, derain, render
synthetic rain, plot PSFs, list the model zoo and export for deployment.

Run "sdpsfnet COMMAND --help" for each command's options. eval, metrics, derain, synth,
show-psf and export never write over one of their input files: an output path that resolves to
an input (also through "..", symbolic or hard links) is refused with an error before anything
is written. Errors print one line and exit with 1 (2 for bad usage, argparse's convention).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .files import atomic_write, refuse_overwrite

NO_OVERWRITE = "Never writes over an input file: such an output path is refused before any work."


def _strict(obj):
    """``obj`` made strict JSON: every non-finite float (PSNR of identical images is inf) becomes
    None, and a string holding bytes that are not UTF-8 (a file name, decoded by Python with
    surrogate escapes) gets them as the text ``\\xNN``, never as lone surrogates."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {_strict(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _write_json(result: dict, path: str | None) -> None:
    """Strict JSON (see :func:`_strict`), written atomically."""
    if path:
        with atomic_write(path) as f:
            f.write((json.dumps(_strict(result), indent=2, allow_nan=False) + "\n").encode())


def _int_in(lo: int, hi: int | None = None, zero: bool = False):
    """argparse type: an int in [lo, hi] (or 0 when ``zero``); argparse's error names the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not (zero and value == 0) and (value < lo or (hi is not None and value > hi)):
            span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be {'0 or ' if zero else ''}{span}, got {value}")
        return value
    return parse


MIN_TILE = 64  # px: smaller tiles mostly see their padding (a tile of 1 px took 660 s on 40x40)
SEED = _int_in(0, 2 ** 63 - 1)


def _print_means(title: str, result: dict) -> None:
    print(f"{title}: PSNR-Y {result['psnr_y']:.2f} dB  SSIM-Y {result['ssim_y']:.4f}  "
          f"PSNR-RGB {result['psnr_rgb']:.2f} dB  SSIM-RGB {result['ssim_rgb']:.4f}  "
          f"({len(result['per_image'])} images)")


# Options of `train` that define a run: with --resume they may repeat the checkpoint's value but
# not change it (a run's schedule is built for its length and recipe).
RUN_OPTIONS = ("recipe", "data", "val", "allow_val_in_data", "init", "steps", "epochs", "batch_size", "crop",
               "lr", "seed", "amp", "val_every", "ckpt_every")


def _model_and_preset(a) -> tuple[str, str]:
    return a.model or "sdpsfnet", a.preset or "paper"


def _check_resume_options(a, run_config: dict) -> None:
    """ValueError naming the first run-defining option given with --resume that differs from the
    run in the checkpoint."""
    from .training.config import make_config

    given = {k: getattr(a, k) for k in RUN_OPTIONS if getattr(a, k) is not None}
    if a.model or a.preset:  # the model a new run would get (the tiny preset swaps it)
        given["model"] = make_config(*_model_and_preset(a)).model
    for name, value in given.items():
        old = run_config.get(name)
        same = (os.path.realpath(value) == os.path.realpath(old) if name in ("data", "val", "init") and old
                else value == old)
        if not same:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} differs from the run being resumed ({name}={old!r} in "
                             f"{a.resume}): a resumed run keeps its length and recipe, which its "
                             f"learning-rate schedule was built for; leave {flag} out, or start a "
                             f"new run in another --out")


def cmd_train(a) -> int:
    from .training.checkpoint import load_checkpoint
    from .training.config import TrainConfig, make_config
    from .training.loop import TrainingDiverged, train
    from .training.run_folder import resume_advice

    if a.resume:
        _check_resume_options(a, load_checkpoint(a.resume, resumable=True)["config"])
        cfg = TrainConfig(out=a.out or os.path.dirname(os.path.abspath(a.resume)), stop_at=a.stop_at,
                          num_workers=a.workers or 0, device=a.device, progress=not a.no_progress)
    else:
        cfg = make_config(*_model_and_preset(a), a.recipe, data=a.data, val=a.val, init=a.init,
                          allow_val_in_data=a.allow_val_in_data,
                          out=a.out, steps=a.steps, epochs=a.epochs, stop_at=a.stop_at,
                          batch_size=a.batch_size, crop=a.crop, lr=a.lr, seed=a.seed,
                          num_workers=a.workers, amp=a.amp, val_every=a.val_every,
                          ckpt_every=a.ckpt_every, device=a.device, progress=not a.no_progress)
        print(f"config: {json.dumps(cfg.to_dict(), sort_keys=True)}")
    try:
        summary = train(cfg, resume=a.resume, overwrite=a.overwrite)
    except TrainingDiverged as e:
        print(f"sdpsfnet train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nsdpsfnet train: interrupted; {resume_advice(cfg.out)}", file=sys.stderr)
        return 130
    if summary["start_step"] == summary["step"]:
        print(f"nothing to train: the run is complete (step {summary['step']}/{summary['total_steps']}); "
              f"outputs in {cfg.out}")
    elif "val_psnr_y" in summary:
        print(f"step {summary['step']}/{summary['total_steps']}: loss {summary['loss']:.4f}, "
              f"validation PSNR-Y {summary['val_psnr_y']:.2f} dB (rainy input "
              f"{summary['input_psnr_y']:.2f} dB), {summary['seconds']:.0f} s; outputs in {cfg.out}")
    return 0


def _load(ckpt: str, device: str):
    from .training.checkpoint import model_from_checkpoint
    from .device import pick_device

    dev = pick_device(device)  # before loading: a bad --device fails fast
    return model_from_checkpoint(ckpt, device=dev)


def cmd_eval(a) -> int:
    from .data import find_pairs
    from .evaluation.inference import evaluate

    if a.json:
        refuse_overwrite([a.json], [a.ckpt, *(p for pair in find_pairs(a.data) for p in pair)])
    result = evaluate(_load(a.ckpt, a.device), a.data, tile=a.tile or None, overlap=a.overlap,
                      progress=not a.no_progress)
    _print_means("restored", result)
    inp = result["input"]
    print(f"rainy input: PSNR-Y {inp['psnr_y']:.2f} dB  SSIM-Y {inp['ssim_y']:.4f}")
    _write_json(result, a.json)
    return 0


def cmd_metrics(a) -> int:
    from .data import images_by_key
    from .evaluation.metrics import score_folders

    if a.json:
        refuse_overwrite([a.json], [*images_by_key(a.pred_dir, "pred_dir").values(),
                           *images_by_key(a.target_dir, "target_dir").values()])
    result = score_folders(a.pred_dir, a.target_dir, progress=not a.no_progress)
    _print_means("metrics", result)
    _write_json(result, a.json)
    return 0


def cmd_derain(a) -> int:
    from .derainer import Derainer
    from .evaluation.inference import derain_outputs

    derain_outputs(a.inputs, a.out)  # its checks, before the model is loaded
    derainer = Derainer.from_checkpoint(a.ckpt, a.device, tile=a.tile or None, overlap=a.overlap)
    written = derainer.derain_files(a.inputs, a.out, progress=not a.no_progress)
    print(f"wrote {len(written)} image(s) to {a.out}")
    return 0


def cmd_synth(a) -> int:
    from .data.rain import synth_folder

    synth_folder(a.clean, a.out, seed=a.seed, progress=not a.no_progress)
    print(f"wrote rainy/clean pairs to {a.out}")
    return 0


def cmd_show_psf(a) -> int:
    from .data import load_image
    from .evaluation.psf_figures import figure_format, show_psf

    figure_format(a.out)
    refuse_overwrite([a.out], [a.ckpt] + ([a.image] if a.image else []))
    model = _load(a.ckpt, a.device)
    image = load_image(a.image) if a.image else None
    show_psf(model, a.out, image=image, module=a.module)
    print(f"wrote {a.out}")
    return 0


def cmd_models(a) -> int:
    from .models import MODELS
    from .models.complexity import count

    rows = [(name, *count(name, a.size if a.macs else None), MODELS.describe(name))
            for name in MODELS if not name.startswith("_")]
    macs_head = f"  MACs@{a.size}x{a.size}" if a.macs else ""
    print(f"{'name':<15} {'params':>11}{macs_head}  what")
    for name, params, macs, what in rows:
        macs_col = f"  {macs / 1e9:>{len(macs_head) - 3}.2f}G" if a.macs else ""
        print(f"{name:<15} {params:>11,}{macs_col}  {what}")
    return 0


def cmd_export(a) -> int:
    from .export import export_checkpoint

    meta = export_checkpoint(a.ckpt, a.out)
    M = meta["pad_multiple"]
    print(f"wrote {a.out}: model {meta['model']}, reference ops; input rainy (B, 3, H, W) in [0, 1], "
          f"any H, W >= {2 * M}; output derained")
    return 0


def version() -> str:
    """``sdpsfnet <version> (psfops <version>, torch <version>)``: one version, psfops/version.py."""
    import torch
    from psfops.version import __version__

    return f"sdpsfnet {__version__} (psfops {__version__}, torch {torch.__version__})"


def _common(sp, device=True) -> None:
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    if device:
        sp.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")


def _tiling(sp) -> None:
    sp.add_argument("--tile", type=_int_in(MIN_TILE, zero=True), default=512,
                    help=f"tile size in px for large images, at least {MIN_TILE} (0: never tile)")
    sp.add_argument("--overlap", type=_int_in(0), default=64, help="tile overlap in px (less than --tile)")
    sp.set_defaults(tiled=sp)


def _command(sub, name, func, help, description, writes=True, ckpt=True):
    sp = sub.add_parser(name, help=help, description=f"{description} {NO_OVERWRITE}" if writes else description)
    sp.set_defaults(func=func)
    if ckpt:
        sp.add_argument("--ckpt", required=True, help="checkpoint (last.pt or best.pt of a run)")
    return sp


def _add_train(sub) -> None:
    from .models import MODELS
    from .training.config import AMP_MODES, PRESETS, RECIPES

    t = sub.add_parser("train", help="train a model (its paper's recipe by default)",
                       description="Train; prints the resolved config (one JSON line), writes last.pt/best.pt, "
                                   "metrics.csv, curves.png and before_after.png into --out. Runs under "
                                   "torchrun for DDP.")
    t.add_argument("--model", choices=list(MODELS), metavar="NAME",
                   help=f"registered model ({', '.join(n for n in MODELS if not n.startswith('_'))}; "
                        f"default sdpsfnet; `sdpsfnet models` describes them)")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="paper (default): full model and recipe; tiny: the small variant and a short "
                        "CPU-sized schedule")
    t.add_argument("--recipe", choices=list(RECIPES),
                   help="train with this model family's recipe and loss (default: the model's own; "
                        "--model mspfn --recipe sdpsfnet compares MSPFN with SD-PSFNet on equal terms)")
    t.add_argument("--data", help="paired folder (input/+target/ or rain/+norain/); default: synthetic rain")
    t.add_argument("--val", metavar="DIR",
                   help="validation paired folder (default: a fixed 10%% of the pairs of --data, at least one, "
                        "held out from training; without --data, synthetic pairs of photos training never sees)")
    t.add_argument("--allow-val-in-data", action="store_true", default=None,
                   help="allow --val to be the --data folder itself (validation then scores training pairs)")
    t.add_argument("--init", metavar="CKPT",
                   help="start a new run from CKPT's model weights only (optimizer, schedule and step start "
                        "fresh); any checkpoint whose tensors fit the model")
    n = t.add_mutually_exclusive_group()
    n.add_argument("--steps", type=int, help="total optimizer steps")
    n.add_argument("--epochs", type=int, help="total epochs (epoch = one pass of the loader)")
    t.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint (resume later)")
    t.add_argument("--out", help="output folder (default runs/<model>-<preset>; with --resume, its folder)")
    r = t.add_mutually_exclusive_group()
    r.add_argument("--resume", metavar="CKPT",
                   help="continue the run saved in CKPT (its options are kept: repeating one is "
                        "fine, changing one is refused)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a new run there is refused)")
    t.add_argument("--batch-size", type=int, help="per-process batch size")
    t.add_argument("--crop", type=int, help="training crop size")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--seed", type=SEED, help="0 .. 2**63-1")
    t.add_argument("--workers", type=int, help="DataLoader workers (default 0)")
    t.add_argument("--amp", choices=list(AMP_MODES),
                   help="mixed precision (default: the recipe's; auto: fp16 on CUDA, off on CPU)")
    t.add_argument("--val-every", type=int, help="validate every N steps (a multiple of --ckpt-every)")
    t.add_argument("--ckpt-every", type=int, help="write last.pt every N steps")
    _common(t)
    t.set_defaults(func=cmd_train)


IMAGES = ("Images are read at their true scale (16-bit files as 16 bits, EXIF orientation "
          "applied); metrics quantize to 8 bits first, as published deraining tables do.")
STRICT = "JSON is strict: a PSNR of identical images (infinite) is written as null."


def _add_scoring(sub) -> None:
    e = _command(sub, "eval", cmd_eval, "PSNR/SSIM of a checkpoint on a paired folder",
                 f"PSNR and SSIM (Y and RGB) of the checkpoint's output and of the rainy input on every pair "
                 f"of a paired folder. Pair sizes are checked before the model runs. {IMAGES} {STRICT}")
    e.add_argument("--data", required=True, help="paired folder (input/ + target/ or rain/ + norain/)")
    e.add_argument("--json", help="write the results (means, input means and per_image) here")
    _tiling(e), _common(e)

    m = _command(sub, "metrics", cmd_metrics, "PSNR/SSIM between two folders matched by file name",
                 f"PSNR and SSIM (Y and RGB) of every image in PRED_DIR against its namesake in TARGET_DIR "
                 f"(extension free). {IMAGES} {STRICT}", ckpt=False)
    m.add_argument("pred_dir", metavar="PRED_DIR")
    m.add_argument("target_dir", metavar="TARGET_DIR")
    m.add_argument("--json", help="write psnr_y, ssim_y, psnr_rgb, ssim_rgb and per_image here")
    _common(m, device=False)


def _add_imaging(sub) -> None:
    d = _command(sub, "derain", cmd_derain, "derain images (files or folders) into PNGs of the same size",
                 "Derain image files and folders (not recursive) into OUT/<name>.png: same size, same bit "
                 "depth (a 16-bit input gives a 16-bit PNG), grayscale inputs give grayscale PNGs. Images "
                 "larger than --tile are processed in overlapping tiles.")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    d.add_argument("--out", required=True, help="output folder")
    _tiling(d), _common(d)

    s = _command(sub, "synth", cmd_synth, "render rainy/clean pairs from clean images",
                 "Render synthetic rain on every image of --clean into OUT/input/<name>.png (rainy) and "
                 "OUT/target/<name>.png (the clean image), in the clean image's bit depth; reproducible "
                 "for a given --seed.", ckpt=False)
    s.add_argument("--clean", required=True, help="folder of clean images")
    s.add_argument("--out", required=True, help="output folder (gets input/ and target/)")
    s.add_argument("--seed", type=SEED, default=0, help="image i is rendered with seed + i (0 .. 2**63-1)")
    _common(s, device=False)

    v = _command(sub, "show-psf", cmd_show_psf, "plot the learned PSF basis and per-pixel mixing weights",
                 "Plot one dynamic-PSF module of a checkpoint as a PNG: its basis kernels (colour bar), "
                 "and with --image the dominant kernel per pixel (legend) and the most varying "
                 "mixing-weight maps (colour bar).")
    v.add_argument("--image", help="image whose mixing-weight maps are shown")
    v.add_argument("--module", type=int, default=0, help="which dynamic-PSF module (0 = first)")
    v.add_argument("--out", required=True, help="figure path; its suffix picks the format (.png, .jpg, .pdf, .svg)")
    _common(v)


def _add_tools(sub) -> None:
    z = _command(sub, "models", cmd_models, "list the model zoo (name, parameters, what)",
                 "List the registered models: name (for train --model), parameter count and what it is.",
                 writes=False, ckpt=False)
    z.add_argument("--macs", action="store_true", help="also count multiply-accumulates (slower)")
    z.add_argument("--size", type=_int_in(8), default=256, help="image side for --macs (at least 8)")

    x = _command(sub, "export", cmd_export, "export a checkpoint for deployment (torch.export or ONNX)",
                 "Export a checkpoint's model as a torch.export program (--out *.pt2; load it with "
                 "torch.export.load, no psfops needed) or as ONNX (--out *.onnx; needs the onnx and "
                 "onnxscript packages). The graph uses the psfops reference ops, i.e. plain PyTorch "
                 "operators, so it runs without Triton and converts to ONNX; it is exported on the CPU (for "
                 "a GPU: torch.export.passes.move_to_device_pass). Input "
                 "rainy (B, 3, H, W) RGB in [0, 1], any batch, any H and W of at least 2M (M = 4 for "
                 "SD-PSFNet, 8 for MSPFN; the graph pads and crops as the eager model does). Output "
                 "derained: the restored image, clamped to [0, 1].")
    x.add_argument("--out", required=True, help="output file: .pt2 or .onnx")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdpsfnet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_scoring, _add_imaging, _add_tools):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdpsfnet`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "tile", 0) and args.overlap >= args.tile:
        args.tiled.error(f"argument --overlap: must be less than --tile ({args.tile}), got {args.overlap}")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"sdpsfnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT
        print(f"\nsdpsfnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
