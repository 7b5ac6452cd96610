"""psfops: fused, differentiable ops for spatially varying PSF filtering.

Ops (NCHW; see each docstring and the README's table for shapes):
``psf_conv``, ``synthesize_psf``, ``apply_psf``, ``spatial_normalize``, ``gated_blend``,
``gated_fusion``, ``lstm_cell``. ``psfops.reference`` holds pure-PyTorch twins; ``psfops.nn`` the modules;
``psfops.testing`` the op table (functions, references, custom ops, sample inputs);
``psfops.env`` the environment facts. ``psfops.backend("triton"|"reference"|"auto")`` picks the
implementation.
"""
from . import env

env.locate_kernels()  # before the ops import their kernels

from . import nn, reference, testing  # noqa: E402
from ._backend import BACKENDS, backend, current_backend  # noqa: E402
from .gating import gated_blend, gated_fusion  # noqa: E402
from .lstm import lstm_cell  # noqa: E402
from .normalize import spatial_normalize  # noqa: E402
from .psf import apply_psf, psf_conv, synthesize_psf  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "psf_conv", "synthesize_psf", "apply_psf", "spatial_normalize", "gated_blend", "gated_fusion",
    "lstm_cell", "nn", "backend", "current_backend", "BACKENDS", "reference", "testing", "env",
]
