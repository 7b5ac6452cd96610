"""SD-PSFNet model: shapes, presets, parameter counts, ablations, backend parity, training, compile."""
import pytest
import torch

import sdpsfnet.model  # noqa: F401  (registers the SD-PSFNet presets)
from sdpsfnet import build_model


@pytest.mark.parametrize("shape", [(1, 3, 24, 20), (2, 3, 23, 21), (3, 3, 9, 13)])
def test_tiny_output_shapes(shape):
    torch.manual_seed(0)
    model = build_model("tiny")
    x = torch.rand(*shape)
    out = model(x)
    assert isinstance(out, list) and len(out) == model.config.num_mid_stages + 2
    for o in out:
        assert o.shape == x.shape and o.dtype == x.dtype and torch.isfinite(o).all()
