"""Building blocks shared by the models: conv helper and channel attention (as in MPRNet/RCAN)."""
from __future__ import annotations

import torch
import torch.nn as nn


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """'Same'-padded conv2d."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-excitation channel attention: ``x * sigmoid(MLP(avgpool(x)))``. (B,C,H,W) -> same."""

    def __init__(self, channels: int, reduction: int = 4, bias: bool = False):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=bias), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=bias), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mlp(self.pool(x))


class CAB(nn.Module):
    """Channel attention block: conv-act-conv, channel attention, residual. (B,C,H,W) -> same."""

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 4, bias: bool = False,
                 act: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size, bias=bias), act if act is not None else nn.PReLU(),
            conv(channels, channels, kernel_size, bias=bias),
        )
        self.ca = ChannelAttention(channels, reduction, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ca(self.body(x))
