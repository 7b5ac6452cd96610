"""The trainer: a model's recipe (:mod:`sdpsfnet.recipes`), AMP, clipping, schedulers, DDP, resume,
logs, figures.

Every recipe choice is a config field: ``optimizer`` (``recipes.OPTIMIZERS``, over
``recipes.param_groups``), ``schedule`` (``"cosine"``: linear warmup then cosine to ``min_lr``,
``LinearLR`` + ``CosineAnnealingLR`` in ``SequentialLR``; ``"exponential"``: warmup then
``lr * lr_decay**(s / lr_decay_steps) + min_lr``, a ``LambdaLR``; stepped once per optimizer
step), ``amp`` (see :func:`amp_settings`), ``clip`` (global L2 norm; None: no clipping), ``loss``
(``losses.LOSSES``, summed over every emitted image).

Choices where the spec is silent:

- **Epoch** = ``len(loader)`` optimizer steps (per process; ``drop_last=True``). ``--epochs E``
  means ``E * len(loader)`` steps; ``--steps N`` overrides the length.
- **Warmup** = ``warmup_epochs`` (3) epochs, capped at 10% of the run so short runs (``--steps``)
  still spend most of their time at a useful learning rate. The warmup starts at
  ``lr * 1e-3`` (``LinearLR(start_factor=1e-3)``).
- **Batch size** is per process; under ``torchrun`` the effective batch is ``batch_size * world``.
- **Validation**: before the first step, every ``val_every`` steps and at the end, mean PSNR/SSIM (Y) of the final output
  over a fixed validation set (``--val DIR``, else the first ``val_size`` pairs of ``--data``
  centre-cropped, else ``SyntheticRain("val")``), next to the same metric for the rainy input.
- **Files** in ``out``: ``last.pt`` (every ``ckpt_every`` steps and at the end), ``best.pt``
  (best validation PSNR-Y), ``metrics.csv`` (one row per step; validation columns filled on
  validation steps), ``curves.png`` (loss and PSNR against step), ``before_after.png`` (rows of
  rainy | restored | clean validation crops). Only rank 0 writes.
- **Determinism**: everything is seeded from ``seed``; the data order of epoch ``e`` is the
  permutation of ``DistributedSampler`` seeded with ``seed + e`` and a resumed run skips to its
  position in it, so on CPU with ``num_workers=0`` ``N`` steps straight equal ``N/2`` steps plus
  resume plus ``N/2`` bitwise. With workers, each worker is seeded from ``seed + epoch`` (the
  loader's generator) and the worker id; resumes then repeat data order but not augmentation.
- **NaN/Inf loss** (any rank): the run stops with :class:`TrainingDiverged`; nothing is written
  after the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .losses import LOSSES
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
        if self.val_every < 1 or self.ckpt_every < 1 or self.val_every % self.ckpt_every:
            raise ValueError(f"val_every ({self.val_every}) must be a positive multiple of ckpt_every "
                             f"({self.ckpt_every}), so best.pt is written at the step that scored best")

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


def _pick_device(name: str, local_rank: int) -> torch.device:
    """``auto``: this process's GPU if there is one, else the CPU; a bare ``cuda`` also means this
    process's GPU (``cuda:LOCAL_RANK``), so torchrun ranks do not share one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


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
        from .rain import SyntheticRain
        train_set, val_set = SyntheticRain("train", crop=cfg.crop), SyntheticRain("val", size=cfg.val_size)
    else:
        from .data import PairedImages
        train_set = PairedImages(cfg.data, crop=cfg.crop, train=True)
        val_set = PairedImages(cfg.val or cfg.data, crop=None, train=False)
        val_set = Subset(val_set, range(min(cfg.val_size, len(val_set))))
    return train_set, (val_set if cfg.val_crop is None else CenterCropped(val_set, cfg.val_crop))


CSV_FIELDS = ["step", "epoch", "lr", "loss", "grad_norm", "seconds",
              "val_psnr_y", "val_ssim_y", "input_psnr_y", "input_ssim_y"]


def _read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ trainer
def train(cfg: TrainConfig, *, resume: str | None = None, model: nn.Module | None = None,
          train_set: Dataset | None = None, val_set: Dataset | None = None,
          criterion: Callable | None = None) -> dict:
    """Run (or resume) training; returns a summary dict (steps, final loss, validation PSNR).

    ``model``, ``train_set``, ``val_set``, ``criterion`` default to ``build_model(cfg.model,
    **cfg.overrides)``, :func:`default_datasets` and ``LOSSES[cfg.loss]()``. With ``resume``, the
    checkpoint's config is used, except ``out``, ``stop_at``, ``num_workers``, ``device`` and
    ``progress`` from ``cfg``. Under torchrun (``WORLD_SIZE`` > 1) it initializes the process
    group (nccl on CUDA, gloo on CPU) and wraps the model in DDP.
    Raises :class:`TrainingDiverged` on a NaN/Inf loss.
    """
    from tqdm import tqdm

    from .inference import restore

    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        kept = {k: getattr(cfg, k) for k in ("out", "stop_at", "num_workers", "device", "progress")}
        cfg = TrainConfig(**{**ckpt["config"], **kept})
    rank, world, local_rank = _dist_info()
    device = _pick_device(cfg.device, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    is_main = rank == 0

    try:
        # Seed everything; the model init is identical on every rank (DDP also broadcasts it).
        random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
        if model is None:
            model = build_model(cfg.model, **cfg.overrides)
        build_spec = getattr(model, "build_spec", {"name": cfg.model, "overrides": cfg.overrides})
        model.to(device)
        if criterion is None:
            criterion = LOSSES[cfg.loss]()
        if isinstance(criterion, nn.Module):
            criterion.to(device)
        if train_set is None or val_set is None:
            d_train, d_val = default_datasets(cfg)
            train_set = d_train if train_set is None else train_set
            val_set = d_val if val_set is None else val_set
        # Per-rank stream for augmentation.
        random.seed(cfg.seed + rank), np.random.seed(cfg.seed + rank), torch.manual_seed(cfg.seed + rank)

        sampler = ResumableSampler(train_set, world, rank, cfg.seed)
        steps_per_epoch = len(sampler) // cfg.batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(train_set)} items over {world} process(es)) "
                             f"is smaller than one batch of {cfg.batch_size}")
        total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total // 10)
        stop = total if cfg.stop_at is None else min(total, cfg.stop_at)

        optimizer = OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), lr=cfg.lr)
        scheduler = make_scheduler(optimizer, total, warmup, cfg.min_lr, cfg.schedule, cfg.lr_decay,
                                   cfg.lr_decay_steps)
        amp_dtype = amp_settings(device, cfg.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else model

        step, best, best_pending = 0, -math.inf, False
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            step = int(ckpt["step"])
            best = float(ckpt.get("metrics", {}).get("best_psnr_y", -math.inf))
            rng = ckpt["rng"]
            set_rng_state(rng[rank] if len(rng) == world else rng[0])

        out = cfg.out
        csv_path = os.path.join(out, "metrics.csv")
        if is_main:
            os.makedirs(out, exist_ok=True)
            rows = [r for r in _read_csv(csv_path) if int(r["step"]) <= step] if ckpt is not None else []
            with open(csv_path, "w", newline="") as f:  # fresh, or truncated to the resumed step
                w = csv.DictWriter(f, CSV_FIELDS)
                w.writeheader()
                w.writerows(rows)
        last_path = os.path.join(out, "last.pt")

        def state_dict(step_done: int, metrics: dict) -> dict:
            rng = [get_rng_state()]
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, rng[0])
                rng = gathered
            return {"format": 1, "step": step_done, "epoch": step_done // steps_per_epoch,
                    "model": model.state_dict(), "build_spec": build_spec,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "config": cfg.to_dict(), "rng": rng,
                    "metrics": metrics}

        def validate(step_done: int) -> dict:
            with preserved_rng():
                model.eval()
                stats = {"val_psnr_y": [], "val_ssim_y": [], "input_psnr_y": [], "input_ssim_y": []}
                samples = []
                from .metrics import image_metrics
                for i in range(len(val_set)):
                    rainy, clean, _ = val_set[i]
                    pred = restore(model, rainy[None].to(device), amp_dtype)[0].float().cpu()
                    m, m0 = image_metrics(pred, clean), image_metrics(rainy, clean)
                    stats["val_psnr_y"].append(m["psnr_y"]), stats["val_ssim_y"].append(m["ssim_y"])
                    stats["input_psnr_y"].append(m0["psnr_y"]), stats["input_ssim_y"].append(m0["ssim_y"])
                    if i < 4:
                        samples.append(torch.cat([rainy, pred, clean], dim=2))
                model.train()
                if samples:
                    from .data import save_image
                    width = max(s.shape[2] for s in samples)
                    grid = torch.cat([nn.functional.pad(s, (0, width - s.shape[2])) for s in samples], 1)
                    save_image(grid, os.path.join(out, "before_after.png"))
            return {k: float(np.mean(v)) for k, v in stats.items()}

        model.train()
        bar = tqdm(total=stop, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and is_main))
        summary: dict[str, Any] = {"start_step": step}
        loader_iter = None
        last_val: dict = {}
        t0 = time.perf_counter()
        if is_main and step == 0 and stop > 0:  # the starting point of the PSNR curve
            last_val = validate(0)
            with open(csv_path, "a", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS).writerow(
                    {"step": 0, "epoch": 0, **{k: f"{v:.4f}" for k, v in last_val.items()}})
        while step < stop:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if loader_iter is None or in_epoch == 0:
                sampler.set_position(epoch, in_epoch * cfg.batch_size)
                gen = torch.Generator().manual_seed(cfg.seed + epoch)
                loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                                    num_workers=cfg.num_workers, drop_last=True, generator=gen,
                                    pin_memory=device.type == "cuda",
                                    persistent_workers=False)
                loader_iter = iter(loader)
            rainy, clean = (t.to(device, non_blocking=True) for t in next(loader_iter)[:2])
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = net(rainy)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            loss = criterion([o.float() for o in outputs], clean)
            mean_loss = loss.detach().clone()  # the loss over all ranks (logged; NaN if any rank's is)
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
            if not torch.isfinite(mean_loss):
                raise _diverged(f"loss is {mean_loss.item()}", step, last_path)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), math.inf if cfg.clip is None else cfg.clip)
            # A non-finite gradient with a finite loss: fp16's GradScaler skips the step and lowers
            # its scale; without a scaler the step would write NaN into the weights. grad_norm is
            # computed from the all-reduced gradients, so every rank takes the same branch.
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):
                raise _diverged(f"gradient norm is {grad_norm.item()} (loss {mean_loss.item():.6g})", step, last_path)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            bar.update(1)

            row = {"step": step, "epoch": epoch, "lr": f"{lr:.6g}", "loss": f"{mean_loss.item():.6g}",
                   "grad_norm": f"{float(grad_norm):.6g}", "seconds": f"{time.perf_counter() - t0:.3f}"}
            if is_main and (step % cfg.val_every == 0 or step == stop):
                last_val = validate(step)
                row.update({k: f"{v:.4f}" for k, v in last_val.items()})
                bar.set_postfix(loss=f"{mean_loss.item():.4f}", psnr=f"{last_val['val_psnr_y']:.2f}")
                if last_val["val_psnr_y"] > best:
                    best, best_pending = last_val["val_psnr_y"], True
            elif is_main and step % 10 == 0:
                bar.set_postfix(loss=f"{mean_loss.item():.4f}")
            if is_main:
                with open(csv_path, "a", newline="") as f:
                    csv.DictWriter(f, CSV_FIELDS).writerow(row)
            if step % cfg.ckpt_every == 0 or step == stop:
                state = state_dict(step, {**last_val, "best_psnr_y": best})  # collective under DDP
                if is_main:
                    save_checkpoint(state, last_path)
                    if best_pending:
                        save_checkpoint(state, os.path.join(out, "best.pt"))
                        best_pending = False
                    write_curves(csv_path, os.path.join(out, "curves.png"))
            summary.update(step=step, loss=mean_loss.item())
        bar.close()
        summary.update(total_steps=total, warmup_steps=warmup, steps_per_epoch=steps_per_epoch,
                       seconds=time.perf_counter() - t0, **last_val)
        return summary
    finally:
        if own_group:
            dist.destroy_process_group()
