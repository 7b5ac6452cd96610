"""Training checkpoints: atomic save, load, RNG-state capture, and model rebuild from ``build_spec``.

A checkpoint is a plain dict written with ``torch.save``::

    {"format": 1, "step": int, "epoch": int,
     "model": state_dict, "build_spec": {"name", "overrides"},
     "optimizer": ..., "scheduler": ..., "scaler": ...,
     "config": dict (the TrainConfig as a dict), "rng": [per-rank RNG states], "metrics": dict}

Everything in it is a tensor, number, string, list, tuple or dict, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load). The numpy RNG state array is
stored as an int64 tensor for that reason.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .files import atomic_write
from .registry import build_model

FORMAT = 1


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically.

    Through :func:`sdpsfnet.files.atomic_write`: a crash or exception at any point leaves either
    the old file or the new one, never a partial one; the file gets the umask's permissions.
    """
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` naming the path, and ``ValueError`` if it is not a psfops
    training checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "build_spec" not in state:
        raise ValueError(f"{path} is not an sdpsfnet checkpoint (needs 'model' and 'build_spec')")
    return state


def model_from_checkpoint(ckpt: dict | str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's ``build_spec`` and load its weights (eval mode)."""
    state = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt, map_location)
    spec = state["build_spec"]
    model = build_model(spec["name"], **spec.get("overrides", {}))
    model.load_state_dict(state["model"])
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
