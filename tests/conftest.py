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

# Under pytest-xdist (the suite's `-n auto`), each worker takes its share of the cores for torch's
# intra-op threads, so that two workers on two cores do not run four threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

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
