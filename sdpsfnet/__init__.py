"""SD-PSFNet (and MSPFN) on psfops: models, losses, data, training, evaluation, CLI."""
from .registry import MODELS, build_model, register_model

__all__ = ["MODELS", "build_model", "register_model"]
