"""MSPFN's loss (the authors' code: Charbonnier + 0.05 x Charbonnier of 3x3 Laplacian edges, on
[-1, 1] images) against an independent float64 implementation, and the recipe's loss names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdpsfnet.training.losses import LOSSES, DerainLoss, MSPFNLoss, laplacian_edge_loss


def _laplacian_by_shifts(x: torch.Tensor) -> torch.Tensor:
    """8 * x minus its 8 neighbours, zero outside the image (a 'SAME' conv), float64."""
    H, W = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    neighbours = sum(p[..., 1 + du:1 + du + H, 1 + dv:1 + dv + W]
                     for du in (-1, 0, 1) for dv in (-1, 0, 1) if (du, dv) != (0, 0))
    return 8 * x - neighbours


def _charb(d: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt(d * d + eps * eps).mean()


def _mspfn_truth(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The authors' inference_losses on s = 2x - 1 images, written out in float64."""
    p, t = 2 * pred.double() - 1, 2 * target.double() - 1
    return (_charb(p - t) + 0.05 * _charb(_laplacian_by_shifts(p) - _laplacian_by_shifts(t))).item()


def test_mspfn_loss_matches_the_authors_formula():
    torch.manual_seed(0)
    outs = [torch.rand(2, 3, 9, 7) for _ in range(2)]
    target = torch.rand(2, 3, 9, 7)
    loss = MSPFNLoss()(outs, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(_mspfn_truth(o, target) for o in outs), rel=1e-5)
    assert MSPFNLoss()(outs[0], target).item() == pytest.approx(_mspfn_truth(outs[0], target), rel=1e-5)


def test_laplacian_edge_loss_is_the_3x3_kernel_with_zero_padding():
    """A single bright pixel in a corner: its edge map is 8 there and -1 on its 3 in-image
    neighbours (zero padding, no reflection)."""
    x = torch.zeros(1, 1, 4, 5)
    x[0, 0, 0, 0] = 1.0
    expect = torch.zeros(1, 1, 4, 5)
    expect[0, 0, 0, 0], expect[0, 0, 0, 1], expect[0, 0, 1, 0], expect[0, 0, 1, 1] = 8, -1, -1, -1
    torch.testing.assert_close(_laplacian_by_shifts(x), expect)
    ref = torch.rand(1, 1, 4, 5)
    got = laplacian_edge_loss(x + ref, ref, eps=1e-3)
    assert got.item() == pytest.approx(_charb(expect.double()).item(), rel=1e-5)


def test_mspfn_loss_differs_from_sdpsfnet_loss():
    """The recipes' two losses are different functions (no FFT term, 3x3 Laplacian, signed range)."""
    torch.manual_seed(1)
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert LOSSES == {"sdpsfnet": DerainLoss, "mspfn": MSPFNLoss}
    assert abs(MSPFNLoss()(pred, target).item() - DerainLoss()(pred, target).item()) > 1e-2


def test_mspfn_loss_weights_and_errors():
    torch.manual_seed(2)
    pred, target = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    plain = MSPFNLoss(edge_weight=0)(pred, target).item()
    assert plain == pytest.approx(_charb(2 * pred.double() - 2 * target.double()).item(), rel=1e-5)
    with pytest.raises(ValueError, match="edge_weight"):
        MSPFNLoss(edge_weight=-1)
    with pytest.raises(ValueError, match="outputs"):
        MSPFNLoss()([torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4)], target)
