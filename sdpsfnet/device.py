"""The ``--device`` option: a torch device that exists here, or a one-line ``ValueError`` why not."""
from __future__ import annotations

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device ``name`` names, checked to be usable in this process.

    ``auto``: this process's GPU if CUDA is available, else the CPU. A bare ``cuda`` means this
    process's GPU, ``cuda:LOCAL_RANK``, so torchrun ranks do not share one. Raises ``ValueError``
    naming the device for a string torch does not parse, a device type this PyTorch build or
    machine does not have, or an index past the devices present.
    """
    resolved = name
    if resolved == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    if resolved == "cuda":
        resolved = f"cuda:{local_rank}"
    try:
        device = torch.device(resolved)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1, "
                         f"mps)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"device {name!r}: this PyTorch build or machine has no usable {device.type} "
                         f"device; use 'cpu' or 'auto'")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r} does not exist: {count} {device.type} device(s) are visible")
    return device
