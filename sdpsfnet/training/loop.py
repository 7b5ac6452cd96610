"""The trainer: a chain of plain functions. :func:`train` loads the checkpoint and checks the run
folder (:mod:`.run_folder`), :func:`setup` builds a :class:`Run` (model, data from
:mod:`.datasets`; the recipe through :mod:`.optim`), :func:`restore` loads a checkpoint into it,
and :func:`fit` loops over :func:`train_step`, :func:`validate` (the one evaluation loop,
:func:`sdpsfnet.evaluation.inference.evaluate`) and :func:`save`. Every recipe choice is a
config field (:mod:`.config`); ``clip`` is the global L2 norm (None: no clipping), ``loss`` a key of
``losses.LOSSES``, summed over every emitted image.

- **Output**: stdout gets the config, a line saying what trains (model, parameters, device, data
  counts), one saying which pairs validate, and the final summary; with progress on, stderr gets
  a line before each phase that can take seconds (model build, data indexing, checkpoint and
  figure writes) and bars for the steps and for each validation's images.
- **--init CKPT**: a new run (step 0, fresh optimizer and schedule) from CKPT's model weights;
  :func:`.checkpoint.init_weights` names every tensor that does not fit.
- **Batch size** is per process; under ``torchrun`` the effective batch is ``batch_size * world``.
- **Validation**: before the first step, every ``val_every`` steps and at the end, mean
  PSNR/SSIM (Y) of the final output over the fixed validation set (:mod:`.datasets`), next to
  the same metric for the rainy input.
- **Files** in ``out`` (:data:`.run_folder.RUN_FILES`): ``last.pt`` (every ``ckpt_every`` steps
  and at the end), ``best.pt`` (best validation PSNR-Y), ``metrics.csv`` (:mod:`.logs`),
  ``curves.png`` and ``before_after.png`` (:mod:`.figures`), ``validation.txt`` (which pairs
  validate, :mod:`.logs`). Only rank 0 writes, every file
  atomically (:func:`sdpsfnet.files.atomic_write`; ``metrics.csv`` grows by appended rows and is
  rewritten atomically on resume).
- **A run's length is fixed at its start**: checkpoints store ``total_steps`` and
  ``train_items``; resuming after the training set changed size is refused (the schedule was
  built for the old length).
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
import gc
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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..device import pick_device
from ..evaluation.inference import evaluate
from ..files import check_writable
from ..models import build_model
from .checkpoint import (FORMAT, CheckpointError, bad_field, get_rng_state, init_weights, load_checkpoint,
                         load_weights, save_checkpoint, set_rng_state)
from .config import TrainConfig, resumed_config
from .datasets import ResumableSampler, default_datasets
from .figures import SAMPLE_ROWS, run_title, write_before_after, write_curves
from .logs import VAL_FIELDS, append_row, say, write_validation_list
from .losses import LOSSES
from .optim import amp_settings, build_optimizer, make_scheduler, schedule_steps
from .run_folder import check_out_folder, prepare_out_folder, refuse_out_in_data, run_folder_lock


class TrainingDiverged(RuntimeError):
    """The loss, or (without a GradScaler) the gradient, became NaN or Inf; the message names the
    step and the last good checkpoint."""


def _diverged(what: str, step: int, last_path: str) -> TrainingDiverged:
    good = last_path if os.path.isfile(last_path) else "none written yet"
    return TrainingDiverged(f"{what} at step {step + 1}; stopping. Last good checkpoint: {good}")


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation, figures) without moving any global RNG."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


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
    data_about: str = ""  # where the training items come from (the log says it)
    val_about: str = ""  # where the validation pairs come from (the log and validation.txt say it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out, name)


def _seed(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


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


def leave_group() -> None:
    """Destroy the process group :func:`init_distributed` created, once nothing else (no DDP
    wrapper: the caller drops its own first) holds it. Its last owner must be the Python group
    object, whose destructor releases the GIL while it joins gloo's worker threads. Were it DDP's
    C++ reducer, freed with the wrapper, the join would hold the GIL while a worker waits for it to
    free a finished collective's tensors: a deadlock (2 of 5 runs of two CPU ranks hung so, torch
    2.13; none of 60 since)."""
    group = dist.group.WORLD
    gc.collect()  # a DDP wrapper in a reference cycle goes now, while ``group`` still holds the group
    dist.destroy_process_group()
    del group


def setup(cfg: TrainConfig, rank: int, world: int, device: torch.device, model: nn.Module | None,
          train_set: Dataset | None, val_set: Dataset | None, criterion: Callable | None) -> Run:
    """Seed, build what is not given (model, datasets, loss), the optimizer, schedule and scaler."""
    talk = cfg.progress and rank == 0
    _seed(cfg.seed)  # the model init is identical on every rank (DDP also broadcasts it)
    if model is None:
        say(f"building model {cfg.model} ...", talk)
        model = build_model(cfg.model, **cfg.overrides)
    model.to(device)
    criterion = LOSSES[cfg.loss]() if criterion is None else criterion
    if isinstance(criterion, nn.Module):
        criterion.to(device)
    about = f"{len(val_set)} items given by the caller" if val_set is not None else ""
    source = "given by the caller" if train_set is not None else cfg.data or "built-in synthetic rain"
    if train_set is None or val_set is None:
        say(f"indexing data ({cfg.data or 'built-in synthetic rain'}) ...", talk)
        d_train, d_val, d_about = default_datasets(cfg)
        train_set = d_train if train_set is None else train_set
        val_set, about = (d_val, d_about) if val_set is None else (val_set, about)
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
               steps_per_epoch, total, warmup, stop=total if cfg.stop_at is None else min(total, cfg.stop_at),
               data_about=source, val_about=about)


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
    (:data:`.logs.VAL_FIELDS`) by :func:`sdpsfnet.evaluation.inference.evaluate`; writes
    ``before_after.png`` of the first :data:`.figures.SAMPLE_ROWS` distinct images (another
    rain on a clean image already shown is skipped), ``validation.txt`` on
    the first validation of a run, and records a new best. No global RNG moves."""
    samples = []

    def keep(i, rainy, restored, clean):  # the first images whose clean image is not shown yet
        if len(samples) < SAMPLE_ROWS and not any(torch.equal(clean, s[2]) for s in samples):
            samples.append((rainy, restored, clean))

    with preserved_rng():
        run.model.eval()
        result = evaluate(run.model, run.val_set, tile=None, progress=run.cfg.progress, amp_dtype=run.amp_dtype,
                          on_image=keep, desc=f"validate step {run.step}")
        run.model.train()
    write_before_after(samples, run.path("before_after.png"))
    if run.step == 0 or not os.path.isfile(run.path("validation.txt")):
        write_validation_list(run.path("validation.txt"), run.val_about, [r["name"] for r in result["per_image"]])
    run.last_val = {"val_psnr_y": result["psnr_y"], "val_ssim_y": result["ssim_y"],
                    "input_psnr_y": result["input"]["psnr_y"], "input_ssim_y": result["input"]["ssim_y"]}
    if run.step > 0 and run.last_val["val_psnr_y"] > run.best:
        run.best, run.best_step, run.best_pending = run.last_val["val_psnr_y"], run.step, True
    return {k: f"{v:.4f}" for k, v in run.last_val.items()}


def checkpoint_state(run: Run) -> dict:
    """The checkpoint of ``run`` now (see :mod:`.checkpoint`); under DDP a collective that
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
    say(f"step {run.step}: writing last.pt{' and best.pt' if run.best_pending else ''} ...", run.cfg.progress)
    save_checkpoint(state, run.path("last.pt"))
    if run.best_pending:
        save_checkpoint(state, run.path("best.pt"))
        run.best_pending = False
    say(f"step {run.step}: plotting curves.png ...", run.cfg.progress)
    write_curves(run.path("metrics.csv"), run.path("curves.png"), run_title(run.cfg))


def announce(run: Run) -> None:
    """Rank 0, before the first step, on stdout: one line saying what trains (model, parameters)
    where, on which data, from which step, and one saying which pairs validate."""
    cfg = run.cfg
    params = sum(p.numel() for p in run.model.parameters())
    where = f"{run.device}" + (f" x {run.world} processes" if run.world > 1 else "")
    start = f"from step {run.step} " if run.step else ""
    init = f", weights from {cfg.init}" if cfg.init and not run.step else ""
    say(f"training {cfg.model} ({params:,} parameters{init}) on {where}: {len(run.train_set)} training "
        f"items ({run.data_about}), {len(run.val_set)} validation image(s); "
        f"{start}to step {run.stop} of {run.total}", stdout=True)
    say(f"validation: {run.val_about}", stdout=True)


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
    **cfg.overrides)``, :func:`.datasets.default_datasets` and ``LOSSES[cfg.loss]()``. With ``resume``, the
    checkpoint's config is used, except ``out``, ``stop_at``, ``num_workers``, ``device`` and
    ``progress`` from ``cfg``. ``overwrite`` (new runs only) replaces a run already in ``cfg.out``.
    Under torchrun (``WORLD_SIZE`` > 1) it joins the process group (nccl on CUDA, gloo on CPU) and
    wraps the model in DDP.
    Raises ``FileExistsError`` rather than clobber a run (see :mod:`.run_folder`),
    ``FileNotFoundError``/:class:`~sdpsfnet.training.checkpoint.CheckpointError` for a bad ``resume``,
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
            elif cfg.init is not None:
                say(f"loading the model weights of {cfg.init} ...", cfg.progress and rank == 0)
                init_weights(run.model, cfg.init)
            if run.is_main:
                announce(run)
                prepare_out_folder(cfg.out, resume, ckpt, overwrite)
            return fit(run)
        finally:
            if own_group:
                run = None  # (see leave_group: the DDP wrapper goes before the group)
                leave_group()
