"""Placeholder: routes to psfops.reference until the Triton kernels land (issue 3)."""
from .reference import lstm_cell  # noqa: F401
__all__ = ["lstm_cell"]
