"""SD-PSFNet (and MSPFN) on psfops: models, losses, data, training, evaluation, CLI.

``sdpsfnet.Derainer`` is the inference API (a checkpoint as a callable on tensors, images, files).
"""
from psfops.version import __version__  # one version for psfops and sdpsfnet

from .registry import MODELS, build_model, register_model
from . import model, mspfn  # noqa: E402,F401  (register the models)
from .derainer import Derainer

__all__ = ["MODELS", "build_model", "register_model", "Derainer", "__version__"]
