"""psfops: fused, differentiable ops for spatially varying PSF filtering.

Ops (NCHW; see each docstring and the README's table for shapes):
``psf_conv``, ``psf_conv_transpose``, ``synthesize_psf``, ``apply_psf``, ``spatial_normalize``, ``gated_blend``,
``gated_fusion``, ``lstm_cell``. ``psfops.reference`` holds pure-PyTorch twins; ``psfops.nn`` the modules;
``psfops.testing`` the op table (functions, references, custom ops, sample inputs);
``psfops.env`` the environment facts. ``psfops.backend("auto"|"triton"|"cpu"|"reference")`` picks the
implementation; ``psfops.check_triton_runs_on(device)`` says (a ``RuntimeError`` why not) whether the
Triton kernels can run on a device here.
"""
from . import env, nn, reference, testing
from ._backend import BACKENDS, backend, check_triton_runs_on, current_backend
from .gating import gated_blend, gated_fusion
from .lstm import lstm_cell
from .normalize import spatial_normalize
from .psf import apply_psf, psf_conv, psf_conv_transpose, synthesize_psf
from .version import __version__


__all__ = [
    "psf_conv", "psf_conv_transpose", "synthesize_psf", "apply_psf", "spatial_normalize", "gated_blend", "gated_fusion",
    "lstm_cell", "nn", "backend", "current_backend", "check_triton_runs_on", "BACKENDS", "reference", "testing", "env",
]
