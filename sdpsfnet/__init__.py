"""SD-PSFNet (and MSPFN) on psfops: models, losses, data, training, evaluation, CLI.

``sdpsfnet.build_model``/``sdpsfnet.MODELS`` are the model zoo (:mod:`sdpsfnet.models`),
``sdpsfnet.Derainer`` the inference API (a checkpoint as a callable on tensors, images, files).
Sub-packages: :mod:`.models`, :mod:`.data`, :mod:`.training`, :mod:`.evaluation`.
"""
from psfops.version import __version__  # one version for psfops and sdpsfnet

from .models import MODELS, build_model, register_model
from .derainer import Derainer

__all__ = ["MODELS", "build_model", "register_model", "Derainer", "__version__"]
