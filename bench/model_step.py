"""The whole SD-PSFNet training step, psfops' Triton ops vs the reference ops: time and peak memory.

One step = ``zero_grad``, forward (a list of images), loss over all outputs
(``sdpsfnet.training.losses.DerainLoss`` when it exists, else L1 on the last output), backward, AdamW
step. On CUDA the forward and loss run under bf16 autocast; on CPU in float32 (CPU autocast is not
what anyone trains with). Records use the op table's keys: ``op="sdpsfnet_step:<model>"``,
``pass="fwd+bwd"``, ``impl`` = the backend (``triton`` or ``reference``), ``C=3``, ``J=k=None``,
plus ``params`` and ``loss``. ``peak_mb`` is what a step allocates beyond what is held between
steps (weights, optimizer state, the batch): activations, gradients, temporaries.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import harness

FULL = dict(model="sdpsfnet", B=4, H=128)   # tau=3, a batch of 4x3x128x128
QUICK = dict(model="tiny", B=1, H=32)       # CPU smoke size


def _loss_fn() -> tuple[str, Callable]:
    """(name, loss(outputs, target)): the training loss (Charbonnier + 0.05 edge + 0.01 frequency)."""
    from sdpsfnet.training.losses import DerainLoss
    return "DerainLoss", DerainLoss()


def _build(name: str, backend: str, device: torch.device):
    from sdpsfnet import build_model
    return build_model(name, backend=backend).to(device)


def measure_step(model_name: str, backend: str, B: int, H: int, device: torch.device, env: dict,
                 roofline_gbps: float, timing: dict | None = None) -> dict:
    """Time and peak memory of one training step of ``model_name`` on ``backend``."""
    amp = device.type == "cuda"
    rec = {"op": f"sdpsfnet_step:{model_name}", "pass": "fwd+bwd", "impl": backend,
           "dtype": "bfloat16-autocast" if amp else "float32", "B": B, "C": 3, "H": H, "W": H,
           "J": None, "k": None, "ms": None, "peak_mb": None, "gbps": None, "tflops": None,
           "pct_roofline": None, "bytes": None, "flops": None, "held_mb": None, "ideal_mb": None,
           "roofline_gbps": roofline_gbps, "compile": None, "status": "ok", "reason": None, **env}
    if backend == "triton":
        reason = harness.skip_reason("triton", device)
        if reason:
            return {**rec, "status": "skipped", "reason": reason}
    try:
        torch.manual_seed(0)
        model = _build(model_name, backend, device)
        rec["params"] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rec["loss"], loss_fn = _loss_fn()
        x = torch.rand(B, 3, H, H, device=device)
        target = torch.rand(B, 3, H, H, device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x), target)
            loss.backward()
            opt.step()
            return loss.detach()

        step()  # builds optimizer state, autotunes kernels
        rec["peak_mb"] = harness.peak_mb(step, device)
        rec["ms"] = harness.time_ms(step, device, **(timing or {}))
    except Exception as err:  # noqa: BLE001  (the model may not exist yet: record why)
        status = "oom" if harness.is_oom(err) else "error"
        rec.update(status=status, reason=f"{type(err).__name__}: {err}"[:500])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def run(device: torch.device, env: dict, roofline_gbps: float, quick: bool,
        backends=("triton", "reference"), timing: dict | None = None, log=print) -> list[dict]:
    """Both backends at the full (or quick) size; returns their records."""
    cfg = QUICK if quick else FULL
    records = []
    for backend in backends:
        rec = measure_step(cfg["model"], backend, cfg["B"], cfg["H"], device, env, roofline_gbps, timing)
        records.append(rec)
        log(harness.format_record(rec))
    return records
