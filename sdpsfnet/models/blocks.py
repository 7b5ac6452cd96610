"""Building blocks shared by the models: input check, conv helper and channel attention (as in
MPRNet/RCAN)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_images(x, channels: int) -> None:
    """``x`` must be a floating-point (B, channels, H, W) tensor: TypeError or ValueError naming x."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B,C,H,W) on the bottom/right to multiples of ``multiple``: reflect, or replicate when
    the image is too small to reflect. Crop back with ``y[..., :H, :W]``."""
    H, W = x.shape[-2:]
    ph, pw = -H % multiple, -W % multiple
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if H > ph and W > pw else "replicate")


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """'Same'-padded conv2d."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-excitation channel attention: ``x * sigmoid(MLP(avgpool(x)))``. (B,C,H,W) -> same.

    The MLP is 1x1 conv to ``channels // reduction``, ``act`` (ReLU when None, as RCAN/MPRNet), 1x1 conv
    back. ``act`` is built for the hidden width: ``act(hidden) -> nn.Module``.
    """

    def __init__(self, channels: int, reduction: int = 4, bias: bool = False, act=None):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=bias), nn.ReLU(inplace=True) if act is None else act(hidden),
            nn.Conv2d(hidden, channels, 1, bias=bias), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mlp(self.pool(x))


class CAB(nn.Module):
    """Channel attention block: conv-act-conv, channel attention, residual. (B,C,H,W) -> same.

    ``act(width) -> nn.Module`` builds the activations: the body's (width C) and the attention
    squeeze's (width C // reduction). None: a single-slope ``nn.PReLU()`` in the body and ReLU in
    the squeeze (MPRNet).
    """

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 4, bias: bool = False,
                 act=None):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size, bias=bias), nn.PReLU() if act is None else act(channels),
            conv(channels, channels, kernel_size, bias=bias),
        )
        self.ca = ChannelAttention(channels, reduction, bias, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ca(self.body(x))


class DownSample(nn.Module):
    """Bilinear 1/2 downscale, then a 1x1 conv widening channels. (B,C,H,W) -> (B,C+extra,H/2,W/2)."""

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels + extra, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))


class SkipUpSample(nn.Module):
    """Bilinear x2 upscale of ``x`` and a 1x1 conv narrowing channels, plus the skip ``y``.

    x (B,C+extra,H/2,W/2), y (B,C,H,W) -> (B,C,H,W).
    """

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.proj = nn.Conv2d(channels + extra, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(up) + y


class SAM(nn.Module):
    """Supervised attention module (MPRNet): emits an image and attention-gated features.

    feats (B,C,H,W), image (B,3,H,W) -> (feats' (B,C,H,W), restored (B,3,H,W)) where
    ``restored = conv(feats) + image`` and ``feats' = conv(feats) * sigmoid(conv(restored)) + feats``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = False, image_channels: int = 3):
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size, bias=bias)
        self.conv2 = conv(channels, image_channels, kernel_size, bias=bias)
        self.conv3 = conv(image_channels, channels, kernel_size, bias=bias)

    def forward(self, feats: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restored = self.conv2(feats) + image
        attn = torch.sigmoid(self.conv3(restored))
        return self.conv1(feats) * attn + feats, restored


class ORB(nn.Module):
    """Original-resolution block (MPRNet): ``num_cab`` CABs and a conv, residual. (B,C,H,W) -> same."""

    def __init__(self, channels: int, num_cab: int, kernel_size: int = 3, reduction: int = 4, bias: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            *[CAB(channels, kernel_size, reduction, bias) for _ in range(num_cab)],
            conv(channels, channels, kernel_size, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
