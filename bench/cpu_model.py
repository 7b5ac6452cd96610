"""``python -m bench.cpu_model BACKEND H W``: the default SD-PSFNet (tau=3, random init) restoring
one (1,3,H,W) image on the CPU under ``inference_mode`` with ``psfops.backend(BACKEND)``; prints one
JSON line: wall seconds and peak extra RSS (VmHWM - VmRSS before the call, MB). Run it in a fresh
process per backend (with ``OMP_NUM_THREADS=1`` on a shared machine)."""
from __future__ import annotations

import json
import sys
import time

import torch

import psfops
from sdpsfnet import build_model
from sdpsfnet.evaluation.inference import restore

from .cpu import peak_extra_kb, reset_peak_rss


def main(argv: list[str]) -> dict:
    name, H, W = argv[0], int(argv[1]), int(argv[2])
    torch.manual_seed(0)
    model = build_model("sdpsfnet").eval()
    x = torch.rand(1, 3, H, W)
    before = reset_peak_rss()
    t0 = time.perf_counter()
    with psfops.backend(name), torch.inference_mode():
        y = restore(model, x)
    return dict(backend=name, H=H, W=W, seconds=round(time.perf_counter() - t0, 2),
                peak_extra_mb=round(peak_extra_kb(before) / 1024), threads=torch.get_num_threads(),
                checksum=float(y.double().sum()))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
