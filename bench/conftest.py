"""Options of the pytest-benchmark suite (``pytest bench --benchmark-only``, see
bench/test_benchmarks.py). The default ``python -m pytest`` never collects this folder
(pytest.ini's ``testpaths = tests``)."""
from __future__ import annotations

import torch


def pytest_addoption(parser):
    group = parser.getgroup("psfops benchmarks")
    group.addoption("--bench-size", choices=("quick", "base"), default=None,
                    help="quick: small shapes (the default on CPU); base: each op's benchmark shape "
                         "(the default on CUDA)")
    group.addoption("--bench-dtypes", default="float32",
                    help="comma-separated dtypes (float32, bfloat16, float16); default float32")
    group.addoption("--bench-device", default=None, help="default: cuda if available, else cpu")
    group.addoption("--bench-cpu-compile", action="store_true",
                    help="also time torch.compile on the CPU (inductor builds C++ for minutes)")


def pytest_generate_tests(metafunc):
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", metafunc.config.getoption("--bench-dtypes").split(","))


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
