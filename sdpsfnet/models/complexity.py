"""Parameter counts and MACs of the registered models (the README's model-zoo figures).

MACs = FLOPs / 2 from ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory,
no compute), where the ops run their reference form: convolutions and matmuls are counted (psf_conv through
the reference's einsums); elementwise ops, interpolation and pooling are not.

    python -m sdpsfnet.models.complexity [--size 256] [--ablations]
"""
from __future__ import annotations

import argparse

import torch

import psfops
from torch.utils.flop_counter import FlopCounterMode

from .registry import MODELS, build_model


def count(name: str, size: int | None = 256, **overrides) -> tuple[int, float | None]:
    """(parameters, MACs of one forward pass on a 1x3x``size``x``size`` image; None for
    ``size=None``, which only counts parameters)."""
    with torch.device("meta"):
        model = build_model(name, **overrides)
    params = sum(p.numel() for p in model.parameters())
    if size is None:
        return params, None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), psfops.backend("reference"):  # the reference ops, on meta tensors
        model(torch.rand(1, 3, size, size, device="meta"))
    return params, counter.get_total_flops() / 2


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpsfnet.models.complexity", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ablations", action="store_true", help="also the SD-PSFNet ablation rows")
    a = p.parse_args(argv)
    print(f"| model | params | MACs @{a.size}x{a.size} |\n|---|---|---|")
    for name in MODELS:
        params, macs = count(name, a.size)
        print(f"| `{name}` | {params:,} | {macs / 1e9:.2f}G |")
    if a.ablations:
        from .sdpsfnet import ABLATIONS
        print(f"\n| ablation row | params | MACs @{a.size}x{a.size} |\n|---|---|---|")
        for row, overrides in ABLATIONS.items():
            params, macs = count("sdpsfnet", a.size, **overrides)
            print(f"| `{row}` | {params:,} | {macs / 1e9:.2f}G |")


if __name__ == "__main__":
    main()
