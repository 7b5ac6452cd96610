"""The optimizer, its parameter groups, the learning-rate schedule and the AMP dtype of a run.

``optimizer`` is a key of :data:`OPTIMIZERS` over :func:`param_groups`; ``schedule`` is
``"cosine"`` (linear warmup then cosine to ``min_lr``, ``LinearLR`` + ``CosineAnnealingLR`` in
``SequentialLR``) or ``"exponential"`` (warmup then ``lr * lr_decay**(s / lr_decay_steps) + min_lr``,
a ``LambdaLR``), stepped once per optimizer step; ``amp`` see :func:`amp_settings`.

- **Epoch** = ``len(loader)`` optimizer steps (per process; ``drop_last=True``). ``--epochs E``
  means ``E * len(loader)`` steps; ``--steps N`` overrides the length; neither: one epoch.
- **Warmup** = ``warmup_epochs`` epochs, capped at 10% of the run so short runs (``--steps``)
  still spend most of their time at a useful learning rate. The warmup starts at
  ``lr * 1e-3`` (``LinearLR(start_factor=1e-3)``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from psfops.nn import DynamicPSF

if TYPE_CHECKING:
    from .config import TrainConfig

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: conv/linear weights with ``weight_decay``; without decay, every
    parameter with fewer than 2 dims (biases, gate biases included, norm scales, PReLU slopes) and
    every ``DynamicPSF`` basis (decay pulls its logits toward 0, every kernel toward a box blur)."""
    bases = {id(m.basis) for m in model.modules() if isinstance(m, DynamicPSF)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in bases else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (AdamW or Adam) at ``cfg.lr`` over :func:`param_groups`:
    weight decay ``cfg.weight_decay`` on matrices and conv kernels, none on 1-D parameters and
    the PSF bases."""
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), lr=cfg.lr)


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warmup) optimizer steps: ``steps``, else ``epochs`` (else one) epochs; warmup
    ``warmup_epochs`` epochs, capped at a tenth of the run."""
    total = cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch
    return total, min(round(cfg.warmup_epochs * steps_per_epoch), total // 10)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   min_lr: float, schedule: str = "cosine", lr_decay: float | None = None,
                   lr_decay_steps: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup (from 1e-3 x lr) for ``warmup_steps``, then ``schedule``: ``"cosine"`` to
    ``min_lr`` at ``total_steps``, or ``"exponential"``, ``lr * lr_decay**(s / lr_decay_steps) +
    min_lr`` at ``s`` steps after the warmup (MSPFN's; its values are the run config's, so they are
    required here). One ``.step()`` per optimizer step."""
    sched = torch.optim.lr_scheduler
    if schedule != "cosine" and (lr_decay is None or lr_decay_steps is None):
        raise ValueError("the exponential schedule needs lr_decay and lr_decay_steps")
    if schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr)
    else:
        main = sched.LambdaLR(optimizer, [lambda s, lr=g["lr"]: lr_decay ** (s / lr_decay_steps) + min_lr / lr
                                          for g in optimizer.param_groups])
    if warmup_steps <= 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])


AMP_MODES = ("auto", "bf16", "fp16", "off")  # see amp_settings


def amp_settings(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device``: None (off), torch.bfloat16 or torch.float16.

    ``auto``: off on CPU; fp16 (with a GradScaler) on CUDA, as SD-PSFNet's paper trains. bf16 only
    when asked for.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16
