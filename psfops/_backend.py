"""Backend choice: which implementation an op call runs.

``auto`` (default): Triton kernels for CUDA tensors, the CPU path (``psfops.cpu``: memory-lean
pure-PyTorch algorithms chosen per shape, with their own backward) for the psf ops otherwise, the
reference for the other ops.
``triton``: always the Triton kernels; on CPU tensors this needs ``TRITON_INTERPRET=1`` (how CI
tests the kernels) and raises a clear ``RuntimeError`` without it.
``cpu``: the CPU path (pure PyTorch: it runs on any device).
``reference``: always ``psfops.reference`` (simple, exact, materializes intermediates).

The choice comes from, in order: the innermost ``psfops.backend(...)`` context manager of the
calling thread, the ``PSFOPS_BACKEND`` environment variable, ``auto``. Each thread has its own
stack of ``backend(...)`` blocks (a ``threading.local``, which ``torch.compile`` reads and guards
on without a graph break): one thread's block never changes what another thread runs.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

from .env import TRITON_AVAILABLE

BACKENDS = ("auto", "triton", "cpu", "reference")

_local = threading.local()  # .stack: the names pushed by this thread's `backend(...)` blocks


def _stack() -> list[str]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _env_backend() -> str:
    name = os.environ.get("PSFOPS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"PSFOPS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def current_backend() -> str:
    """The backend name in force here: ``"auto"``, ``"triton"`` or ``"reference"``."""
    stack = _stack()
    return stack[-1] if stack else _env_backend()


@contextlib.contextmanager
def backend(name: str):
    """Run the ops inside the ``with`` block on ``name`` ("auto", "triton" or "reference")."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    stack = _stack()
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def check_triton_runs_on(device: torch.device) -> None:
    """Triton kernels run on CUDA devices, and on the CPU only in the interpreter; else a clear
    ``RuntimeError`` (also when triton or the kernels are not installed)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("psfops backend 'triton' was requested but triton is not installed")
    try:
        from .kernels.launch import check_runs_on
    except ImportError as err:  # a clone that was never installed: kernels/ is psfops.kernels once installed
        raise RuntimeError("psfops backend 'triton' needs psfops' kernels, which are installed with psfops: "
                           "run `pip install --no-deps -e .` in the clone") from err
    check_runs_on(device)


def choose(t) -> str:
    """The implementation an op whose inputs live where ``t`` lives runs: ``"triton"``, ``"cpu"``
    or ``"reference"`` (the reference for a non-tensor ``t``: its check reports the bad argument).
    ``auto`` is Triton on CUDA tensors and the CPU path elsewhere; an op without a CPU path of its
    own (the pointwise and gating ops) runs the reference for ``"cpu"``.

    Raises ``RuntimeError`` when Triton is asked for but cannot run there.
    """
    name = current_backend()
    if name == "reference" or not isinstance(t, torch.Tensor):
        return "reference"
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "triton" if t.device.type == "cuda" and TRITON_AVAILABLE else "cpu"
    check_triton_runs_on(t.device)
    return "triton"
