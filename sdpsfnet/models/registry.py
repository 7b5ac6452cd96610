"""The model zoo: ``build_model(name, **overrides)`` and ``MODELS`` (name -> factory, with a
one-line description of each; ``print(MODELS)`` shows names and descriptions)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

# What each built-in model is (their factories are registered in sdpsfnet.py and mspfn.py).
BUILTIN_DESCRIPTIONS = {
    "sdpsfnet": "SD-PSFNet, tau=3 (the paper's model)",
    "sdpsfnet-tau0": "SD-PSFNet, tau=0 (Stage In -> ORStage)",
    "sdpsfnet-tau1": "SD-PSFNet, tau=1",
    "sdpsfnet-tau2": "SD-PSFNet, tau=2",
    "tiny": "small SD-PSFNet (tau=1, K_c=8): tests and CPU demos",
    "mspfn": "MSPFN (CVPR 2020) reimplemented on psfops",
    "mspfn-tiny": "small MSPFN: tests and CPU demos",
}


class ModelZoo(dict):
    """``name -> factory(**overrides) -> nn.Module``, plus :meth:`describe`; its repr maps each
    name to its description (not to a function object)."""

    def __init__(self):
        super().__init__()
        self.descriptions: dict[str, str] = {}

    def describe(self, name: str) -> str:
        """The one-line description of a registered model."""
        return self.descriptions[name]

    def __repr__(self) -> str:
        return repr(self.descriptions)


MODELS = ModelZoo()


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0].replace("``", "")


def register_model(name: str, what: str | None = None):
    """Decorator: register ``factory(**overrides) -> nn.Module`` under ``name``, described by
    ``what`` (default: the built-in description, else the factory docstring's first line)."""
    def wrap(factory):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = factory
        MODELS.descriptions[name] = what or BUILTIN_DESCRIPTIONS.get(name) or _first_line(factory.__doc__)
        return factory
    return wrap


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; every config field can be overridden by keyword.

    The returned module carries ``build_spec = {"name": name, "overrides": overrides}`` so a
    checkpoint can rebuild it exactly.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    model = MODELS[name](**overrides)
    model.build_spec = {"name": name, "overrides": dict(overrides)}
    return model
