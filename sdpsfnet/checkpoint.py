"""Training checkpoints: atomic save, checked load, RNG-state capture, and model rebuild from ``build_spec``.

A checkpoint is a plain dict written with ``torch.save``::

    {"format": 1, "step": int, "epoch": int,
     "model": state_dict, "build_spec": {"name", "overrides"},
     "optimizer": ..., "scheduler": ..., "scaler": ...,
     "config": dict (the TrainConfig as a dict), "rng": [per-rank RNG states],
     "metrics": dict (latest validation, "best_psnr_y", "best_step")}

Everything in it is a tensor, number, string, list, tuple or dict, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load). The numpy RNG state array is
stored as an int64 tensor for that reason.

A file that cannot serve as a checkpoint (empty, truncated, not written by ``torch.save``, not an
sdpsfnet checkpoint, a newer format, weights of another model) raises :class:`CheckpointError`,
whose one-line message names the file, the cause and what to do.
"""
from __future__ import annotations

import os
import pickle
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .files import atomic_write
from .registry import build_model

FORMAT = 1
# What a resumable checkpoint holds beyond the model (one written by the trainer).
TRAINING_KEYS = ("step", "optimizer", "scheduler", "config", "rng")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
_ADVICE = "give a last.pt or best.pt written by `sdpsfnet train`"


class CheckpointError(ValueError):
    """A file that cannot be used as an sdpsfnet checkpoint; the message names the file, the cause
    and what to do."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically.

    Through :func:`sdpsfnet.files.atomic_write`: a crash or exception at any point leaves either
    the old file or the new one, never a partial one; the file gets the umask's permissions.
    """
    with atomic_write(path) as f:
        torch.save(state, f)


def _unreadable(path: str, error: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, in words."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return "it is not a file written by torch.save"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects other than tensors and plain data, which are not loaded"
    return f"it is truncated or corrupt ({size} bytes)"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, resumable: bool = False) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` naming the path, and :class:`CheckpointError` for anything that is
    not a readable sdpsfnet checkpoint of a format this version knows; with ``resumable=True`` also
    for one without the training state (:data:`TRAINING_KEYS`) that resuming needs.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; {_ADVICE}")
    with open(path, "rb") as f:  # an OSError here (permissions) names the file itself
        try:
            state = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:  # EOFError, RuntimeError, OSError, IndexError, UnpicklingError, ...
            raise CheckpointError(f"cannot read checkpoint {path}: {_unreadable(path, e)}; {_ADVICE}") from e
    if not isinstance(state, dict) or "model" not in state or "build_spec" not in state:
        raise CheckpointError(f"{path} is not an sdpsfnet checkpoint (it lacks 'model' and "
                              f"'build_spec'); {_ADVICE}")
    if state.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['format']}, newer than this "
                              f"version reads ({FORMAT}); upgrade sdpsfnet")
    missing = [k for k in TRAINING_KEYS if k not in state]
    if resumable and missing:
        raise CheckpointError(f"{path} cannot be resumed: it has no {', '.join(missing)} (a model-only "
                              f"checkpoint; eval and derain can use it); resume from the run's last.pt")
    return state


def load_weights(model: nn.Module, weights: dict, path: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)``; :class:`CheckpointError` naming ``path`` and counting the
    mismatched keys if the weights do not fit the model."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    reshaped = [k for k in mine if k in weights and tuple(weights[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or reshaped:
        first = (missing + unexpected + reshaped)[0]
        raise CheckpointError(
            f"the weights in {os.fspath(path)} do not fit the {type(model).__name__} built for them "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape; "
            f"first: {first!r}); it was written by another model or another version of it")
    model.load_state_dict(weights)


def model_from_checkpoint(ckpt: dict | str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's ``build_spec`` and load its weights (eval mode).

    A dict ``ckpt`` is named ``<dict>`` in error messages."""
    path = "<dict>" if isinstance(ckpt, dict) else os.fspath(ckpt)
    state = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt, map_location)
    spec = state["build_spec"]
    try:
        model = build_model(spec["name"], **spec.get("overrides", {}))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} describes a model this version cannot build: {e}") from e
    load_weights(model, state["model"], path)
    return model.eval()


def get_rng_state() -> dict:
    """RNG states of torch (CPU and every CUDA device), numpy and python ``random``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA states only where there are devices)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
