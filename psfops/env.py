"""Facts about the environment that every part of psfops (and its benchmarks) asks about, in one
place: whether triton is installed, whether Triton kernels run in its CPU interpreter, the
accumulation dtype of an input dtype, and where the kernels package is."""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

__all__ = ["TRITON_AVAILABLE", "interpreting", "accumulation_dtype", "locate_kernels"]

TRITON_AVAILABLE: bool = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``): slow, for
    tests. It must be set before triton (and so ``psfops``) is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and products of inputs of ``dtype`` are carried in this dtype: float64 for float64,
    float32 for everything else (float16, bfloat16, float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def locate_kernels() -> None:
    """Make ``psfops.kernels`` importable. An install maps the repository's top-level ``kernels/``
    folder to it; in a clone that was never installed (``python -m bench`` on a machine where
    ``pip install`` is not possible), that folder beside the package is loaded under the same name."""
    if importlib.util.find_spec("psfops.kernels") is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location("psfops.kernels", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
