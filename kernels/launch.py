"""Where and how the launchers run: the device check, the interpreter, the persistent grid's SM
count, which launch plans (GPU or interpreter) they pick, and one lock around interpreter launches.

``launch_target`` is the one seam for callers that need launches other than the defaults: tests
run the GPU's launch plans under the interpreter, and ``bench`` records sm_90 launches from CPU
tensors without running them. It is a context variable, so it holds per thread.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import threading

import torch

__all__ = ["launch_target", "interpreting", "gpu_plans", "check_runs_on", "sm_count", "launcher",
           "INTERPRETER_SMS"]

INTERPRETER_SMS = 4  # the pretend GPU of the interpreter: small test shapes take the GPU's split paths


@dataclasses.dataclass(frozen=True)
class _Target:
    sm_count: int | None = None
    any_device: bool = False
    gpu_plans: bool | None = None


_TARGET: contextvars.ContextVar[_Target] = contextvars.ContextVar("psfops_kernels_target", default=_Target())
# triton's interpreter keeps per-launch state in module globals (the grid, the program id): two
# threads launching at once read each other's. Interpreter launches therefore take turns.
_INTERPRETER_LOCK = threading.RLock()


@contextlib.contextmanager
def launch_target(sm_count: int | None = None, any_device: bool = False, gpu_plans: bool | None = None):
    """Inside the block (this thread only): persistent grids use ``sm_count`` programs at most
    (default: the device's SM count, :data:`INTERPRETER_SMS` off CUDA); ``any_device`` accepts
    tensors on any device without the interpreter (to record launches, not to run them);
    ``gpu_plans`` True makes launchers pick the GPU's block sizes and tiles even in the
    interpreter (None: the GPU's on a GPU, the interpreter's own under it)."""
    token = _TARGET.set(_Target(sm_count, any_device, gpu_plans))
    try:
        yield
    finally:
        _TARGET.reset(token)


def interpreting() -> bool:
    """Whether kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``, which must be set
    before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_plans() -> bool:
    """Whether launchers pick the GPU's launch plans (see :func:`launch_target`)."""
    chosen = _TARGET.get().gpu_plans
    return not interpreting() if chosen is None else chosen


def check_runs_on(device: torch.device) -> None:
    """Triton kernels run on CUDA devices, and elsewhere only in the interpreter: else a clear
    ``RuntimeError``."""
    if device.type != "cuda" and not interpreting() and not _TARGET.get().any_device:
        raise RuntimeError(
            f"psfops' Triton kernels cannot run on {device.type} tensors: move them to CUDA, "
            "set TRITON_INTERPRET=1 before importing triton (slow, for testing), or use another backend")


def sm_count(device: torch.device) -> int:
    """Programs of a persistent grid on ``device``: its SM count on CUDA, :data:`INTERPRETER_SMS`
    elsewhere, or the :func:`launch_target` override."""
    override = _TARGET.get().sm_count
    if override is not None:
        return override
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def launcher(fn):
    """Decorator for the Python launchers: the first tensor argument says where the kernels run
    (:func:`check_runs_on`); CUDA launches go to its device (Triton launches on the current device,
    so inputs on ``cuda:1`` would otherwise fail while device 0 is current); interpreter launches
    take turns across threads."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        t = next(a for a in args if isinstance(a, torch.Tensor))
        check_runs_on(t.device)
        if t.device.type == "cuda":
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)
        with _INTERPRETER_LOCK if interpreting() else contextlib.nullcontext():
            return fn(*args, **kwargs)
    return run
