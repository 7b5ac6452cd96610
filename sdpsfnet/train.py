"""The trainer: a model's recipe (:mod:`sdpsfnet.recipes`), AMP, clipping, schedulers, DDP, resume,
logs, figures.

Every recipe choice is a config field: ``optimizer`` (``recipes.OPTIMIZERS``, over
``recipes.param_groups``), ``schedule`` (``"cosine"``: linear warmup then cosine to ``min_lr``,
``LinearLR`` + ``CosineAnnealingLR`` in ``SequentialLR``; ``"exponential"``: warmup then
``lr * lr_decay**(s / lr_decay_steps) + min_lr``, a ``LambdaLR``; stepped once per optimizer
step), ``amp`` (see :func:`amp_settings`), ``clip`` (global L2 norm; None: no clipping), ``loss``
(``losses.LOSSES``, summed over every emitted image).

The trainer is a chain of plain functions: :func:`train` loads the checkpoint and checks the run
folder, :func:`setup` builds a :class:`Run` (model, data; the recipe in :func:`schedule_steps`,
:func:`build_optimizer` and :func:`make_scheduler`), :func:`restore` loads a checkpoint into it,
:func:`prepare_out_folder` readies the folder and :func:`fit` loops over :func:`train_step`,
:func:`validate` (the one evaluation loop, :func:`sdpsfnet.inference.evaluate`) and :func:`save`.

Choices where the paper is silent:

- **Epoch** = ``len(loader)`` optimizer steps (per process; ``drop_last=True``). ``--epochs E``
  means ``E * len(loader)`` steps; ``--steps N`` overrides the length; neither: one epoch.
- **Warmup** = ``warmup_epochs`` (3) epochs, capped at 10% of the run so short runs (``--steps``)
  still spend most of their time at a useful learning rate. The warmup starts at
  ``lr * 1e-3`` (``LinearLR(start_factor=1e-3)``).
- **Batch size** is per process; under ``torchrun`` the effective batch is ``batch_size * world``.
- **Validation**: before the first step, every ``val_every`` steps and at the end, mean
  PSNR/SSIM (Y) of the final output over a fixed validation set (``--val DIR``, else the first
  ``val_size`` pairs of ``--data`` centre-cropped, else ``SyntheticRain("val")``), next to the
  same metric for the rainy input.
- **Files** in ``out`` (:data:`RUN_FILES`): ``last.pt`` (every ``ckpt_every`` steps and at the
  end), ``best.pt`` (best validation PSNR-Y), ``metrics.csv`` (one row per step; validation
  columns filled on validation steps), ``curves.png`` (loss and PSNR against step),
  ``before_after.png`` (labelled columns rainy | restored | clean of validation images). Only rank
  0 writes, every file atomically (:func:`sdpsfnet.files.atomic_write`; ``metrics.csv`` grows by
  appended rows and is rewritten atomically on resume).
- **Run folders are never clobbered**: a new run into a folder holding any of :data:`RUN_FILES`
  raises ``FileExistsError`` unless ``overwrite=True``, which deletes them first. A resume writes
  into its checkpoint's folder (or into a folder without a run, continuing the logged history) and
  refuses a checkpoint older than that folder's ``last.pt`` (it would discard the later steps).
  Temporary files of a killed writer are removed when a run starts. While a run writes, rank 0
  holds an ``flock`` on ``out/.train.lock`` (:func:`run_folder_lock`): a second run into the
  folder is refused naming the first's process. ``out`` may not lie inside ``data`` or ``val``.
- **A run's length is fixed at its start**: checkpoints store ``total_steps`` and
  ``train_items``; resuming after the training set changed size is refused (the schedule was
  built for the old length).
- **Crash between last.pt and best.pt**: the checkpoint records the step that scored best
  (``metrics["best_step"]``); resuming a checkpoint that is that step rewrites ``best.pt`` from it.
- **Determinism**: everything is seeded from ``seed``; the data order of epoch ``e`` is the
  permutation of ``DistributedSampler`` seeded with ``seed + e`` and a resumed run skips to its
  position in it, so on CPU with ``num_workers=0`` ``N`` steps straight equal ``N/2`` steps plus
  resume plus ``N/2`` bitwise, however often the run is killed and resumed. With workers, each
  worker is seeded from ``seed + epoch`` (the loader's generator) and the worker id; resumes then
  repeat data order but not augmentation.
- **NaN/Inf loss** (any rank): the run stops with :class:`TrainingDiverged`; nothing is written
  after the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from .checkpoint import (FORMAT, CheckpointError, bad_field, get_rng_state, load_checkpoint,
                         load_weights, save_checkpoint, set_rng_state)
from .data import PairedImages, check_pairs, save_image
from .device import pick_device
from .files import atomic_write, check_writable, remove_stale_temps
from .inference import evaluate
from .losses import LOSSES
from .metrics import MIN_SIDE
from .rain import SyntheticRain
from .recipes import OPTIMIZERS, param_groups, resolve
from .registry import build_model

SCHEDULES = ("cosine", "exponential")


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in the checkpoint as a dict). The defaults are
    SD-PSFNet's recipe; :func:`make_config` fills in a model's own (:mod:`sdpsfnet.recipes`)."""
    model: str = "sdpsfnet"
    overrides: dict = field(default_factory=dict)  # build_model(model, **overrides)
    recipe: str = "sdpsfnet"  # the recipe the fields below came from (a record)
    data: str | None = None   # paired folder; None -> synthetic rain
    val: str | None = None    # validation paired folder (default: see module docstring)
    out: str = "runs/sdpsfnet"
    crop: int = 128
    batch_size: int = 8
    epochs: int | None = 2000
    steps: int | None = None  # total optimizer steps; overrides epochs
    stop_at: int | None = None  # stop (with a checkpoint) after this step, as if preempted
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-4
    min_lr: float = 1e-6  # cosine: the final lr; exponential: the additive floor
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # cosine | exponential
    lr_decay: float = 0.8  # exponential: factor per lr_decay_steps
    lr_decay_steps: int = 20000
    warmup_epochs: float = 3.0
    clip: float | None = 2.0  # None: no clipping
    amp: str = "auto"  # auto | bf16 | fp16 | off
    loss: str = "sdpsfnet"  # a key of losses.LOSSES
    seed: int = 0
    num_workers: int = 0
    val_every: int = 1000
    ckpt_every: int = 1000
    val_crop: int | None = None  # centre-crop validation images to this size (None: whole)
    val_size: int = 16
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {sorted(valid)}, got {getattr(self, name)!r}")
        for name in ("steps", "epochs", "stop_at", "batch_size", "val_size"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.val_every < 1 or self.ckpt_every < 1 or self.val_every % self.ckpt_every:
            raise ValueError(f"val_every ({self.val_every}) must be a positive multiple of ckpt_every "
                             f"({self.ckpt_every}), so best.pt is written at the step that scored best")
        for name in ("data", "val"):  # stored resolved: a resume from another folder finds them
            if getattr(self, name) is not None:
                setattr(self, name, os.path.realpath(getattr(self, name)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_config(model: str = "sdpsfnet", preset: str = "paper", recipe: str | None = None,
                **options) -> TrainConfig:
    """Config of ``model`` under ``preset`` with its recipe (or ``recipe``), then ``options``
    (``None`` values are ignored): see :func:`sdpsfnet.recipes.resolve`."""
    return TrainConfig(**resolve(model, preset, recipe, **options))


class TrainingDiverged(RuntimeError):
    """The loss, or (without a GradScaler) the gradient, became NaN or Inf; the message names the
    step and the last good checkpoint."""


def _diverged(what: str, step: int, last_path: str) -> TrainingDiverged:
    good = last_path if os.path.isfile(last_path) else "none written yet"
    return TrainingDiverged(f"{what} at step {step + 1}; stopping. Last good checkpoint: {good}")


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded permutation per epoch, sharded over ranks) that can start
    ``skip`` samples into this rank's share of the epoch, for an exact mid-epoch resume."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        it = super().__iter__()
        for _ in range(self.skip):
            next(it)
        return it

    def __len__(self) -> int:
        return self.num_samples - self.skip


# ----------------------------------------------------------------------------------- helpers
def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def amp_settings(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device``: None (off), torch.bfloat16 or torch.float16.

    ``auto``: off on CPU; fp16 (with a GradScaler) on CUDA, as SD-PSFNet's paper trains. bf16 only
    when asked for.
    """
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (AdamW or Adam) at ``cfg.lr`` over :func:`sdpsfnet.recipes.param_groups`:
    weight decay ``cfg.weight_decay`` on matrices and conv kernels, none on 1-D parameters and
    the PSF bases."""
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), lr=cfg.lr)


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warmup) optimizer steps: ``steps``, else ``epochs`` (else one) epochs; warmup
    ``warmup_epochs`` epochs, capped at a tenth of the run."""
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch
    return total, min(round(cfg.warmup_epochs * steps_per_epoch), total // 10)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   min_lr: float, schedule: str = "cosine", lr_decay: float = 0.8,
                   lr_decay_steps: int = 20000) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup (from 1e-3 x lr) for ``warmup_steps``, then ``schedule``: ``"cosine"`` to
    ``min_lr`` at ``total_steps``, or ``"exponential"``, ``lr * lr_decay**(s / lr_decay_steps) +
    min_lr`` at ``s`` steps after the warmup (MSPFN's). One ``.step()`` per optimizer step."""
    sched = torch.optim.lr_scheduler
    if schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    else:
        main = sched.LambdaLR(optimizer, [lambda s, lr=g["lr"]: lr_decay ** (s / lr_decay_steps) + min_lr / lr
                                          for g in optimizer.param_groups])
    if warmup_steps <= 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation, figures) without moving any global RNG."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class CenterCropped(Dataset):
    """Items (rainy, clean, name) of ``dataset`` centre-cropped to at most ``size`` x ``size``."""

    def __init__(self, dataset: Dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        rainy, clean, name = self.dataset[i]
        h, w = rainy.shape[-2:]
        th, tw = min(h, self.size), min(w, self.size)
        top, left = (h - th) // 2, (w - tw) // 2
        return rainy[:, top:top + th, left:left + tw], clean[:, top:top + th, left:left + tw], name


def default_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for ``cfg`` (see the module docstring)."""
    if cfg.data is None:
        train_set, val_set = SyntheticRain("train", crop=cfg.crop), SyntheticRain("val", size=cfg.val_size)
    else:
        train_set = PairedImages(cfg.data, crop=cfg.crop, train=True)
        val_set = PairedImages(cfg.val or cfg.data, crop=None, train=False)
        check_pairs(val_set.pairs[:cfg.val_size], MIN_SIDE, "validation (SSIM's window) needs")
        val_set = Subset(val_set, range(min(cfg.val_size, len(val_set))))
    return train_set, (val_set if cfg.val_crop is None else CenterCropped(val_set, cfg.val_crop))


# -------------------------------------------------------------------------------- run files
# Everything the trainer writes into ``out``: a folder holding any of them holds a run.
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "curves.png", "before_after.png")
CSV_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "seconds",
              "val_psnr_y", "val_ssim_y", "input_psnr_y", "input_ssim_y"]
VAL_FIELDS = CSV_FIELDS[6:]
COLUMN_LABELS = ("rainy", "restored", "clean")


def _read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged_rows(path: str, upto: int) -> list[dict]:
    """The rows of ``metrics.csv`` at ``path`` for steps up to ``upto``; a row cut short by a kill
    (missing fields) is dropped."""
    return [r for r in _read_csv(path)
            if None not in r.values() and r["step"].isdigit() and int(r["step"]) <= upto]


def write_csv(path: str, rows: list[dict]) -> None:
    """(Re)write ``metrics.csv`` atomically: the header, then ``rows``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())


def append_row(path: str, row: dict) -> None:
    """Append one row to ``metrics.csv``, starting the file (with its header) if there is none."""
    new = not os.path.isfile(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_curves(csv_path: str, png_path: str) -> None:
    """Plot loss (log scale) and validation PSNR-Y against step from ``metrics.csv``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(csv_path)
    if not rows:
        return
    steps = [int(r["step"]) for r in rows if r["loss"]]
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_psnr_y"]), float(r["input_psnr_y"]))
           for r in rows if r.get("val_psnr_y")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    w = len(loss) // 50
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        a.plot(steps[w - 1:], smooth, lw=1.5, label=f"mean of {w}")
    a.set_yscale("log"), a.set_xlabel("step"), a.set_ylabel("training loss"), a.legend()
    if val:
        s, p, p0 = zip(*val)
        b.plot(s, p, "o-", label="restored")
        b.plot(s, p0, "x--", color="gray", label="rainy input")
        b.legend()
    b.set_xlabel("step"), b.set_ylabel("validation PSNR-Y (dB)")
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def label_strip(labels: tuple[str, ...], width: int) -> tuple[Tensor, int]:
    """(strip, k): white ``labels`` on black, each centred over its column, for columns of
    ``width * k`` px; k is the smallest integer enlargement of ``width`` that fits the widest
    label with 2 px to spare on each side. The strip is a (3, h, width * k * len(labels)) image."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [measure.textbbox((0, 0), text, font=font) for text in labels]
    k = -(-(max(b[2] - b[0] for b in boxes) + 4) // width)
    height = max(b[3] for b in boxes) + 4
    strip = Image.new("L", (width * k * len(labels), height), 0)
    draw = ImageDraw.Draw(strip)
    for i, (text, box) in enumerate(zip(labels, boxes)):
        draw.text(((i + 0.5) * width * k - (box[2] - box[0]) / 2, 2), text, fill=255, font=font)
    return torch.from_numpy(np.asarray(strip).copy()).float().div(255).expand(3, -1, -1), k


def write_before_after(samples: list[tuple[Tensor, ...]], path: str) -> None:
    """Rows of (rainy, restored, clean) images under the column labels rainy | restored | clean.

    Every image is padded (black) to the widest so the columns line up, and the grid is enlarged
    (nearest neighbour, integer factor) until a column is wider than its label.
    """
    width = max(im.shape[2] for s in samples for im in s)
    grid = torch.cat([torch.cat([F.pad(im, (0, width - im.shape[2])) for im in s], dim=2)
                      for s in samples], dim=1)
    strip, k = label_strip(COLUMN_LABELS, width)
    if k > 1:
        grid = F.interpolate(grid[None], scale_factor=k, mode="nearest")[0]
    save_image(torch.cat([strip, grid], dim=1), path)


# ---------------------------------------------------------------------------- the run folder
def _holds_run(folder: str) -> list[str]:
    return [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_out_folder(out: str, resume: str | None, step: int, overwrite: bool) -> None:
    """Refuse (``FileExistsError``) to clobber a run; reads only, so every rank can call it.

    A new run needs ``out`` without a run (:data:`RUN_FILES`), or ``overwrite``. A resume of a
    checkpoint at ``step`` writes into its own folder, where it must not be older than
    ``last.pt``, or into a folder without a run.
    """
    found = _holds_run(out)
    if not found or (resume is None and overwrite):
        return
    held = f"{out} already holds a run ({', '.join(found)})"
    if resume is None:
        again = ", replace it with --overwrite" if os.path.isfile(os.path.join(out, "last.pt")) else ""
        raise FileExistsError(f"{held}; {resume_advice(out)}{again}, or choose another --out")
    if not _same_file(os.path.dirname(os.path.abspath(resume)), out):
        raise FileExistsError(f"{held}; resume {resume} into its own folder or an empty --out")
    last = os.path.join(out, "last.pt")
    if os.path.isfile(last) and not _same_file(last, resume):
        later = int(load_checkpoint(last)["step"])
        if later > step:
            raise FileExistsError(f"resuming {resume} (step {step}) in {out} would discard steps "
                                  f"{step + 1}..{later} of {last}; resume from {last}, or give "
                                  f"another --out to branch off at step {step}")


def resume_advice(out: str) -> str:
    """How to go on with the run in ``out``: resume its ``last.pt``, or, stopped before its first
    checkpoint, start again."""
    last = os.path.join(out, "last.pt")
    if os.path.isfile(last):
        return f"continue it with --resume {last}"
    return "it stopped before its first checkpoint (no last.pt): start it again with --overwrite"


def refuse_out_in_data(cfg: TrainConfig) -> None:
    """ValueError if ``cfg.out`` is, or lies inside, the ``data`` or ``val`` folder: the run's
    files would land among the images (and break the dataset)."""
    out = os.path.realpath(cfg.out)
    for name in ("data", "val"):
        folder = getattr(cfg, name)
        inside = folder is not None and os.path.commonpath([out, os.path.realpath(folder)]) == os.path.realpath(folder)
        if inside:
            raise ValueError(f"--out {cfg.out} lies inside the --{name} folder {folder}: the run's files "
                             f"would be written among the images; choose an --out outside it")


LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def run_folder_lock(out: str):
    """Hold an exclusive ``flock`` on ``out/.train.lock`` (which records this process's id) while
    a run writes into ``out``; ``FileExistsError`` naming the holder if another live process holds
    it. The kernel drops the lock when its process dies, so a killed run never blocks the next.
    A folder this call created is removed again if the run wrote nothing into it."""
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    lock = os.path.join(out, LOCK_NAME)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FileExistsError(f"{out} is in use by another train run (process {holder or 'unknown'}); "
                              f"wait for it to finish or stop it, or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and os.listdir(out) == [LOCK_NAME]:  # a run that failed before writing
            with contextlib.suppress(OSError):
                os.unlink(lock)
                os.rmdir(out)
        os.close(fd)  # releases the lock


def prepare_out_folder(out: str, resume: str | None, ckpt: dict | None, overwrite: bool) -> None:
    """Rank 0, before the first write: create ``out``, delete killed writers' temporary files and,
    with ``overwrite``, the previous run's files; on resume, rewrite ``metrics.csv`` with the
    checkpoint's logged history and repair ``best.pt`` (:func:`repair_best`)."""
    os.makedirs(out, exist_ok=True)
    remove_stale_temps(out)
    if overwrite:
        for name in _holds_run(out):
            os.remove(os.path.join(out, name))
    if ckpt is not None:
        source = os.path.join(os.path.dirname(os.path.abspath(resume)), "metrics.csv")
        write_csv(os.path.join(out, "metrics.csv"), logged_rows(source, int(ckpt["step"])))
        repair_best(ckpt, resume, out)


def repair_best(ckpt: dict, resume: str, out: str) -> None:
    """Copy the checkpoint ``resume`` to ``out/best.pt`` if its step is the best-scoring one: a
    crash between writing ``last.pt`` and ``best.pt`` left ``best.pt`` stale. (When nothing
    crashed, this rewrites the same content.)"""
    best = os.path.join(out, "best.pt")
    if ckpt.get("metrics", {}).get("best_step") == ckpt["step"] and not _same_file(best, resume):
        with open(resume, "rb") as src, atomic_write(best) as dst:
            shutil.copyfileobj(src, dst)


# ------------------------------------------------------------------------------------ trainer
@dataclass
class Run:
    """One process's training state: what :func:`setup` builds and the loop advances."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    criterion: Callable
    train_set: Dataset
    val_set: Dataset
    sampler: ResumableSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total: int
    warmup: int
    stop: int
    step: int = 0
    best: float = -math.inf
    best_step: int | None = None
    best_pending: bool = False  # a new best awaits its best.pt
    last_val: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out, name)


def _seed(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def resumed_config(cfg: TrainConfig, ckpt: dict, path: str) -> TrainConfig:
    """The checkpoint's config, with ``out``, ``stop_at``, ``num_workers``, ``device`` and
    ``progress`` taken from ``cfg``."""
    kept = {k: getattr(cfg, k) for k in ("out", "stop_at", "num_workers", "device", "progress")}
    try:
        return TrainConfig(**{**ckpt["config"], **kept})
    except TypeError as e:
        raise CheckpointError(f"{path} holds a config this version does not know ({e})") from e


def init_distributed(device: torch.device, world: int) -> bool:
    """Under torchrun, join the process group (nccl on CUDA, gloo on CPU) unless the caller did,
    then wait for every rank; returns whether this call created the group."""
    if world == 1:
        return False
    created = not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dist.barrier()  # every rank has checked the run folder before rank 0 writes into it
    return created


def setup(cfg: TrainConfig, rank: int, world: int, device: torch.device, model: nn.Module | None,
          train_set: Dataset | None, val_set: Dataset | None, criterion: Callable | None) -> Run:
    """Seed, build what is not given (model, datasets, loss), the optimizer, schedule and scaler."""
    _seed(cfg.seed)  # the model init is identical on every rank (DDP also broadcasts it)
    model = build_model(cfg.model, **cfg.overrides) if model is None else model
    model.to(device)
    criterion = LOSSES[cfg.loss]() if criterion is None else criterion
    if isinstance(criterion, nn.Module):
        criterion.to(device)
    if train_set is None or val_set is None:
        d_train, d_val = default_datasets(cfg)
        train_set = d_train if train_set is None else train_set
        val_set = d_val if val_set is None else val_set
    if len(val_set) == 0:
        raise ValueError("the validation set is empty")
    _seed(cfg.seed + rank)  # per-rank stream for augmentation
    sampler = ResumableSampler(train_set, world, rank, cfg.seed)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the training set ({len(train_set)} items over {world} process(es)) "
                         f"is smaller than one batch of {cfg.batch_size}")
    total, warmup = schedule_steps(cfg, steps_per_epoch)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = amp_settings(device, cfg.amp)
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(cfg, rank, world, device, model, net, criterion, train_set, val_set, sampler,
               optimizer, make_scheduler(optimizer, total, warmup, cfg.min_lr, cfg.schedule, cfg.lr_decay,
                                         cfg.lr_decay_steps),
               torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), amp_dtype,
               steps_per_epoch, total, warmup, stop=total if cfg.stop_at is None else min(total, cfg.stop_at))


def restore(run: Run, ckpt: dict, path: str) -> None:
    """Load the checkpoint ``ckpt`` (read from ``path``) into ``run``: weights, optimizer,
    schedule, scaler, step, best score and this rank's RNG state."""
    load_weights(run.model, ckpt["model"], path)
    items, was, done = len(run.train_set), ckpt.get("train_items"), ckpt.get("total_steps")
    if done != ckpt["step"] and (was is not None and was != items or done not in (None, run.total)):
        raise ValueError(f"the training data changed since the run in {path} started ({was} items then, "
                         f"{items} now: {run.total} steps instead of {done}); its "
                         f"learning-rate schedule was built for its length: restore the data, or start "
                         f"a new run (another --out, or --overwrite)")
    step = ckpt["step"]
    if step > run.total and step != done:
        raise bad_field(path, "step", step, f"at most the run's {run.total} steps")
    with _as_field(path, "optimizer"):
        run.optimizer.load_state_dict(ckpt["optimizer"])
        for p in (p for g in run.optimizer.param_groups for p in g["params"]):
            for name, value in run.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"{name} {tuple(value.shape)} for a parameter {tuple(p.shape)}")
    with _as_field(path, "scheduler"):
        if _layout(ckpt["scheduler"]) != _layout(run.scheduler.state_dict()):
            raise ValueError("its entries are not those of the run's schedule")
        if ckpt["scheduler"]["last_epoch"] != step:
            raise ValueError(f"it is at step {ckpt['scheduler']['last_epoch']}, the checkpoint at {step}")
        run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        with _as_field(path, "scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
    run.step = step
    if run.step >= run.stop and run.step < run.total:
        raise ValueError(f"stop_at {run.cfg.stop_at} is not after step {run.step} of {path}")
    metrics = ckpt.get("metrics", {})
    run.best, run.best_step = float(metrics.get("best_psnr_y", -math.inf)), metrics.get("best_step")
    run.last_val = {k: metrics[k] for k in VAL_FIELDS if k in metrics}
    rng = ckpt["rng"]
    with _as_field(path, "rng"):
        set_rng_state(rng[run.rank] if len(rng) == run.world else rng[0])


def _layout(obj):
    """The keys and list lengths of a nested state dict (its shape, not its values)."""
    if isinstance(obj, dict):
        return {k: _layout(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_layout(v) for v in obj]
    return None


@contextlib.contextmanager
def _as_field(path: str, name: str):
    """Turn an error loading the checkpoint's field ``name`` into one line naming file and field."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path}: field {name!r} does not fit this run ({e}); the file was edited "
                              f"or damaged: resume from another checkpoint of the run") from e


def epoch_batches(run: Run, epoch: int, in_epoch: int):
    """Iterator over this rank's batches of ``epoch`` from batch ``in_epoch`` on."""
    run.sampler.set_position(epoch, in_epoch * run.cfg.batch_size)
    loader = DataLoader(run.train_set, batch_size=run.cfg.batch_size, sampler=run.sampler,
                        num_workers=run.cfg.num_workers, drop_last=True,
                        generator=torch.Generator().manual_seed(run.cfg.seed + epoch),
                        pin_memory=run.device.type == "cuda", persistent_workers=False)
    return iter(loader)


def train_step(run: Run, batch) -> tuple[float, float, float]:
    """One optimizer step on ``batch``; returns (loss averaged over ranks, gradient norm, lr used).
    Raises :class:`TrainingDiverged` before the weights change if the loss (any rank) or, without
    a GradScaler, the gradient is not finite."""
    rainy, clean = (t.to(run.device, non_blocking=True) for t in batch[:2])
    amp = run.amp_dtype
    with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outputs = run.net(rainy)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    loss = run.criterion([o.float() for o in outputs], clean)
    mean_loss = loss.detach().clone()  # the loss over all ranks (logged; NaN if any rank's is)
    if run.world > 1:
        dist.all_reduce(mean_loss)
        mean_loss /= run.world
    if not torch.isfinite(mean_loss):
        raise _diverged(f"loss is {mean_loss.item()}", run.step, run.path("last.pt"))
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    grad_norm = nn.utils.clip_grad_norm_(run.model.parameters(), math.inf if run.cfg.clip is None else run.cfg.clip)
    # A non-finite gradient with a finite loss: fp16's GradScaler skips the step and lowers its
    # scale; without a scaler the step would write NaN into the weights. grad_norm is computed
    # from the all-reduced gradients, so every rank takes the same branch.
    if not run.scaler.is_enabled() and not torch.isfinite(grad_norm):
        raise _diverged(f"gradient norm is {grad_norm.item()} (loss {mean_loss.item():.6g})",
                        run.step, run.path("last.pt"))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return mean_loss.item(), float(grad_norm), lr


def validate(run: Run) -> dict:
    """Rank 0: mean PSNR/SSIM-Y of the restored and of the rainy validation images
    (:data:`VAL_FIELDS`) by :func:`sdpsfnet.inference.evaluate`; writes ``before_after.png`` of
    the first 4 images and records a new best. No global RNG moves."""
    samples = []

    def keep(i, rainy, restored, clean):
        if i < 4:
            samples.append((rainy, restored, clean))

    with preserved_rng():
        run.model.eval()
        result = evaluate(run.model, run.val_set, tile=None, progress=False, amp_dtype=run.amp_dtype,
                          on_image=keep)
        run.model.train()
    write_before_after(samples, run.path("before_after.png"))
    run.last_val = {"val_psnr_y": result["psnr_y"], "val_ssim_y": result["ssim_y"],
                    "input_psnr_y": result["input"]["psnr_y"], "input_ssim_y": result["input"]["ssim_y"]}
    if run.step > 0 and run.last_val["val_psnr_y"] > run.best:
        run.best, run.best_step, run.best_pending = run.last_val["val_psnr_y"], run.step, True
    return {k: f"{v:.4f}" for k, v in run.last_val.items()}


def checkpoint_state(run: Run) -> dict:
    """The checkpoint of ``run`` now (see :mod:`sdpsfnet.checkpoint`); under DDP a collective that
    gathers every rank's RNG state."""
    rng = [get_rng_state()]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    spec = getattr(run.model, "build_spec", {"name": run.cfg.model, "overrides": run.cfg.overrides})
    return {"format": FORMAT, "step": run.step, "epoch": run.step // run.steps_per_epoch,
            "model": run.model.state_dict(), "build_spec": spec,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "config": run.cfg.to_dict(), "rng": rng,
            "total_steps": run.total, "train_items": len(run.train_set),
            "metrics": {**run.last_val, "best_psnr_y": run.best, "best_step": run.best_step}}


def save(run: Run) -> None:
    """Checkpoint (every rank takes part): rank 0 writes ``last.pt``, then ``best.pt`` if this
    step scored best, then ``curves.png``."""
    state = checkpoint_state(run)
    if not run.is_main:
        return
    save_checkpoint(state, run.path("last.pt"))
    if run.best_pending:
        save_checkpoint(state, run.path("best.pt"))
        run.best_pending = False
    write_curves(run.path("metrics.csv"), run.path("curves.png"))


def fit(run: Run) -> dict:
    """Train from ``run.step`` to ``run.stop``: log a row per step, validate and checkpoint on
    schedule; returns the summary :func:`train` describes."""
    cfg = run.cfg
    bar = tqdm(total=run.stop, initial=run.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and run.is_main))
    summary: dict[str, Any] = {"start_step": run.step}
    t0 = time.perf_counter()
    if run.is_main and run.step == 0:  # the starting point of the PSNR curve
        append_row(run.path("metrics.csv"), {"step": 0, "epoch": 0, **validate(run)})
    run.model.train()
    batches = None
    try:
        while run.step < run.stop:
            epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
            if batches is None or in_epoch == 0:
                batches = epoch_batches(run, epoch, in_epoch)
            loss, grad_norm, lr = train_step(run, next(batches))
            run.step += 1
            bar.update(1)
            row = {"step": run.step, "epoch": epoch, "lr": f"{lr:.6g}", "loss": f"{loss:.6g}",
                   "grad_norm": f"{grad_norm:.6g}", "seconds": f"{time.perf_counter() - t0:.3f}"}
            if run.is_main and (run.step % cfg.val_every == 0 or run.step == run.stop):
                row.update(validate(run))
                bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{run.last_val['val_psnr_y']:.2f}")
            elif run.is_main and run.step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")
            if run.is_main:
                append_row(run.path("metrics.csv"), row)
            if run.step % cfg.ckpt_every == 0 or run.step == run.stop:
                save(run)
            summary["loss"] = loss
    finally:
        bar.close()  # also on Ctrl-C, before the message saying how to resume
    return {**summary, "step": run.step, "total_steps": run.total, "warmup_steps": run.warmup,
            "steps_per_epoch": run.steps_per_epoch, "seconds": time.perf_counter() - t0, **run.last_val}


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False,
          model: nn.Module | None = None, train_set: Dataset | None = None,
          val_set: Dataset | None = None, criterion: Callable | None = None) -> dict:
    """Run (or resume) training; returns a summary dict (start_step, step, total_steps, final
    loss if a step ran, latest validation PSNR/SSIM).

    ``model``, ``train_set``, ``val_set``, ``criterion`` default to ``build_model(cfg.model,
    **cfg.overrides)``, :func:`default_datasets` and ``LOSSES[cfg.loss]()``. With ``resume``, the
    checkpoint's config is used, except ``out``, ``stop_at``, ``num_workers``, ``device`` and
    ``progress`` from ``cfg``. ``overwrite`` (new runs only) replaces a run already in ``cfg.out``.
    Under torchrun (``WORLD_SIZE`` > 1) it joins the process group (nccl on CUDA, gloo on CPU) and
    wraps the model in DDP.
    Raises ``FileExistsError`` rather than clobber a run (see the module docstring),
    ``FileNotFoundError``/:class:`~sdpsfnet.checkpoint.CheckpointError` for a bad ``resume``,
    ``ValueError`` for a bad device, and :class:`TrainingDiverged` on a NaN/Inf loss.
    """
    if resume is not None and overwrite:
        raise ValueError("overwrite is for new runs; a resume continues the run in its folder")
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, resumable=True)
        cfg = resumed_config(cfg, ckpt, resume)
    rank, world, local_rank = _dist_info()
    device = pick_device(cfg.device, local_rank)
    refuse_out_in_data(cfg)
    check_writable(cfg.out, folder=True)
    with run_folder_lock(cfg.out) if rank == 0 else contextlib.nullcontext():
        check_out_folder(cfg.out, resume, int(ckpt["step"]) if ckpt else 0, overwrite)
        own_group = init_distributed(device, world)
        try:
            run = setup(cfg, rank, world, device, model, train_set, val_set, criterion)
            if ckpt is not None:
                restore(run, ckpt, resume)
            if run.is_main:
                prepare_out_folder(cfg.out, resume, ckpt, overwrite)
            return fit(run)
        finally:
            if own_group:
                dist.destroy_process_group()
