"""SD-PSFNet: Sequential and Dynamic PSF Network for deraining (AAAI 2026), on psfops ops.

The authors' code is not public; this follows the paper's text and tables and
MPRNet (Zamir et al. 2021) for everything they leave open. Data flow (``x``: rainy image,
``I_s``: restored image emitted by stage s, all supervised; every stage sees the full image)::

    x ──► Stage In ──► Stage Mid ×τ ──► ORStage ──► I_final
            │  I_1        │  I_2..I_τ+1     ▲
            └── state ────┴──── state ──────┘   state = (encoder memory [3 scales],
                                                         decoder features [3 scales], SAM features)

    one UNet stage (Stage In / Stage Mid):
      x ─► conv+CAB ─► (G1: gate with prev SAM features) ─► encoder: 3 scales of CABs
           each scale:  + CSFF from prev encoder memory / prev decoder   (G3: dual gate if enhanced)
      enc3 ─► multi-scale PSF head (3x3|5x5|7x7 ─► cat ─► 1x1 ─► CAB ─► norm ─► 1x1 ─► K_c maps)
                 ─► spatial_normalize per channel ─► P (B,K_c,H/4,W/4)
      decoder: 3 scales of CABs (skip CABs, bilinear up), each scale followed by a residual
           PSF block:  d + PSFAttention(DynamicPSF(d, w(P)), P)
      dec1 ─► SAM ─► I_s, SAM features;   encoder memory  M_l = G2_l(enc_l, M_l)   (hierarchical)

    ORStage: x ─► conv+CAB ─► G1 (+3x3 conv to n_feat+16) ─► 3 × [ORB (num_cab CABs) ─►
             CSFF from the last UNet stage's scale l, upsampled]
             ─► conv ─► + x ─► I_final

Choices where the paper is silent (sizes and ablation switches are :class:`SDPSFNetConfig` fields):

* Widths: MPRNet's deraining widths (n_feat 40, +20 per UNet scale, ORStage 40+16 channels,
  3 ORBs, reduction 4). Each UNet scale holds ``unet_cabs`` (3) CABs in the encoder and in the
  decoder, and each ORB ``num_cab`` (9; MPRNet has 8) CABs: the two depths that make the paper's
  parameter counts come out (9.70M at tau=3, 3.68M at tau=0; the paper 9.63M and 3.64M; with 8
  CABs per ORB tau=0 would be 3.50M, 3.8% short).
* PSF maps: the head runs on the deepest encoder features of each UNet stage. Its K_c maps P are
  ``spatial_normalize``d (softmax over the plane, each map sums to 1). As mixing weights for
  ``psf_conv`` they are rescaled to ``w_j = P_j * h*w / K_c`` (bilinearly resized to the
  feature scale): the weights then average 1/K_c per map, so with sum-1 basis kernels the
  synthesized per-pixel kernel sums to 1 on average ("energy conservation"). The K_c maps must
  differ from the start: the gradient reaching basis kernel j is its own map's weighting of one
  common per-pixel gradient, so identical or flat maps give every kernel the same update and
  the dictionary never diversifies. Hence the head normalizes its features over (C, h, w)
  per image (``GroupNorm(1, ., affine=False)``; they are ~0.01 in size at init) before a last
  1x1 conv with PyTorch's random init: the maps' logits start with a spread of ~0.5 instead of
  ~0.01.
* Dynamic PSF filtering: one ``DynamicPSF`` (``psfops.nn.DynamicPSF``'s K_c-kernel k x k basis,
  ``spatial_normalize``d, starting near a delta) per decoder scale, applied to the decoder
  features with ``psf_conv``; its weights are the head's maps (its own weight conv is dropped).
* PSF-aware attention: channel modulation as the paper words it ("a PSF encoder extracts
  compact features to generate gamma, beta"): the PSF encoder (3x3 conv, PReLU, global average
  pool) maps ``P * h*w`` to one code per image, a zero-initialised 1x1 conv maps the code to
  per-channel gamma, beta (B,C,1,1); ``x_mod = x*(1+gamma)+beta``.
  Spatial weights ``sigmoid(conv7x7([mean_c x_mod, max_c x_mod, s]))`` where ``s`` is the
  single-channel PSF (mean over the K_c maps, times h*w) upsampled to the feature scale;
  output ``x_mod * weights``, added residually to the decoder features.
* Gates (all ``psfops.gated_fusion``, gate = 1x1 conv of [cur, prev], ``G*cur + (1-G)*prev``):
  G1 ``gates``: shallow features with the previous stage's SAM features (off: MPRNet's 3x3 conv
  of the concatenation). G2 ``hierarchical_update``: the encoder features handed to later
  stages are a gated running memory over all stages so far, at each of the 3 scales (LSTM-like;
  off: only the last stage's encoder features, as MPRNet). G3 ``enhanced_csff``: CSFF adds the
  1x1-projected previous encoder and decoder features through two gates, one each (off: plain
  sum, as MPRNet). In the ORStage, CSFF inputs are projected by 1x1 convs, then bilinearly
  upsampled to full resolution.
* Outputs: each UNet stage emits its image through a SAM (``conv(feats) + x``), whose gated
  features feed the next stage; the ORStage emits ``conv(feats) + x`` (SAM's image branch; no
  stage follows to use attention features), as MPRNet's last stage.
* ``num_basis`` = 0 removes the PSF head, DynamicPSF and PSF attention; 1 keeps them with a
  single map and a single basis kernel.
* Input: any H, W; reflect-padded to a multiple of 4 (replicate when the image is too small to
  reflect) and cropped back. ``backend`` other than "auto" runs the forward inside
  ``psfops.backend(backend)``; "auto" leaves the ambient choice (context manager or
  ``PSFOPS_BACKEND``) in force.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import psfops
from psfops import BACKENDS
from psfops.nn import DynamicPSF, GatedFusion

from .blocks import CAB, ORB, SAM, DownSample, SkipUpSample, check_images, conv, pad_to_multiple
from .registry import register_model

__all__ = ["SDPSFNetConfig", "SDPSFNet", "PRESETS", "ABLATIONS", "PSFHead", "PSFAttention"]

PAD_MULTIPLE = 4  # two 2x downsamplings in the UNet stages


@dataclass(frozen=True)
class SDPSFNetConfig:
    """Every knob of SD-PSFNet; ``build_model(name, **overrides)`` replaces fields of a preset."""

    num_mid_stages: int = 3          # tau, 0..3
    num_basis: int = 40              # K_c; 1 = single-channel PSF; 0 = no PSF components
    gates: bool = True               # G1: gated shallow-feature fusion at stage input
    hierarchical_update: bool = True  # G2: gated cross-stage encoder memory
    enhanced_csff: bool = True       # G3: dual-gate CSFF
    n_feat: int = 40                 # channels at full resolution in the UNet stages
    scale_unetfeats: int = 20        # extra channels per UNet scale
    scale_orsnetfeats: int = 16      # extra channels in the ORStage
    unet_cabs: int = 3               # CABs per scale, in the encoder and in the decoder
    num_cab: int = 9                 # CABs per ORB (3 ORBs)
    psf_head_feats: int = 48         # PSF head branch width; 0 = the bottleneck width
    psf_kernel_size: int = 7         # k of the basis kernels
    psf_dilation: int = 1
    kernel_size: int = 3
    reduction: int = 4
    backend: str = "auto"            # "auto" | "triton" | "reference"

    def __post_init__(self):
        _check_int("num_mid_stages", self.num_mid_stages, 0, 3)
        _check_int("num_basis", self.num_basis, 0)
        for name in ("gates", "hierarchical_update", "enhanced_csff"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("n_feat", "unet_cabs", "num_cab", "reduction", "psf_dilation"):
            _check_int(name, getattr(self, name), 1)
        for name in ("scale_unetfeats", "scale_orsnetfeats", "psf_head_feats"):
            _check_int(name, getattr(self, name), 0)
        for name in ("psf_kernel_size", "kernel_size"):
            _check_int(name, getattr(self, name), 1)
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def unet_widths(self) -> tuple[int, int, int]:
        s = self.scale_unetfeats
        return (self.n_feat, self.n_feat + s, self.n_feat + 2 * s)

    @property
    def ors_width(self) -> int:
        return self.n_feat + self.scale_orsnetfeats


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _resize(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``t`` to ``like``'s H, W (no-op when they match)."""
    if t.shape[-2:] == like.shape[-2:]:
        return t
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PSFHead(nn.Module):
    """Multi-scale PSF head: 3x3/5x5/7x7 conv branches, concat, 1x1 conv, CAB, GroupNorm, 1x1 conv
    to K_c maps, ``spatial_normalize``d. feats (B,C,h,w) -> P (B,K_c,h,w), each map summing to 1."""

    def __init__(self, channels: int, num_basis: int, hidden: int, reduction: int = 4):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(conv(channels, hidden, k), nn.PReLU()) for k in (3, 5, 7))
        self.fuse = nn.Sequential(nn.Conv2d(3 * hidden, hidden, 1, bias=False), CAB(hidden, 3, reduction))
        # parameter-free: a per-channel scale is absorbed by proj, and a shift cancels in the softmax
        self.norm = nn.GroupNorm(1, hidden, affine=False)
        # no bias: a per-map constant cancels in the plane softmax (its gradient is exactly 0)
        self.proj = nn.Conv2d(hidden, num_basis, 1, bias=False)  # default (random) init: see the module docstring

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([b(feats) for b in self.branches], dim=1))
        return psfops.spatial_normalize(self.proj(self.norm(y)))


class PSFAttention(nn.Module):
    """PSF-aware attention. x (B,C,H,W), psf P (B,K,h,w) (maps summing to 1) -> (B,C,H,W).

    (a) Channel modulation, as the paper: a PSF encoder (3x3 conv, PReLU, global average pool)
    compresses the PSF maps into a compact code (B,C,1,1); a 1x1 conv turns it into per-channel
    gamma, beta (B,C,1,1); ``x_mod = x*(1+gamma)+beta`` (the paper's ``x*gamma+beta`` with gamma
    written as 1 + gamma, the 1x1 conv zero-initialised, so a fresh block does not modulate).
    (b) Spatial attention: ``x_mod * sigmoid(conv7x7([mean_c x_mod, max_c x_mod, s]))``, s the
    single-channel PSF (mean over the K maps) upsampled to H,W.
    """

    def __init__(self, channels: int, num_basis: int):
        super().__init__()
        self.encoder = nn.Sequential(conv(num_basis, channels, 3, bias=True), nn.PReLU(), nn.AdaptiveAvgPool2d(1))
        self.modulation = nn.Conv2d(channels, 2 * channels, 1, bias=True)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.spatial = conv(3, 1, 7, bias=True)

    def forward(self, x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        dense = psf * (psf.shape[-2] * psf.shape[-1])  # mean 1 per map
        gamma, beta = self.modulation(self.encoder(dense)).chunk(2, dim=1)  # (B,C,1,1) each
        x_mod = x * (1 + gamma) + beta
        single = _resize(dense.mean(dim=1, keepdim=True), x)
        stats = torch.cat([x_mod.mean(dim=1, keepdim=True), x_mod.amax(dim=1, keepdim=True),
                           single.to(x_mod.dtype)], dim=1)
        return x_mod * torch.sigmoid(self.spatial(stats))


class PSFBlock(nn.Module):
    """Residual PSF branch at one decoder scale: ``x + PSFAttention(DynamicPSF(x, w(P)), P)``."""

    def __init__(self, channels: int, cfg: SDPSFNetConfig):
        super().__init__()
        self.dynamic_psf = DynamicPSF(channels, cfg.num_basis, cfg.psf_kernel_size, cfg.psf_dilation,
                                      predict_weights=False)
        self.attention = PSFAttention(channels, cfg.num_basis)

    def forward(self, x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        h, w = psf.shape[-2:]
        weights = _resize(psf * (h * w / psf.shape[1]), x)  # mean 1/K_c per map
        return x + self.attention(self.dynamic_psf(x, weights), psf)


# ---- cross-stage fusion ---------------------------------------------------------------------

class StageInputFusion(nn.Module):
    """Shallow features (B,n,H,W) with the previous stage's SAM features (B,n,H,W) -> (B,out,H,W).

    Gated (G1): ``gated_fusion`` then, if ``out != n``, a 3x3 conv. Plain: 3x3 conv of the concat.
    """

    def __init__(self, n_feat: int, out: int, gated: bool, kernel_size: int = 3):
        super().__init__()
        self.gate = GatedFusion(n_feat) if gated else None
        if gated:
            self.conv = conv(n_feat, out, kernel_size) if out != n_feat else nn.Identity()
        else:
            self.conv = conv(2 * n_feat, out, kernel_size)

    def forward(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.conv(self.gate(cur, prev))
        return self.conv(torch.cat([cur, prev.to(cur.dtype)], dim=1))


class CSFF(nn.Module):
    """Cross-stage feature fusion into ``x`` (B,out,H,W) from the previous stage's encoder and
    decoder features (B,in,h,w): 1x1 projections, bilinear resize to H,W, then either the sum
    ``x + e + d`` (MPRNet) or, enhanced (G3), two gates: ``gf_d(gf_e(x, e), d)``."""

    def __init__(self, in_ch: int, out_ch: int, enhanced: bool):
        super().__init__()
        self.proj_enc = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.proj_dec = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.gate_enc = GatedFusion(out_ch) if enhanced else None
        self.gate_dec = GatedFusion(out_ch) if enhanced else None

    def forward(self, x: torch.Tensor, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        e = _resize(self.proj_enc(enc), x)
        d = _resize(self.proj_dec(dec), x)
        if self.gate_enc is None:
            return x + e + d
        return self.gate_dec(self.gate_enc(x, e), d)


class StageState(NamedTuple):
    """What a stage hands to the next: encoder memory and decoder features (3 scales, fine first)
    and SAM features (B,n_feat,H,W)."""

    enc: list
    dec: list
    sam_feats: torch.Tensor


# ---- stages ---------------------------------------------------------------------------------

def _cabs(channels: int, count: int, cfg: SDPSFNetConfig) -> nn.Sequential:
    return nn.Sequential(*[CAB(channels, cfg.kernel_size, cfg.reduction) for _ in range(count)])


class UNetStage(nn.Module):
    """Stage In (``first``) or Stage Mid: full-image 3-scale encoder-decoder with PSF components.

    x (B,3,H,W) with H, W multiples of 4, previous StageState or None ->
    (image (B,3,H,W), StageState, PSF maps (B,K_c,H/4,W/4) or None).
    """

    def __init__(self, cfg: SDPSFNetConfig, first: bool):
        super().__init__()
        n, s = cfg.n_feat, cfg.scale_unetfeats
        widths = cfg.unet_widths
        self.shallow = nn.Sequential(conv(3, n, cfg.kernel_size), CAB(n, cfg.kernel_size, cfg.reduction))
        self.input_fusion = None if first else StageInputFusion(n, n, cfg.gates, cfg.kernel_size)
        self.encoder = nn.ModuleList(_cabs(c, cfg.unet_cabs, cfg) for c in widths)
        self.down = nn.ModuleList([DownSample(widths[0], s), DownSample(widths[1], s)])
        self.csff = None if first else nn.ModuleList(CSFF(c, c, cfg.enhanced_csff) for c in widths)
        self.memory_update = (nn.ModuleList(GatedFusion(c) for c in widths)
                              if cfg.hierarchical_update and not first else None)
        self.psf_head = (PSFHead(widths[2], cfg.num_basis, cfg.psf_head_feats or widths[2], cfg.reduction)
                         if cfg.num_basis > 0 else None)
        self.decoder = nn.ModuleList(_cabs(c, cfg.unet_cabs, cfg) for c in widths)
        self.skip_attn = nn.ModuleList(CAB(c, cfg.kernel_size, cfg.reduction) for c in widths[:2])
        self.up = nn.ModuleList([SkipUpSample(widths[0], s), SkipUpSample(widths[1], s)])
        self.psf_blocks = (nn.ModuleList(PSFBlock(c, cfg) for c in widths)
                           if cfg.num_basis > 0 else None)
        self.sam = SAM(n, cfg.kernel_size)

    def forward(self, x: torch.Tensor, prev: StageState | None):
        f = self.shallow(x)
        if prev is not None:
            f = self.input_fusion(f, prev.sam_feats)
        enc = []
        for lvl in range(3):
            if lvl:
                f = self.down[lvl - 1](f)
            f = self.encoder[lvl](f)
            if prev is not None:
                f = self.csff[lvl](f, prev.enc[lvl], prev.dec[lvl])
            enc.append(f)
        psf = self.psf_head(enc[2]) if self.psf_head is not None else None
        dec = [None, None, None]
        d = enc[2]
        for lvl in (2, 1, 0):
            if lvl < 2:
                d = self.up[lvl](d, self.skip_attn[lvl](enc[lvl]))
            d = self.decoder[lvl](d)
            if psf is not None:
                d = self.psf_blocks[lvl](d, psf)
            dec[lvl] = d
        sam_feats, image = self.sam(dec[0], x)
        memory = enc
        if self.memory_update is not None:
            memory = [g(e, m) for g, e, m in zip(self.memory_update, enc, prev.enc)]
        return image, StageState(memory, dec, sam_feats), psf


class ORStage(nn.Module):
    """Original-resolution stage: 3 ORBs at full resolution, CSFF from the previous UNet stage's
    scale l after ORB l, conv tail plus the input. x (B,3,H,W), StageState -> image (B,3,H,W)."""

    def __init__(self, cfg: SDPSFNetConfig):
        super().__init__()
        n, c = cfg.n_feat, cfg.ors_width
        self.shallow = nn.Sequential(conv(3, n, cfg.kernel_size), CAB(n, cfg.kernel_size, cfg.reduction))
        self.input_fusion = StageInputFusion(n, c, cfg.gates, cfg.kernel_size)
        self.orbs = nn.ModuleList(ORB(c, cfg.num_cab, cfg.kernel_size, cfg.reduction) for _ in range(3))
        self.csff = nn.ModuleList(CSFF(w, c, cfg.enhanced_csff) for w in cfg.unet_widths)
        self.tail = conv(c, 3, cfg.kernel_size)

    def forward(self, x: torch.Tensor, prev: StageState) -> torch.Tensor:
        f = self.input_fusion(self.shallow(x), prev.sam_feats)
        for orb, csff, e, d in zip(self.orbs, self.csff, prev.enc, prev.dec):
            f = csff(orb(f), e, d)
        return self.tail(f) + x


# ---- the model ------------------------------------------------------------------------------

class SDPSFNet(nn.Module):
    """SD-PSFNet. ``model(x)``: x (B,3,H,W) in [0,1], any H, W -> list of ``num_mid_stages + 2``
    restored images (B,3,H,W), Stage In first, the ORStage (final) output last."""

    def __init__(self, config: SDPSFNetConfig | None = None):
        super().__init__()
        self.config = config if config is not None else SDPSFNetConfig()
        cfg = self.config
        self.stages = nn.ModuleList(
            [UNetStage(cfg, first=True)] + [UNetStage(cfg, first=False) for _ in range(cfg.num_mid_stages)])
        self.orstage = ORStage(cfg)

    def psf_modules(self) -> list[DynamicPSF]:
        """The DynamicPSF modules, stage by stage (Stage In first), each stage's decoder scales
        full resolution first; empty when ``num_basis == 0``."""
        return [m for m in self.modules() if isinstance(m, DynamicPSF)]

    def forward(self, x: torch.Tensor, return_psf: bool = False):
        """x (B,3,H,W) -> list of images (B,3,H,W), final last. With ``return_psf``:
        ``(images, psf_maps)``, psf_maps one (B,K_c,ceil(H/4),ceil(W/4)) tensor per UNet stage
        (each map sums to 1 over the padded plane); empty when ``num_basis == 0``."""
        check_images(x, 3)
        name = self.config.backend
        ctx = contextlib.nullcontext() if name == "auto" else psfops.backend(name)
        with ctx:
            images, psf_maps = self._forward(x)
        return (images, psf_maps) if return_psf else images

    def _forward(self, x: torch.Tensor):
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, PAD_MULTIPLE)
        images, psf_maps, state = [], [], None
        for stage in self.stages:
            image, state, psf = stage(x, state)
            images.append(image)
            if psf is not None:
                psf_maps.append(psf)
        images.append(self.orstage(x, state))
        return [im[..., :H, :W] for im in images], psf_maps


# ---- presets and ablations ------------------------------------------------------------------

TINY_WIDTHS = dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, unet_cabs=1, num_cab=1,
                   psf_head_feats=8, reduction=4)

PRESETS: dict[str, dict] = {
    "sdpsfnet": {},
    "sdpsfnet-tau0": dict(num_mid_stages=0),
    "sdpsfnet-tau1": dict(num_mid_stages=1),
    "sdpsfnet-tau2": dict(num_mid_stages=2),
    "tiny": dict(num_mid_stages=1, num_basis=8, **TINY_WIDTHS),
}

# The paper's ablation rows (incremental component contributions, cumulative: each row adds one
# component to the row before, all at tau=3) and its tau study, each as overrides of the
# ``sdpsfnet`` preset: ``build_model("sdpsfnet", **ABLATIONS[row])``.
ABLATIONS: dict[str, dict] = {
    "baseline": dict(gates=False, hierarchical_update=False, enhanced_csff=False, num_basis=0),
    "+gate": dict(gates=True, hierarchical_update=False, enhanced_csff=False, num_basis=0),
    "+hierarchical": dict(gates=True, hierarchical_update=True, enhanced_csff=False, num_basis=0),
    "+enhanced-csff": dict(gates=True, hierarchical_update=True, enhanced_csff=True, num_basis=0),
    "+psf-1ch": dict(num_basis=1),
    "+psf-40ch": dict(num_basis=40),
    # Not a paper row: MPRNet's own layout in this code (two UNet stages + ORStage, plain fusion,
    # 2 CABs per scale, 8 per ORB): 3.65M parameters, MPRNet's 3.64M.
    "mprnet-like": dict(num_mid_stages=1, gates=False, hierarchical_update=False, enhanced_csff=False,
                        num_basis=0, unet_cabs=2, num_cab=8),
    "tau0": dict(num_mid_stages=0),
    "tau1": dict(num_mid_stages=1),
    "tau2": dict(num_mid_stages=2),
    "tau3": dict(num_mid_stages=3),
}


def make_config(preset: str = "sdpsfnet", **overrides) -> SDPSFNetConfig:
    """The config of ``preset`` with ``overrides`` applied; unknown fields raise TypeError."""
    fields = {f.name for f in dataclasses.fields(SDPSFNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown SD-PSFNet config field(s) {unknown}; valid: {sorted(fields)}")
    return SDPSFNetConfig(**{**PRESETS[preset], **overrides})


def _register(name: str) -> None:
    @register_model(name)
    def factory(**overrides) -> SDPSFNet:
        return SDPSFNet(make_config(name, **overrides))
    factory.__doc__ = f"SD-PSFNet preset {name!r}: {PRESETS[name] or 'paper defaults'}"


for _name in PRESETS:
    _register(_name)
