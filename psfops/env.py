"""Facts about the environment that every part of psfops (and its benchmarks) asks about, in one
place: whether triton is installed, whether Triton kernels run in its CPU interpreter, the
accumulation dtype of an input dtype."""
from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["TRITON_AVAILABLE", "interpreting", "accumulation_dtype"]

TRITON_AVAILABLE: bool = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``): slow, for
    tests. It must be set before triton (and so ``psfops``) is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and products of inputs of ``dtype`` are carried in this dtype: float64 for float64,
    float32 for everything else (float16, bfloat16, float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
