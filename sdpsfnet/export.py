"""Deployment: a trained checkpoint as a ``torch.export`` program (``.pt2``) or an ONNX file.

The exported graph is the restoration itself: input (B, 3, H, W) float32 RGB in [0, 1], output
the model's final restored image (B, 3, H, W) clamped to [0, 1] (what ``sdpsfnet derain``
writes, without tiling).

Backend: the psfops reference ops, always. The program is then plain ATen operators: it loads
with ``torch.export.load`` alone (no ``import psfops``, no Triton) and can be converted to ONNX.
It is exported on the CPU; ``torch.export.passes.move_to_device_pass(program, "cuda")`` moves it
to a GPU (not yet tried on one). The Triton backend
would put ``torch.ops.psfops.*`` custom ops in the graph, which need psfops imported at load time,
a CUDA device, and have no ONNX equivalent; the price of the reference ops is their speed and
memory on large images.

Shapes: the batch size is dynamic (any B >= 1), and so are H and W: any sizes of at least
``2 * M``, where ``M`` is the model's padding multiple (4 for SD-PSFNet, ``2 ** num_scales`` = 8
for MSPFN). The graph reflect-pads the bottom/right to a multiple of ``M`` and crops the output
back, as the eager model does, so every size gives the eager model's result. The input is named
``rainy``, the output ``derained``; the output never requires grad (the weights are buffers, the
result is detached). ``M`` and the other facts a deployment needs are stored beside the graph: in
the ``.pt2`` as the extra file ``sdpsfnet.json`` (:func:`load_program` returns them), in the ONNX
file as metadata properties.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

from .training.checkpoint import load_checkpoint
from .files import atomic_write, refuse_overwrite
from .models import build_model

__all__ = ["export_checkpoint", "load_program", "pad_multiple", "FORMATS"]

INPUT, OUTPUT = "rainy", "derained"
FORMATS = {".pt2": "torch.export program", ".onnx": "ONNX"}
META_FILE = "sdpsfnet.json"


def _reflect_index(n, size: int, device) -> torch.Tensor:
    """Source indices of an axis of length ``n`` reflect-extended on the far side to ``size``."""
    i = torch.arange(size, device=device)
    return torch.where(i < n, i, 2 * (n - 1) - i)


class Restorer(nn.Module):
    """rainy (B,3,H,W) in [0,1], any H, W >= 2M -> the model's final output clamped to [0,1],
    detached. Pads to a multiple of M (reflect, bottom/right) and crops back as the eager model
    does; with index gathers rather than ``F.pad`` and slices, whose size checks would specialize
    the exported shapes."""

    def __init__(self, model: nn.Module, multiple: int):
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, rainy):
        M, (H, W) = self.multiple, rainy.shape[-2:]
        Hp, Wp = (H + M - 1) // M * M, (W + M - 1) // M * M
        x = rainy.index_select(2, _reflect_index(H, Hp, rainy.device))
        x = x.index_select(3, _reflect_index(W, Wp, rainy.device))
        out = self.model(x)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        out = out.index_select(2, torch.arange(H, device=rainy.device))
        out = out.index_select(3, torch.arange(W, device=rainy.device))
        return out.clamp(0, 1).detach()


def _weights_as_buffers(module: nn.Module) -> nn.Module:
    """``module`` with every parameter re-registered as a buffer: the exported program then has
    no tensors that require grad, so calling it builds no autograd graph."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                del m._parameters[name]
                m.register_buffer(name, p.detach())
    return module


def _name_output(program: ExportedProgram, name: str) -> None:
    """Rename the program's (single) user output node to ``name``."""
    (spec,) = [s for s in program.graph_signature.output_specs if s.kind.name == "USER_OUTPUT"]
    node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
    node._rename(name)
    spec.arg.name = node.name
    program.graph_module.recompile()


def pad_multiple(model: nn.Module) -> int:
    """The multiple of H and W a model pads its input to (SD-PSFNet: 4; MSPFN: 2**num_scales)."""
    from .models.sdpsfnet import PAD_MULTIPLE, SDPSFNet
    from .models.mspfn import MSPFN

    if isinstance(model, SDPSFNet):
        return PAD_MULTIPLE
    if isinstance(model, MSPFN):
        return 2 ** model.config.num_scales
    raise ValueError(f"export supports SD-PSFNet and MSPFN models, got {type(model).__name__}")


def _reference_model(ckpt: dict) -> nn.Module:
    """The checkpoint's model rebuilt on the CPU with ``backend="reference"`` (eval mode)."""
    spec = ckpt["build_spec"]
    model = build_model(spec["name"], **{**spec.get("overrides", {}), "backend": "reference"})
    model.load_state_dict(ckpt["model"])
    return model.eval()


def export_checkpoint(ckpt_path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Export the model of a training checkpoint to ``out``: a ``.pt2`` ``torch.export`` program
    or an ``.onnx`` file (by suffix), written atomically; returns the metadata stored with it.

    ValueError naming ``out`` for another suffix, if it is the checkpoint itself, or for ONNX
    without the ``onnx`` and ``onnxscript`` packages (optional: ``pip install onnx onnxscript``).
    """
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {out}: the suffix picks the format, use one of "
                         + ", ".join(f"{k} ({v})" for k, v in FORMATS.items()))
    refuse_overwrite([out], [ckpt_path])
    onnx = out.suffix.lower() == ".onnx"
    if onnx:
        _require_onnx(out)
    ckpt = load_checkpoint(ckpt_path)
    model = _reference_model(ckpt)
    M = pad_multiple(model)
    meta = {"model": ckpt["build_spec"]["name"], "step": ckpt.get("step"), "backend": "reference",
            "input": f"{INPUT}: float32 (B, 3, H, W) RGB in [0, 1], H, W >= {2 * M}",
            "output": f"{OUTPUT}: float32 (B, 3, H, W) in [0, 1]", "pad_multiple": M, "min_size": 2 * M}
    shapes = {INPUT: {0: Dim("batch", min=1), 2: Dim("h", min=2 * M), 3: Dim("w", min=2 * M)}}
    example = torch.rand(2, 3, 4 * M + 1, 3 * M + 3)  # batch 2 (1 would be specialized), not multiples
    with torch.no_grad():
        # the runtime asserts replace guards that sympy cannot prove for every size but that hold
        program = torch.export.export(Restorer(_weights_as_buffers(model), M), (example,),
                                      dynamic_shapes=shapes, prefer_deferred_runtime_asserts_over_guards=True)
    _name_output(program, OUTPUT)
    if onnx:
        _save_onnx(program, example, out, meta)
    else:
        with atomic_write(out) as f:
            torch.export.save(program, f, extra_files={META_FILE: json.dumps(meta)})
    return meta


def _require_onnx(out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--out {out}: ONNX export needs the onnx and onnxscript packages ({e}); "
                         "pip install onnx onnxscript, or export to .pt2") from e


def _save_onnx(program: ExportedProgram, example: torch.Tensor, out: Path, meta: dict) -> None:
    onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False,
                                     input_names=[INPUT], output_names=[OUTPUT])
    proto = onnx_program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=str(value))
    with atomic_write(out) as f:
        f.write(proto.SerializeToString())


def load_program(path: str | os.PathLike) -> tuple[ExportedProgram, dict]:
    """Load a ``.pt2`` written by :func:`export_checkpoint`: (program, its metadata)."""
    extra = {META_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program, json.loads(extra[META_FILE]) if extra[META_FILE] else {}
