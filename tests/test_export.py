"""sdpsfnet export: the exported program, loaded back, matches the eager model at any size (the
graph pads to the model's multiple and crops back); it needs no psfops; input "rainy", output
"derained", no grad; ONNX through onnxruntime when those packages are installed."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from sdpsfnet.training.checkpoint import model_from_checkpoint, save_checkpoint
from sdpsfnet.cli import main
from sdpsfnet.export import load_program
from sdpsfnet.models.registry import build_model


def _checkpoint(path, name: str, seed: int):
    """A checkpoint of ``name`` with fresh random weights (perturbed, so no layer is an identity)."""
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint({"model": model.state_dict(), "build_spec": model.build_spec, "step": 7}, path)
    return path


def _eager(ckpt, x):
    with torch.no_grad():
        return model_from_checkpoint(ckpt)(x)[-1].clamp(0, 1)


# MSPFN's round trips (about 2 minutes on 2 cores) run with -m slow; SD-PSFNet's in every run.
MODELS = ["tiny", pytest.param("mspfn-tiny", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(name, checkpoint, .pt2) of SD-PSFNet (psf_conv and the other PSF ops) and of MSPFN (lstm_cell)."""
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = _checkpoint(folder / "ck.pt", request.param, seed=3)
    assert main(["export", "--ckpt", str(ckpt), "--out", str(folder / "model.pt2")]) == 0
    return request.param, ckpt, folder / "model.pt2"


# Run in a fresh interpreter that imports neither psfops nor sdpsfnet: what a deployment has.
LOADER = """
import sys, torch
program = torch.export.load(sys.argv[1]).module()
inputs = torch.load(sys.argv[2])
outputs = [program(x) for x in inputs[:-1]]
try:
    program(inputs[-1])
    refused = ""
except Exception as e:
    refused = str(e)
assert not any(m.startswith(("psfops", "sdpsfnet")) for m in sys.modules), "psfops was imported"
torch.save(([y.requires_grad for y in outputs], [y.detach() for y in outputs], refused), sys.argv[3])
"""


def _sizes(M: int) -> list[tuple[int, ...]]:
    """Multiples of M (the smallest, 2M) and sizes that are not, with batches other than the
    export's example."""
    return [(1, 3, 2 * M, 2 * M), (3, 3, 5 * M, 9 * M), (2, 3, 37, 45), (1, 3, 50, 33), (1, 3, 2 * M + 1, 3 * M - 1)]


def test_pt2_round_trip_matches_eager_without_psfops(exported, tmp_path):
    name, ckpt, out = exported
    M = {"tiny": 4, "mspfn-tiny": 8}[name]  # SD-PSFNet pads to 4, MSPFN to 2**3
    inputs = [torch.rand(*shape) for shape in _sizes(M)] + [torch.rand(1, 3, 2 * M - 1, 2 * M)]
    torch.save(inputs, tmp_path / "x.pt")
    r = subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    requires_grad, outputs, refused = torch.load(tmp_path / "y.pt")
    assert not any(requires_grad)  # no autograd graph without the caller's torch.no_grad()
    for x, y in zip(inputs, outputs):  # the graph pads and crops as the eager model: any size
        torch.testing.assert_close(y, _eager(ckpt, x), rtol=0, atol=1e-6)
    assert re.search("(?i)guard|range|>=", refused)  # below the minimum size: refused, not silently wrong
    program, meta = load_program(out)
    assert meta == {"model": name, "step": 7, "backend": "reference", "pad_multiple": M, "min_size": 2 * M,
                    "input": f"rainy: float32 (B, 3, H, W) RGB in [0, 1], H, W >= {2 * M}",
                    "output": "derained: float32 (B, 3, H, W) in [0, 1]"}
    assert tuple(program.graph_signature.user_inputs) == ("rainy",)
    assert tuple(program.graph_signature.user_outputs) == ("derained",)
    assert not program.graph_signature.parameters  # the weights are buffers: nothing requires grad
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("conv2d" in t for t in targets) and not any("psfops" in t for t in targets)


def test_export_errors_name_the_file(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "ck.pt", "tiny", seed=5)
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.zip")]) == 1
    assert "m.zip" in capsys.readouterr().err
    before = ckpt.read_bytes()
    (tmp_path / "same.pt2").symlink_to(ckpt)
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "same.pt2")]) == 1
    assert "refusing to write" in capsys.readouterr().err and ckpt.read_bytes() == before


def test_onnx_without_the_packages_says_how_to_get_them(tmp_path, capsys, monkeypatch):
    ckpt = _checkpoint(tmp_path / "ck.pt", "mspfn-tiny", seed=6)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "m.onnx" in err and "pip install onnx onnxscript" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", MODELS)
def test_onnx_round_trip_through_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ckpt = _checkpoint(tmp_path / "ck.pt", name, seed=7)
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out))
    M = {"tiny": 4, "mspfn-tiny": 8}[name]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["pad_multiple"] == str(M) and json.loads(json.dumps(meta))["backend"] == "reference"
    assert [i.name for i in session.get_inputs()] == ["rainy"]
    assert [o.name for o in session.get_outputs()] == ["derained"]
    for shape in _sizes(M):  # multiples of M and not: the graph pads and crops back itself
        x = torch.rand(*shape)
        (y,) = session.run(None, {"rainy": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), _eager(ckpt, x), rtol=0, atol=1e-5)
