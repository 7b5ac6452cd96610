"""Backend choice: which implementation an op call runs.

``auto`` (default): Triton kernels for CUDA tensors, the pure-PyTorch reference otherwise.
``triton``: always the Triton kernels; on CPU tensors this needs ``TRITON_INTERPRET=1`` (how CI
tests the kernels) and raises a clear ``RuntimeError`` without it.
``reference``: always ``psfops.reference``.

The choice comes from, in order: the innermost ``psfops.backend(...)`` context manager, the
``PSFOPS_BACKEND`` environment variable, ``auto``. The state lives in a plain module-level list so
that ``torch.compile`` can read (and guard on) it without a graph break.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference")

_override: list[str] = []  # stack of names pushed by `backend(...)`


def _env_backend() -> str:
    name = os.environ.get("PSFOPS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"PSFOPS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def current_backend() -> str:
    """The backend name in force here: ``"auto"``, ``"triton"`` or ``"reference"``."""
    return _override[-1] if _override else _env_backend()


@contextlib.contextmanager
def backend(name: str):
    """Run the ops inside the ``with`` block on ``name`` ("auto", "triton" or "reference")."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _override.append(name)
    try:
        yield
    finally:
        _override.pop()


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op whose inputs live where ``t`` lives runs the Triton kernels.

    Raises ``RuntimeError`` when Triton is asked for but cannot run there.
    """
    name = current_backend()
    if name == "reference":
        return False
    on_cuda = t.device.type == "cuda"
    if name == "auto":
        return on_cuda and TRITON_AVAILABLE
    if not TRITON_AVAILABLE:
        raise RuntimeError("psfops backend 'triton' was requested but triton is not installed")
    if not on_cuda and not _interpreting():
        raise RuntimeError(
            f"psfops backend 'triton' cannot run on {t.device.type} tensors: move them to CUDA, "
            "set TRITON_INTERPRET=1 (slow, for testing), or use backend 'reference'"
        )
    return True
