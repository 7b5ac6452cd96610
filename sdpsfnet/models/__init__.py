"""The model zoo: building blocks (:mod:`.blocks`), SD-PSFNet (:mod:`.sdpsfnet`), MSPFN
(:mod:`.mspfn`), the registry (``MODELS``, ``build_model``, :mod:`.registry`) and parameter/MAC
counts (:mod:`.complexity`). Importing the package registers the built-in models."""
from . import sdpsfnet, mspfn  # noqa: F401,I001  (register the built-in models, SD-PSFNet first)
from .registry import MODELS, build_model, register_model

__all__ = ["MODELS", "build_model", "register_model"]
