"""Placeholder: routes to psfops.reference until the Triton kernels land (issue 3)."""
from .reference import gated_blend, gated_fusion  # noqa: F401
__all__ = ["gated_blend","gated_fusion"]
