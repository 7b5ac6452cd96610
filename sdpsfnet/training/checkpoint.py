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

A file that cannot serve as a checkpoint (not a regular file, empty, truncated, not written by
``torch.save``, not an sdpsfnet checkpoint, a newer format, a field of the wrong type or range,
weights of another model or of another dtype, NaN/Inf weights) raises :class:`CheckpointError`,
whose one-line message names the file, the cause (the field or tensor) and what to do. The model's
shapes are checked on the ``meta`` device before it is built, so an edited ``build_spec`` cannot
allocate a huge model first.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..files import atomic_write
from ..models.registry import build_model

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
    if not os.path.isfile(path):  # a FIFO would block the read forever
        raise CheckpointError(f"checkpoint {path} is not a regular file; {_ADVICE}")
    with open(path, "rb") as f:  # an OSError here (permissions) names the file itself
        try:
            state = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:  # EOFError, RuntimeError, OSError, IndexError, UnpicklingError, ...
            raise CheckpointError(f"cannot read checkpoint {path}: {_unreadable(path, e)}; {_ADVICE}") from e
    if not isinstance(state, dict) or "model" not in state or "build_spec" not in state:
        raise CheckpointError(f"{path} is not an sdpsfnet checkpoint (it lacks 'model' and "
                              f"'build_spec'); {_ADVICE}")
    fmt = state.get("format", FORMAT)
    _check_field(path, "format", fmt, _is_int(fmt) and fmt >= 1, "a positive integer")
    if fmt > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['format']}, newer than this "
                              f"version reads ({FORMAT}); upgrade sdpsfnet")
    spec = state["build_spec"]
    _check_field(path, "build_spec", spec, isinstance(spec, dict) and isinstance(spec.get("name"), str)
                 and isinstance(spec.get("overrides", {}), dict), "a dict with a name and overrides")
    _check_field(path, "model", "...", isinstance(state["model"], dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()),
        "a dict of tensors")
    missing = [k for k in TRAINING_KEYS if k not in state]
    if resumable and missing:
        raise CheckpointError(f"{path} cannot be resumed: it has no {', '.join(missing)} (a model-only "
                              f"checkpoint; eval and derain can use it); resume from the run's last.pt")
    if resumable:
        _check_training_fields(state, path)
    return state


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def bad_field(path: str, name: str, value, expected: str) -> CheckpointError:
    """The one-line error for a checkpoint field ``name`` that is not ``expected``."""
    shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
    return CheckpointError(f"{path}: field {name!r} must be {expected}, got {shown}; the file was "
                           f"edited or damaged: resume from another checkpoint of the run")


def _check_field(path: str, name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise bad_field(path, name, value, expected)


def _check_training_fields(state: dict, path: str) -> None:
    """The types of what a resume reads (ranges and shapes that need the run are checked by
    :func:`sdpsfnet.training.loop.restore`)."""
    step, opt, sched, rng = state["step"], state["optimizer"], state["scheduler"], state["rng"]
    _check_field(path, "step", step, _is_int(step) and step >= 0, "a non-negative integer")
    _check_field(path, "epoch", state.get("epoch", 0), _is_int(state.get("epoch", 0)), "an integer")
    _check_field(path, "optimizer", opt, isinstance(opt, dict) and isinstance(opt.get("state"), dict)
                 and isinstance(opt.get("param_groups"), list), "an optimizer state_dict")
    _check_field(path, "scheduler", sched, isinstance(sched, dict), "a scheduler state_dict")
    _check_field(path, "scaler", state.get("scaler"), isinstance(state.get("scaler") or {}, dict),
                 "a GradScaler state_dict")
    _check_field(path, "config", state["config"], isinstance(state["config"], dict), "a dict")
    _check_field(path, "rng", rng, isinstance(rng, list) and len(rng) >= 1 and all(
        isinstance(r, dict) and {"torch", "numpy", "python"} <= r.keys() for r in rng),
        "a list of RNG-state dicts")
    metrics = state.get("metrics", {})
    _check_field(path, "metrics", metrics, isinstance(metrics, dict), "a dict")
    for key, value in metrics.items():
        if key != "best_step":
            _check_field(path, f"metrics.{key}", value,
                         isinstance(value, (int, float)) and not isinstance(value, bool), "a number")
    best_step = metrics.get("best_step")
    _check_field(path, "metrics.best_step", best_step, best_step is None or (_is_int(best_step) and best_step >= 0),
                 "a non-negative integer or None")


def check_weights(mine: dict, weights: dict, path: str | os.PathLike, what: str) -> None:
    """:class:`CheckpointError` naming ``path`` unless ``weights`` fit the state dict ``mine`` of
    the model ``what``: the same keys and shapes, floating tensors where the model's are floating
    (no silent cast of integers), and no NaN or Inf."""
    path = os.fspath(path)
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    reshaped = [k for k in mine if k in weights and tuple(weights[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or reshaped:
        first = (missing + unexpected + reshaped)[0]
        shapes = (f" is {tuple(weights[first].shape)} in the file, {tuple(mine[first].shape)} in the model"
                  if first in reshaped else "")
        raise CheckpointError(
            f"the weights in {path} do not fit the {what} built for them "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape; "
            f"first: {first!r}{shapes}); it was written by another model or another version of it")
    for k, w in weights.items():
        if w.is_floating_point() != mine[k].is_floating_point() or w.is_complex():
            raise CheckpointError(f"{path}: tensor {k!r} is {w.dtype}, the model's is {mine[k].dtype}; "
                                  f"the file was edited or damaged")
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise CheckpointError(f"{path}: tensor {k!r} holds NaN or Inf values; the file was edited or "
                                  f"damaged, or written by a run that diverged: use another checkpoint")


def load_weights(model: nn.Module, weights: dict, path: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)`` after :func:`check_weights`."""
    check_weights(model.state_dict(), weights, path, type(model).__name__)
    model.load_state_dict(weights)


def init_weights(model: nn.Module, path: str | os.PathLike, listed: int = 8) -> None:
    """Load only the model weights of the checkpoint at ``path`` into ``model`` (``train --init``:
    any checkpoint whose tensors fit, whatever model name or run wrote it). :class:`CheckpointError`
    naming the file and, for up to ``listed`` of them, every tensor that does not fit: its name
    and its shape here and there, or that one side lacks it."""
    path = os.fspath(path)
    state = load_checkpoint(path)
    theirs, mine = state["model"], model.state_dict()
    misfits = [f"{k} {tuple(mine[k].shape)} here, {tuple(theirs[k].shape)} there" for k in mine
               if k in theirs and tuple(mine[k].shape) != tuple(theirs[k].shape)]
    misfits += [f"{k} missing there" for k in mine if k not in theirs]
    misfits += [f"{k} {tuple(theirs[k].shape)} there, not in this model" for k in theirs if k not in mine]
    if misfits:
        more = f"; and {len(misfits) - listed} more" if len(misfits) > listed else ""
        raise CheckpointError(f"--init {path}: its weights (model {state['build_spec']['name']!r}) do not fit "
                              f"this run's {type(model).__name__} ({len(misfits)} tensors): "
                              f"{'; '.join(misfits[:listed])}{more}. Give a "
                              f"checkpoint of the same model and size (its --model and overrides)")
    load_weights(model, theirs, path)


def _runnable_backend(name: str, device: torch.device) -> str:
    """``name``, or ``"reference"`` where it (or for ``"auto"``, ``PSFOPS_BACKEND``) asks for
    Triton on a device Triton cannot run on."""
    from psfops import check_triton_runs_on, current_backend

    if (name if name != "auto" else current_backend()) != "triton":
        return name
    try:
        check_triton_runs_on(device)
        return name
    except RuntimeError:
        return "reference"


def model_from_checkpoint(ckpt: dict | str | os.PathLike, map_location: Any = "cpu",
                          device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the model from the checkpoint's ``build_spec`` and load its weights (eval mode).

    The spec is first built on the ``meta`` device (no memory) and checked against the weights'
    shapes. With ``device``, the model is moved there, and a model (or ``PSFOPS_BACKEND``) asking
    for the Triton backend where Triton cannot run (a CPU) runs the reference ops instead.
    A dict ``ckpt`` is named ``<dict>`` in error messages."""
    path = "<dict>" if isinstance(ckpt, dict) else os.fspath(ckpt)
    state = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt, map_location)
    spec = state["build_spec"]
    build = lambda: build_model(spec["name"], **spec.get("overrides", {}))  # noqa: E731
    try:
        with torch.device("meta"):
            skeleton = build()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} describes a model this version cannot build: {e}") from e
    except Exception:  # a model whose constructor cannot run on meta: checked once built
        skeleton = None
    if skeleton is not None:
        check_weights(skeleton.state_dict(), state["model"], path, type(skeleton).__name__)
    try:
        model = build()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} describes a model this version cannot build: {e}") from e
    load_weights(model, state["model"], path)
    if device is not None:
        device = torch.device(device)
        model.to(device)
        config = getattr(model, "config", None)
        if dataclasses.is_dataclass(config) and hasattr(config, "backend"):
            model.config = dataclasses.replace(config, backend=_runnable_backend(config.backend, device))
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
