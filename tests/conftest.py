"""Test setup. Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set
before triton (and so psfops.kernels) is imported, hence here at the top."""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI draws the same hypothesis examples every run (a red CI must mean a regression, not a new
# random draw); local runs keep exploring fresh examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Device the Triton path runs on in these tests: the GPU if there is one, else the CPU interpreter.
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE
