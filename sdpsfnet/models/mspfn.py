"""MSPFN (Jiang et al., "Multi-Scale Progressive Fusion Network for Single Image Deraining",
CVPR 2020, arXiv 2003.10985), reimplemented in PyTorch on psfops. It follows the authors'
TensorFlow code (github.com/kuihua/MSPFN: ``model/MSPFN.py``, ``utils/layer.py``,
``utils/BasicConvLSTMCell.py``) wherever that and the paper text differ.

Structure (scale 0 is full resolution, scale S-1 the coarsest; S = 3 gives the pyramid 1, 1/2, 1/4):

1. Input pyramid: box (2x2 average per level, as the code's ``downscale2``/``downscale4``; the
   default) or Gaussian (5-tap binomial blur + stride 2, the paper text's Gaussian pyramid;
   ``pyramid="gaussian"``), then a 3x3 conv + PReLU per scale (initial feature extraction).
2. Coarse fusion: per scale a residual recurrent unit (conv -> ConvLSTM -> conv, plus the scale's
   initial features). The ConvLSTM's pointwise update is ``psfops.lstm_cell``.
3. Fine fusion, repeated ``num_fusion`` times: per scale a U-shaped block (stride-2 conv, residual
   channel-attention blocks ``sdpsfnet.blocks.CAB``, transposed conv over [down, CABs]) added to
   the scale's stream.
   In both fusions the scales run coarse to fine, and each finer scale's input is its own stream
   plus every coarser scale's output, carried up one octave at a time (transposed conv + PReLU).
4. Reconstruction: per scale merge of fine and coarse features, coarse-to-fine aggregation to full
   resolution, and two convs to the rain layer. ``derained = input - rain``.

Layers as the authors' code builds them:

- Signed range: the network sees ``2x - 1`` (the code feeds ``image / 127.5 - 1``) and subtracts
  its rain layer there; ``model(x)`` takes and returns [0, 1] images like every model here, so
  ``model(x) = ((2x - 1) - rain + 1) / 2 = x - rain / 2``.
- Biases: none on the plain and transposed convolutions (the code's ``conv_layer`` /
  ``deconv_layer``); the convolutions inside the channel-attention blocks have them
  (``tf.layers.conv2d``'s default), as does the ConvLSTM's gate convolution.
- Activations: every one is a per-channel PReLU whose slopes start at 0 (the code's ``prelu``),
  the channel-attention squeeze included.
- Initialisation: Xavier-uniform weights and zero biases (``xavier_initializer`` and
  ``tf.layers``' Glorot default), except the ConvLSTM gate convolution: truncated normal with std
  1e-3, zero biases but 1 on the forget gate (the code adds a constant forget bias of 1.0, the
  same function). The gates are ordered i, f, g, o for ``lstm_cell`` where the code splits
  i, g, f, o: a permutation of the conv's output channels.

Choices where neither source decides (all in ``MSPFNConfig``):
- ``lstm_steps`` (T): the ConvLSTM runs T recurrent steps on the same input from a zero state.
  The authors' code runs one step (T = 1, the ``mspfn`` default); ``mspfn-tiny`` uses T = 2 so the
  recurrence is exercised.
- Padding: the input is reflect-padded on the bottom/right to a multiple of ``2**S`` (the
  coarsest scale is halved once more inside the fine-fusion block; replicate when the image is
  too small to reflect, as SD-PSFNet does) and the output cropped back, so any H, W >= 1 works.
  Stride-2 layers pad symmetrically (PyTorch's convention; TensorFlow's "SAME" pads bottom/right
  only, a one-pixel phase difference between scales).
- Supervision: ``model(x)`` returns ``[derained]``, a one-element list, as the paper supervises
  only the final image. No clamping, so gradients flow everywhere.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import psfops
from psfops import BACKENDS

from .blocks import CAB, check_images, conv, pad_to_multiple
from .registry import register_model

__all__ = ["MSPFNConfig", "MSPFN", "ConvLSTM", "TINY", "mspfn", "mspfn_tiny"]

PYRAMIDS = ("box", "gaussian")


@dataclass(frozen=True)
class MSPFNConfig:
    """MSPFN hyper-parameters. Per-scale tuples are ordered full resolution -> coarsest.

    Defaults are the paper's configuration as the authors' code builds it (17 fusion steps,
    64 feature channels, ConvLSTM widths 256/128/64, 3/3/1 channel-attention blocks per step).
    """

    in_channels: int = 3
    channels: int = 64                      # feature width of every stream
    lstm_in: int = 32                       # channels fed to each ConvLSTM
    lstm_hidden: tuple[int, ...] = (256, 128, 64)  # ConvLSTM width per scale; len = number of scales
    lstm_kernel: int = 3
    lstm_steps: int = 1                     # recurrent steps T of each ConvLSTM
    num_fusion: int = 17                    # fine-fusion repetitions N
    cabs_per_scale: tuple[int, ...] = (3, 3, 1)  # channel-attention blocks per scale per fusion step
    reduction: int = 4                      # channel-attention squeeze ratio
    recon_channels: int = 32                # width before the last conv to the rain layer
    pyramid: str = "box"                    # "box" (authors' code) or "gaussian" (paper text)
    backend: str = "auto"                   # psfops backend for the model's ops

    def __post_init__(self):
        for name in ("lstm_hidden", "cabs_per_scale"):  # lists (e.g. from JSON) become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("in_channels", "channels", "lstm_in", "lstm_kernel", "lstm_steps", "num_fusion",
                     "reduction", "recon_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_fusion" else 1):
                raise ValueError(f"{name} must be a positive int (num_fusion may be 0), got {v!r}")
        if self.lstm_kernel % 2 == 0:
            raise ValueError(f"lstm_kernel must be odd, got {self.lstm_kernel}")
        if not self.lstm_hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                       for h in self.lstm_hidden):
            raise ValueError(f"lstm_hidden must be a non-empty tuple of positive ints, got {self.lstm_hidden!r}")
        if len(self.cabs_per_scale) != len(self.lstm_hidden) or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.cabs_per_scale):
            raise ValueError(
                f"cabs_per_scale must hold one int >= 0 per scale ({len(self.lstm_hidden)} scales, "
                f"from lstm_hidden), got {self.cabs_per_scale!r}"
            )
        if self.pyramid not in PYRAMIDS:
            raise ValueError(f"pyramid must be one of {PYRAMIDS}, got {self.pyramid!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def num_scales(self) -> int:
        return len(self.lstm_hidden)


# The reduced model for tests and quick runs: every part present, about 0.15M parameters.
TINY = dict(channels=16, lstm_in=8, lstm_hidden=(16, 12, 8), lstm_steps=2, num_fusion=2,
            cabs_per_scale=(1, 1, 1), recon_channels=8)


class ConvLSTM(nn.Module):
    """Convolutional LSTM run for ``steps`` recurrent steps on one input.

    Each step: ``gates = conv([x, h_prev])`` (B,4*hidden,H,W) in order i,f,g,o, then
    ``h, c = psfops.lstm_cell(gates, c_prev)``. ``forward(x, state=None)`` takes x (B,in,H,W) and
    an optional ``(h, c)``, each (B,hidden,H,W) (None: zeros), and returns ``(h, (h, c))``.
    Init (:meth:`reset_parameters`) as the authors' ``BasicConvLSTMCell``: gate weights truncated
    normal (std 1e-3, cut at 2 std), biases 0 except the forget gate's, 1.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, steps: int = 1):
        super().__init__()
        self.hidden, self.steps = hidden, steps
        self.gates = conv(in_channels + hidden, 4 * hidden, kernel_size, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.gates.weight, std=1e-3, a=-2e-3, b=2e-3)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[self.hidden:2 * self.hidden].fill_(1.0)  # forget gate starts open

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden, x.shape[2], x.shape[3])
            state = (z, z)
        h, c = state
        for _ in range(self.steps):
            h, c = psfops.lstm_cell(self.gates(torch.cat([x, h], dim=1)), c)
        return h, (h, c)


def _prelu(channels: int) -> nn.PReLU:
    """The authors' ``prelu``: one slope per channel, starting at 0."""
    return nn.PReLU(channels, init=0.0)


class _Up(nn.Sequential):
    """Exact 2x upsampling: 3x3 transposed conv (no bias), stride 2, then PReLU.
    (B,in,H,W) -> (B,out,2H,2W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1,
                                            bias=False), _prelu(out_ch))


def _conv_act(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) then PReLU: the code's ``conv_layer`` / stride-1 ``deconv_layer`` + ``prelu``."""
    return nn.Sequential(conv(in_ch, out_ch, 3, stride=stride), _prelu(out_ch))


class _RecurrentUnit(nn.Module):
    """Coarse-fusion body of one scale: conv -> ConvLSTM -> conv. (B,C,H,W) -> (B,C,H,W)."""

    def __init__(self, cfg: MSPFNConfig, hidden: int):
        super().__init__()
        self.inp = _conv_act(cfg.channels, cfg.lstm_in)
        self.lstm = ConvLSTM(cfg.lstm_in, hidden, cfg.lstm_kernel, cfg.lstm_steps)
        self.out = _conv_act(hidden, cfg.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(self.inp(x))[0])


class _AttentionUnit(nn.Module):
    """Fine-fusion body of one scale: stride-2 conv, CABs, transposed conv over [down, CABs].

    (B,C,H,W) -> (B,C,H,W); H, W even.
    """

    def __init__(self, cfg: MSPFNConfig, num_cabs: int):
        super().__init__()
        C = cfg.channels
        self.down = _conv_act(C, C, stride=2)
        self.cabs = nn.Sequential(*[CAB(C, 3, cfg.reduction, bias=True, act=_prelu) for _ in range(num_cabs)])
        self.up = _Up(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        return self.up(torch.cat([d, self.cabs(d)], dim=1))


class _CoarseToFine(nn.Module):
    """Multi-scale progressive fusion step over S streams (index 0 = full resolution).

    Coarse to fine: ``e_s = x_s + sum_{k>s} carry_k`` where ``carry_k`` is scale k's output carried
    up one octave per finer scale by its own ``_Up``; ``out_s = x_s + body_s(e_s)``.
    Takes and returns a list of S tensors (B,C,H/2**s,W/2**s).
    """

    def __init__(self, bodies: list[nn.Module], channels: int):
        super().__init__()
        S = len(bodies)
        self.bodies = nn.ModuleList(bodies)
        self.ups = nn.ModuleDict({f"{k}to{s}": _Up(channels, channels)
                                  for k in range(1, S) for s in range(k)})

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        S = len(xs)
        outs: list[torch.Tensor | None] = [None] * S
        carry: dict[int, torch.Tensor] = {}
        for s in reversed(range(S)):
            e = xs[s]
            for k in range(s + 1, S):
                carry[k] = self.ups[f"{k}to{s}"](carry[k])
                e = e + carry[k]
            outs[s] = xs[s] + self.bodies[s](e)
            carry[s] = outs[s]
        return outs


class MSPFN(nn.Module):
    """MSPFN deraining model. ``model(x)``: x (B,in_channels,H,W) in [0,1], any H, W >= 1 ->
    ``[derained]`` (a list with one (B,in_channels,H,W) image in [0,1] terms, the final one last).

    The psfops ops run inside ``psfops.backend(config.backend)``; ``"auto"`` leaves the ambient
    choice (an enclosing ``psfops.backend``, ``PSFOPS_BACKEND``, else by device) in force.
    """

    def __init__(self, config: MSPFNConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else MSPFNConfig()
        C, S = cfg.channels, cfg.num_scales
        self.heads = nn.ModuleList([_conv_act(cfg.in_channels, C) for _ in range(S)])
        self.coarse = _CoarseToFine([_RecurrentUnit(cfg, h) for h in cfg.lstm_hidden], C)
        self.fine = nn.ModuleList([
            _CoarseToFine([_AttentionUnit(cfg, n) for n in cfg.cabs_per_scale], C)
            for _ in range(cfg.num_fusion)
        ])
        self.merge = nn.ModuleList([_conv_act(2 * C, C) for _ in range(S)])
        self.recon_ups = nn.ModuleList([_Up(C if i == 0 else 2 * C, C) for i in range(S - 1)])
        self.tail = nn.Sequential(
            _conv_act(C if S == 1 else 2 * C, cfg.recon_channels),
            conv(cfg.recon_channels, cfg.in_channels, 3),
        )
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        self.register_buffer("blur", torch.outer(taps, taps), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: Xavier-uniform conv weights, zero biases, PReLU slopes 0; the
        ConvLSTMs their own (:meth:`ConvLSTM.reset_parameters`)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.PReLU):
                nn.init.zeros_(m.weight)
        for m in self.modules():  # after the loop above, which also reaches their gate convs
            if isinstance(m, ConvLSTM):
                m.reset_parameters()

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """One pyramid level: (B,c,H,W) -> (B,c,H/2,W/2), H and W even."""
        if self.config.pyramid == "box":
            return F.avg_pool2d(x, 2)
        c = x.shape[1]
        w = self.blur.to(x.dtype).expand(c, 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w, stride=2, groups=c)

    def _backend(self):
        b = self.config.backend
        return contextlib.nullcontext() if b == "auto" else psfops.backend(b)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_images(x, self.config.in_channels)
        H, W = x.shape[-2:]
        if H < 1 or W < 1:
            raise ValueError(f"x must have H, W >= 1, got shape {tuple(x.shape)}")
        with self._backend():
            return [x - 0.5 * self.rain(2 * x - 1)]

    def rain(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted rain layer (B,in_channels,H,W) of a signed-range image x = 2*image - 1
        (both in [-1, 1] terms, as the authors' network); pads to a multiple of 2**S and crops back."""
        S, (H, W) = self.config.num_scales, x.shape[-2:]
        xp = pad_to_multiple(x, 2 ** S)
        pyramid = [xp]
        for _ in range(S - 1):
            pyramid.append(self._down(pyramid[-1]))
        feats = [head(p) for head, p in zip(self.heads, pyramid)]
        coarse = self.coarse(feats)
        fine = coarse
        for step in self.fine:
            fine = step(fine)
        ys = [mrg(torch.cat([f, c], dim=1)) for mrg, f, c in zip(self.merge, fine, coarse)]
        m_ = ys[-1]
        for s in reversed(range(S - 1)):
            m_ = torch.cat([self.recon_ups[S - 2 - s](m_), ys[s]], dim=1)
        return self.tail(m_)[..., :H, :W]


def _build(base: dict, overrides: dict) -> MSPFN:
    unknown = set(overrides) - {f.name for f in dataclasses.fields(MSPFNConfig)}
    if unknown:
        raise TypeError(f"unknown MSPFN config field(s) {sorted(unknown)}; "
                        f"choose from {[f.name for f in dataclasses.fields(MSPFNConfig)]}")
    return MSPFN(MSPFNConfig(**{**base, **overrides}))


@register_model("mspfn")
def mspfn(**overrides) -> MSPFN:
    """The paper's MSPFN (see ``MSPFNConfig`` defaults); any config field can be overridden."""
    return _build({}, overrides)


@register_model("mspfn-tiny")
def mspfn_tiny(**overrides) -> MSPFN:
    """A reduced MSPFN (``TINY``) for tests and quick runs; any config field can be overridden."""
    return _build(TINY, overrides)
