"""Model registry: ``build_model(name, **overrides)`` and ``MODELS`` (name -> factory)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``factory(**overrides) -> nn.Module`` under ``name``."""
    def wrap(factory):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = factory
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
