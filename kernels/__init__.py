"""Fused Triton kernels behind psfops (installed as ``psfops.kernels``).

One module per op family; each holds its ``@triton.jit`` kernels and the Python launchers that
allocate outputs, pick block sizes and launch. ``launch`` says where and how launchers run (device
check, interpreter, SM count, launch plans); ``_common`` holds shared helpers. This package
imports nothing from psfops: the op layer calls it. Importing a kernel module needs triton;
``import psfops`` does not.
"""
from .launch import launch_target

__all__ = ["launch_target"]
