"""The one home of a run's defaults: the recipes (the hyper-parameters each model family trains with,
each from its source), the two presets (``paper`` and the ``tiny`` CPU demo), the choices each
option takes (``SCHEDULES``, ``AMP_MODES``; ``OPTIMIZERS`` in :mod:`.optim`, ``LOSSES`` in
:mod:`.losses`, ``MODELS`` in :mod:`sdpsfnet.models`) and :class:`TrainConfig`, whose field defaults
are SD-PSFNet's recipe under the ``paper`` preset.

``sdpsfnet`` -- SD-PSFNet (AAAI 2026). The authors' code is not public, so the paper's text:
AdamW lr 1e-4, 3-epoch linear warmup then cosine to 1e-6, FP16 mixed precision with a GradScaler
(``amp="auto"``: fp16 on CUDA, float32 on the CPU; bf16 only when asked, ``--amp bf16``), gradient
clipping at 2.0, 128x128 crops, 2000 epochs, loss Charbonnier + 0.05 edge + 0.01
frequency summed over every stage's output (``losses.DerainLoss``). Where the paper is silent:
batch 8 per process; weight decay 1e-2 (torch's AdamW default) on weights only (see
:func:`sdpsfnet.training.optim.param_groups`); random flips and rot90 (the datasets' augmentation).

``mspfn`` -- MSPFN (CVPR 2020), the authors' TensorFlow code (``model/train_MSPFN.py``,
``model/MSPFN.py``), which decides where it and the paper text differ: Adam (TensorFlow's
defaults, which are torch's) at ``5e-4 * 0.8**(step / 20000) + 1e-6`` (their
``exponential_decay(..., staircase=False) + 1e-6``: a smooth decay reaching x0.8 every 20k steps,
not a staircase), batch 12 of 96x96 crops, the 8 flips/rotations of the square (the code draws one
for the whole batch, the datasets here one per sample), no weight decay, no gradient clipping,
float32, loss Charbonnier + 0.05 x Charbonnier of 3x3 Laplacian edges on [-1, 1] images
(``losses.MSPFNLoss``). 50 epochs: the training loop never stops by itself, and the authors' test
script restores their checkpoint of epoch 50. The [-1, 1] input range and Xavier initialisation
belong to the model (``sdpsfnet.models.mspfn``'s defaults), so they hold under either recipe.

Which recipe a model gets: its family's (``MODEL_RECIPES``; any other registered model gets
``sdpsfnet``'s), or the one named by ``recipe``: ``sdpsfnet train --model mspfn --recipe sdpsfnet``
trains MSPFN with SD-PSFNet's recipe and loss, to compare the two on equal terms.

Presets: ``paper`` is the recipe as it stands (validation and checkpoints every 1000 steps);
``tiny`` swaps the model for its small variant (``TINY_VARIANT``) and runs a CPU-sized demo of the
same recipe (64x64 crops, batch 8, 200 steps, peak lr 1e-3, validation on 4 centre crops of
128x128): minutes on 2 cores.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import CheckpointError
from .losses import LOSSES
from .optim import AMP_MODES, OPTIMIZERS

__all__ = ["RECIPES", "MODEL_RECIPES", "PRESETS", "TINY_VARIANT", "SCHEDULES", "AMP_MODES", "TrainConfig",
           "resolve", "make_config", "resumed_config"]

RECIPES: dict[str, dict[str, Any]] = {
    "sdpsfnet": dict(
        optimizer="adamw", lr=1e-4, weight_decay=1e-2,             # paper; decay value: torch default
        schedule="cosine", warmup_epochs=3.0, min_lr=1e-6,        # paper
        amp="auto", clip=2.0,                 # paper: auto = fp16 + GradScaler on CUDA, off on CPU
        crop=128, batch_size=8, epochs=2000,                      # paper; batch: not given
        loss="sdpsfnet",                                          # paper
    ),
    "mspfn": dict(
        optimizer="adam", lr=5e-4, weight_decay=0.0,              # code
        schedule="exponential", lr_decay=0.8, lr_decay_steps=20000, min_lr=1e-6, warmup_epochs=0.0,  # code
        amp="off", clip=None,                                     # code: float32, no clipping
        crop=96, batch_size=12, epochs=50,                        # code; epochs: their test checkpoint
        loss="mspfn",                                             # code
    ),
}

# Registered model name -> its recipe; every other model trains with "sdpsfnet".
MODEL_RECIPES = {"mspfn": "mspfn", "mspfn-tiny": "mspfn"}

# Small variant of each model, used by the `tiny` preset.
TINY_VARIANT = {"sdpsfnet": "tiny", "mspfn": "mspfn-tiny"}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(steps=None, val_every=1000, ckpt_every=1000, val_crop=None, val_size=16),
    # A schedule this short needs a higher peak lr; the warmup is a tenth of an epoch.
    "tiny": dict(crop=64, batch_size=8, epochs=None, steps=200, warmup_epochs=0.1, lr=1e-3,
                 val_every=50, ckpt_every=50, val_crop=128, val_size=4),
}

SCHEDULES = ("cosine", "exponential")
_PAPER = {**RECIPES["sdpsfnet"], **PRESETS["paper"]}  # TrainConfig's defaults


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in the checkpoint as a dict). The defaults are
    SD-PSFNet's recipe under the ``paper`` preset; :func:`make_config` fills in a model's own."""
    model: str = "sdpsfnet"
    overrides: dict = field(default_factory=dict)  # build_model(model, **overrides)
    recipe: str = "sdpsfnet"  # the recipe the fields below came from (a record)
    data: str | None = None   # paired folder; None -> synthetic rain
    val: str | None = None    # validation paired folder (default: pairs held out of data, see datasets.py)
    allow_val_in_data: bool = False  # let val be the data folder itself (its pairs are then trained on)
    init: str | None = None   # start from this checkpoint's model weights (a new run: step 0, fresh optimizer)
    out: str = "runs/sdpsfnet"
    crop: int = _PAPER["crop"]
    batch_size: int = _PAPER["batch_size"]
    epochs: int | None = _PAPER["epochs"]
    steps: int | None = _PAPER["steps"]  # total optimizer steps; overrides epochs
    stop_at: int | None = None  # stop (with a checkpoint) after this step, as if preempted
    optimizer: str = _PAPER["optimizer"]  # a key of optim.OPTIMIZERS
    lr: float = _PAPER["lr"]
    min_lr: float = _PAPER["min_lr"]  # cosine: the final lr; exponential: the additive floor
    weight_decay: float = _PAPER["weight_decay"]
    schedule: str = _PAPER["schedule"]  # one of SCHEDULES
    lr_decay: float = RECIPES["mspfn"]["lr_decay"]  # exponential (MSPFN's schedule): factor per lr_decay_steps
    lr_decay_steps: int = RECIPES["mspfn"]["lr_decay_steps"]
    warmup_epochs: float = _PAPER["warmup_epochs"]
    clip: float | None = _PAPER["clip"]  # None: no clipping
    amp: str = _PAPER["amp"]  # one of AMP_MODES
    loss: str = _PAPER["loss"]  # a key of losses.LOSSES
    seed: int = 0
    num_workers: int = 0
    val_every: int = _PAPER["val_every"]
    ckpt_every: int = _PAPER["ckpt_every"]
    val_crop: int | None = _PAPER["val_crop"]  # centre-crop validation images to this size (None: whole)
    val_size: int = _PAPER["val_size"]
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("amp", AMP_MODES), ("loss", LOSSES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {sorted(valid)}, got {getattr(self, name)!r}")
        for name in ("steps", "epochs", "stop_at", "batch_size", "val_size"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.val_every < 1 or self.ckpt_every < 1 or self.val_every % self.ckpt_every:
            raise ValueError(f"val_every ({self.val_every}) must be a positive multiple of ckpt_every "
                             f"({self.ckpt_every}), so best.pt is written at the step that scored best")
        for name in ("data", "val", "init"):  # stored resolved: a resume from another folder finds them
            if getattr(self, name) is not None:
                setattr(self, name, os.path.realpath(getattr(self, name)))
        if self.val is not None and self.val == self.data and not self.allow_val_in_data:
            raise ValueError(f"--val {self.val} is the --data folder: its pairs would be trained on, so the "
                             f"validation scores would not measure unseen images. Leave --val out (a fixed "
                             f"10% of --data is then held out), give another folder, or pass "
                             f"--allow-val-in-data to validate on training pairs knowingly")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve(model: str = "sdpsfnet", preset: str = "paper", recipe: str | None = None,
            **options) -> dict[str, Any]:
    """The training-config fields (``TrainConfig(**fields)``) of ``model`` under ``preset``.

    ``recipe`` (default: the model's, ``MODEL_RECIPES``) gives the hyper-parameters, ``preset``
    the run's length and cadence (``tiny`` also swaps the model for its ``TINY_VARIANT``), then
    ``options`` override any field (``None`` values are ignored). ``steps`` and ``epochs``
    exclude each other: giving one clears the other. ``out`` defaults to ``runs/<model>-<preset>``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    recipe = recipe if recipe is not None else MODEL_RECIPES.get(model, "sdpsfnet")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    values = {**RECIPES[recipe], **PRESETS[preset]}
    if preset == "tiny":
        model = TINY_VARIANT.get(model, model)
    options = {k: v for k, v in options.items() if v is not None}
    if "steps" in options and "epochs" in options:
        raise ValueError("give either steps or epochs, not both")
    if "steps" in options:
        values["epochs"] = None
    if "epochs" in options:
        values["steps"] = None
    values.update(options)
    if values.get("out") is None:
        values["out"] = os.path.join("runs", f"{model}-{preset}")
    return dict(model=model, recipe=recipe, **values)


def make_config(model: str = "sdpsfnet", preset: str = "paper", recipe: str | None = None,
                **options) -> TrainConfig:
    """Config of ``model`` under ``preset`` with its recipe (or ``recipe``), then ``options``
    (``None`` values are ignored): see :func:`resolve`."""
    return TrainConfig(**resolve(model, preset, recipe, **options))


def resumed_config(cfg: TrainConfig, ckpt: dict, path: str) -> TrainConfig:
    """The checkpoint's config, with ``out``, ``stop_at``, ``num_workers``, ``device`` and
    ``progress`` taken from ``cfg``."""
    kept = {k: getattr(cfg, k) for k in ("out", "stop_at", "num_workers", "device", "progress")}
    try:
        return TrainConfig(**{**ckpt["config"], **kept})
    except TypeError as e:
        raise CheckpointError(f"{path} holds a config this version does not know ({e})") from e
