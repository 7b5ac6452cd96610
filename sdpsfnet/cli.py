"""The ``sdpsfnet`` command (also ``python -m sdpsfnet``): train, eval, metrics, derain, synth,
show-psf. ``sdpsfnet <command> --help`` documents each; errors print one line and exit with 1
(2 for bad usage, argparse's convention)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _write_json(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")


def _print_means(title: str, result: dict) -> None:
    print(f"{title}: PSNR-Y {result['psnr_y']:.2f} dB  SSIM-Y {result['ssim_y']:.4f}  "
          f"PSNR-RGB {result['psnr_rgb']:.2f} dB  SSIM-RGB {result['ssim_rgb']:.4f}  "
          f"({len(result['per_image'])} images)")


# Options of `train` that define a run: with --resume they may repeat the checkpoint's value but
# not change it (a run's schedule is built for its length and recipe).
RUN_OPTIONS = ("recipe", "data", "val", "steps", "epochs", "batch_size", "crop", "lr", "seed", "amp",
               "val_every", "ckpt_every")


def _model_and_preset(a) -> tuple[str, str]:
    return a.model or "sdpsfnet", a.preset or "paper"


def _check_resume_options(a, run_config: dict) -> None:
    """ValueError naming the first run-defining option given with --resume that differs from the
    run in the checkpoint."""
    from .train import make_config

    given = {k: getattr(a, k) for k in RUN_OPTIONS if getattr(a, k) is not None}
    if a.model or a.preset:  # the model a new run would get (the tiny preset swaps it)
        given["model"] = make_config(*_model_and_preset(a)).model
    for name, value in given.items():
        old = run_config.get(name)
        same = (os.path.abspath(value) == os.path.abspath(old) if name in ("data", "val") and old
                else value == old)
        if not same:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} differs from the run being resumed ({name}={old!r} in "
                             f"{a.resume}): a resumed run keeps its length and recipe, which its "
                             f"learning-rate schedule was built for; leave {flag} out, or start a "
                             f"new run in another --out")


def cmd_train(a) -> int:
    from .checkpoint import load_checkpoint
    from .train import TrainConfig, TrainingDiverged, make_config, train

    if a.resume:
        _check_resume_options(a, load_checkpoint(a.resume, resumable=True)["config"])
        cfg = TrainConfig(out=a.out or os.path.dirname(os.path.abspath(a.resume)), stop_at=a.stop_at,
                          num_workers=a.workers or 0, device=a.device, progress=not a.no_progress)
    else:
        cfg = make_config(*_model_and_preset(a), a.recipe, data=a.data, val=a.val,
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
    if summary["start_step"] == summary["step"]:
        print(f"nothing to train: the run is complete (step {summary['step']}/{summary['total_steps']}); "
              f"outputs in {cfg.out}")
    elif "val_psnr_y" in summary:
        print(f"step {summary['step']}/{summary['total_steps']}: loss {summary['loss']:.4f}, "
              f"validation PSNR-Y {summary['val_psnr_y']:.2f} dB (rainy input "
              f"{summary['input_psnr_y']:.2f} dB), {summary['seconds']:.0f} s; outputs in {cfg.out}")
    return 0


def _load(ckpt: str, device: str):
    from .checkpoint import model_from_checkpoint
    from .device import pick_device

    dev = pick_device(device)  # before loading: a bad --device fails fast
    return model_from_checkpoint(ckpt).to(dev)


def cmd_eval(a) -> int:
    from .inference import evaluate

    result = evaluate(_load(a.ckpt, a.device), a.data, tile=a.tile or None, overlap=a.overlap,
                      progress=not a.no_progress)
    _print_means("restored", result)
    inp = result["input"]
    print(f"rainy input: PSNR-Y {inp['psnr_y']:.2f} dB  SSIM-Y {inp['ssim_y']:.4f}")
    _write_json(result, a.json)
    return 0


def cmd_metrics(a) -> int:
    from .metrics import score_folders

    result = score_folders(a.pred_dir, a.target_dir, progress=not a.no_progress)
    _print_means("metrics", result)
    _write_json(result, a.json)
    return 0


def cmd_derain(a) -> int:
    from .inference import derain_paths

    written = derain_paths(_load(a.ckpt, a.device), a.inputs, a.out, tile=a.tile or None,
                           overlap=a.overlap, progress=not a.no_progress)
    print(f"wrote {len(written)} image(s) to {a.out}")
    return 0


def cmd_synth(a) -> int:
    from .rain import synth_folder

    synth_folder(a.clean, a.out, seed=a.seed)
    print(f"wrote rainy/clean pairs to {a.out}")
    return 0


def cmd_show_psf(a) -> int:
    from .data import load_image
    from .inference import show_psf

    model = _load(a.ckpt, a.device)
    image = load_image(a.image) if a.image else None
    show_psf(model, a.out, image=image, module=a.module)
    print(f"wrote {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdpsfnet", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, device=True):
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        if device:
            sp.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")

    def tiling(sp):
        sp.add_argument("--tile", type=int, default=512, help="tile size in px for large images (0: never tile)")
        sp.add_argument("--overlap", type=int, default=64, help="tile overlap in px")

    t = sub.add_parser("train", help="train a model (its paper's recipe by default)",
                       description="Train; prints the resolved config (one JSON line), writes last.pt/best.pt, "
                                   "metrics.csv, curves.png and before_after.png into --out. Runs under "
                                   "torchrun for DDP.")
    t.add_argument("--model", help="registered model name (sdpsfnet, mspfn, tiny, ...; default sdpsfnet)")
    t.add_argument("--preset", choices=["paper", "tiny"],
                   help="paper (default): full model and recipe; tiny: the small variant and a short "
                        "CPU-sized schedule")
    t.add_argument("--recipe", choices=["sdpsfnet", "mspfn"],
                   help="train with this model family's recipe and loss (default: the model's own; "
                        "--model mspfn --recipe sdpsfnet compares MSPFN with SD-PSFNet on equal terms)")
    t.add_argument("--data", help="paired folder (input/+target/ or rain/+norain/); default: synthetic rain")
    t.add_argument("--val", help="validation paired folder (default: first pairs of --data)")
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
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int, help="DataLoader workers (default 0)")
    t.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision (default: the recipe's; auto: fp16 on CUDA, off on CPU)")
    t.add_argument("--val-every", type=int, help="validate every N steps (a multiple of --ckpt-every)")
    t.add_argument("--ckpt-every", type=int, help="write last.pt every N steps")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="PSNR/SSIM of a checkpoint on a paired folder")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--data", required=True, help="paired folder")
    e.add_argument("--json", help="write the results (means and per_image) here")
    tiling(e), common(e)
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("metrics", help="PSNR/SSIM between two folders matched by file name")
    m.add_argument("pred_dir")
    m.add_argument("target_dir")
    m.add_argument("--json", help="write psnr_y, ssim_y, psnr_rgb, ssim_rgb and per_image here")
    common(m, device=False)
    m.set_defaults(func=cmd_metrics)

    d = sub.add_parser("derain", help="derain images (files or folders) into PNGs of the same size")
    d.add_argument("--ckpt", required=True)
    d.add_argument("inputs", nargs="+", metavar="INPUT")
    d.add_argument("--out", required=True)
    tiling(d), common(d)
    d.set_defaults(func=cmd_derain)

    s = sub.add_parser("synth", help="render rainy/clean pairs from clean images")
    s.add_argument("--clean", required=True, help="folder of clean images")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("show-psf", help="plot the learned PSF basis and per-pixel mixing weights")
    v.add_argument("--ckpt", required=True)
    v.add_argument("--image", help="image whose mixing-weight maps are shown")
    v.add_argument("--module", type=int, default=0, help="which dynamic-PSF module (0 = first)")
    v.add_argument("--out", required=True, help="PNG path")
    common(v)
    v.set_defaults(func=cmd_show_psf)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdpsfnet`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"sdpsfnet {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
