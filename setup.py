"""psfops: Triton kernels for spatially varying PSF filtering, and SD-PSFNet built on them.

The top-level ``kernels/`` folder is installed as ``psfops.kernels`` (never as a top-level
``kernels`` package, which would collide with the unrelated PyPI project of that name). ``bench/``
is not installed (a top-level ``bench`` would collide the same way): it runs from a clone as
``python -m bench``.
"""
import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', open("psfops/version.py", encoding="utf-8").read()).group(1)

setup(
    name="psfops",
    version=VERSION,
    description="Fused Triton ops for spatially varying PSF filtering, and the SD-PSFNet deraining model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # every package under psfops/ and sdpsfnet/ (psfops.cpu was missing from a hand-written list, so a
    # wheel or a non-editable install had no CPU path), and kernels/ as psfops.kernels
    packages=find_packages(include=["psfops", "psfops.*", "sdpsfnet", "sdpsfnet.*"]) + ["psfops.kernels"],
    package_dir={"psfops.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",  # a CUDA build of torch brings its own matching triton; CPU users need none
        "numpy",
        "pillow",
        "pypng",      # 16-bit colour PNGs, which Pillow reads and writes only at 8 bits
        "tifffile",   # 16-bit colour TIFFs, likewise
        "tqdm",
        "scikit-image",
        "matplotlib",
    ],
    extras_require={
        "onnx": ["onnx", "onnxscript"],  # sdpsfnet export --out *.onnx
        "triton": ["triton>=3.0"],        # the Triton kernels where torch did not bring triton
        "dev": ["triton>=3.0", "pytest", "hypothesis", "pytest-benchmark", "pytest-timeout", "pytest-xdist", "onnx", "onnxscript", "onnxruntime",
                "vulture"],
    },
    entry_points={"console_scripts": ["sdpsfnet = sdpsfnet.cli:main"]},
)
