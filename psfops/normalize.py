"""Placeholder: routes to psfops.reference until the Triton kernels land (issue 3)."""
from .reference import spatial_normalize  # noqa: F401
__all__ = ["spatial_normalize"]
