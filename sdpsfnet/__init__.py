"""SD-PSFNet (and MSPFN) on psfops: models, losses, data, training, evaluation, CLI."""
from .registry import MODELS, build_model, register_model
from . import model, mspfn  # noqa: E402,F401  (register the models)

__all__ = ["MODELS", "build_model", "register_model"]
