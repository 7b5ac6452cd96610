"""Fused Triton kernels behind psfops (installed as ``psfops.kernels``).

One module per op family; each holds its ``@triton.jit`` kernels and the Python launchers that
allocate outputs, pick block sizes and launch. Shared jit helpers and launch utilities live in
``_common``. Importing this package needs triton; ``import psfops`` does not.
"""
