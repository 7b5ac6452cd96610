"""deepinv interoperability: ``SpaceVaryingBlur``, a drop-in for ``deepinv.physics.SpaceVaryingBlur``
(deepinv 0.5) that runs on ``psfops.psf_conv`` / ``psfops.psf_conv_transpose``.

deepinv describes a product-convolution blur by ``filters`` h (b, c, K, fh, fw) and
``multipliers`` w (b, c, K, H, W), b in {1, B}, c in {1, C} (broadcast), and ``padding`` in
``"valid"``, ``"zeros"``/``"constant"``, ``"circular"``, ``"reflect"``, ``"replicate"``:

- ``mask_first=False``: ``A x = sum_k w_k * conv(h_k, x)``. This is the gather form
  ``psf_conv(x, w, flip(h), padding)`` (psfops applies its basis as a correlation), and deepinv's
  ``A_adjoint`` is ``psf_conv_transpose(y, w, flip(h), padding)``, for every padding.
- ``mask_first=True`` (deepinv's default): ``A x = sum_k conv(h_k, w_k * x)``, the scatter form:
  each pixel spreads its light by the PSF of where it sits. With ``"zeros"`` and ``"circular"``
  it is ``psf_conv_transpose(x, w, h, padding)`` (h unflipped) and ``A_adjoint`` is
  ``psf_conv(y, w, h, padding)``. With ``"reflect"``/``"replicate"`` deepinv extends the *masked*
  image ``w_k * x`` by the padding and then convolves: pixels outside the image are virtual sources
  (mirror or edge copies, with the multipliers of the pixel they copy) that shine into the image,
  and light that leaves the image is lost. psfops's ``psf_conv_transpose(..., padding)`` instead
  folds the light that leaves the image back onto the source pixel of the index map (mass
  conserving), so the two differ near the border. deepinv's operator is reproduced exactly here
  as a zero-padded scatter on the extended grid: ``crop(psf_conv_transpose(pad(x), pad(w), h,
  "zeros"))``, ``pad`` by the mode on ``k//2`` pixels (its adjoint:
  ``pad_adjoint(psf_conv(zeropad(y), pad(w), h, "zeros"))``).
- ``"valid"``: the output is the ``(H-fh+1, W-fw+1)`` part of the zero-padded result
  (``mask_first=False``: multipliers of that size, as deepinv asks), computed as the zero-padded op
  and cropped (the adjoint zero-embeds ``y``).

Filters of any size are supported: an even or non-square (fh, fw) filter is embedded in an odd
square kernel with deepinv's centre (``(fh-1)//2`` after flipping), the added taps zero. Filters or
multipliers that differ per channel (c = C > 1) run with the channels folded into the batch and a
per-sample (B*C, K, k, k) basis. The operator is differentiable in the image, filters and
multipliers. ``use_fft`` is accepted and ignored (the same operator). Filters larger than the image
work with every padding (deepinv's ``F.pad`` refuses reflect/circular there).

Swapping it in (deepinv's solvers take any ``LinearPhysics`` built from ``A``/``A_adjoint``)::

    import deepinv as dinv
    from psfops.interop import SpaceVaryingBlur

    blur = SpaceVaryingBlur(filters=h, multipliers=w, padding="reflect", mask_first=True)
    physics = dinv.physics.LinearPhysics(A=blur.A, A_adjoint=blur.A_adjoint,
                                         noise_model=dinv.physics.GaussianNoise(0.01))
    y = physics(x)                      # same as dinv.physics.SpaceVaryingBlur(h, w, "reflect")(x)
    x_hat = physics.A_dagger(y)         # deepinv's solvers, psfops's operator

``blur(x)`` (``blur.A(x)``) is the noiseless operator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import psfops
from . import padding as _pad

__all__ = ["SpaceVaryingBlur", "DEEPINV_PADDINGS", "deepinv_to_psfops"]

DEEPINV_PADDINGS = ("valid", "zeros", "constant", "circular", "reflect", "replicate")

# The module whose psf_conv / psf_conv_transpose run the operator: the public ops. (Tests may point
# it at psfops.reference, which has the same signatures.)
ops = psfops


def _mode(padding) -> str:
    if not isinstance(padding, str) or padding.lower() not in DEEPINV_PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(repr(p) for p in DEEPINV_PADDINGS)} "
                         f"(deepinv's names), got {padding!r}")
    padding = padding.lower()
    return "zeros" if padding == "constant" else padding


def _embed_filters(filters: torch.Tensor) -> torch.Tensor:
    """(..., fh, fw) -> (..., k, k), k odd: each filter in the scatter orientation (h itself), its
    centre (deepinv's: index fh//2 of h, (fh-1)//2 of flip(h)) at k//2; the added taps are zero."""
    fh, fw = int(filters.shape[-2]), int(filters.shape[-1])
    kh, kw = 2 * (fh // 2) + 1, 2 * (fw // 2) + 1
    k = max(kh, kw)
    top, left = (k - kh) // 2, (k - kw) // 2
    return F.pad(filters, (left, k - fw - left, top, k - fh - top))


def deepinv_to_psfops(filters: torch.Tensor, multipliers: torch.Tensor, B: int, C: int):
    """deepinv's (b, c, K, fh, fw) filters and (b, c, K, Hm, Wm) multipliers for an image batch of
    B samples and C channels -> ``(weights, basis, fold)``: psfops ``weights`` (N, K, Hm, Wm),
    ``basis`` in the scatter orientation (K, k, k) or (N, K, k, k), and ``fold``: whether the
    channels go into the batch (N = B*C, the image run as (B*C, 1, H, W)) or not (N = B).
    ``psf_conv`` wants ``basis.flip(-1, -2)`` (mask_first=False), ``psf_conv_transpose`` ``basis``."""
    for name, t in (("filters", filters), ("multipliers", multipliers)):
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            raise ValueError(f"{name} must be a 5-d tensor (b, c, K, height, width) as in deepinv, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.shape[0] not in (1, B) or t.shape[1] not in (1, C):
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to batch {B} and {C} channels "
                             f"(b must be 1 or {B}, c 1 or {C})")
    if filters.shape[2] != multipliers.shape[2]:
        raise ValueError(f"filters and multipliers must have the same K (dim 2), got {filters.shape[2]} "
                         f"and {multipliers.shape[2]}")
    K = int(filters.shape[2])
    kernels = _embed_filters(filters)
    k = int(kernels.shape[-1])
    fold = int(filters.shape[1]) != 1 or int(multipliers.shape[1]) != 1
    Hm, Wm = int(multipliers.shape[-2]), int(multipliers.shape[-1])
    if not fold:
        weights = multipliers[:, 0].expand(B, K, Hm, Wm)
        basis = kernels[0, 0] if filters.shape[0] == 1 else kernels[:, 0]
        return weights, basis, False
    weights = multipliers.expand(B, C, K, Hm, Wm).reshape(B * C, K, Hm, Wm)
    if filters.shape[0] == 1 and filters.shape[1] == 1:
        basis = kernels[0, 0]
    else:
        basis = kernels.expand(B, C, K, k, k).reshape(B * C, K, k, k)
    return weights, basis, True


class SpaceVaryingBlur(torch.nn.Module):
    """deepinv's ``SpaceVaryingBlur(filters, multipliers, padding, mask_first)`` on psfops's ops.

    Same arguments, defaults (``padding="valid"``, ``mask_first=True``), shapes and results as
    ``deepinv.physics.SpaceVaryingBlur`` (deepinv 0.5); see the module docstring for the exact
    correspondence. ``A(x)``, ``A_adjoint(y)``, ``blur(x) == A(x)``; like deepinv's, ``A`` and
    ``A_adjoint`` take new ``filters``/``multipliers``/``padding`` and store them.
    """

    def __init__(self, filters: torch.Tensor | None = None, multipliers: torch.Tensor | None = None,
                 padding: str = "valid", mask_first: bool = True, use_fft: bool = False,
                 device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("filters", filters)
        self.register_buffer("multipliers", multipliers)
        self.padding = _mode(padding)
        self.mask_first = bool(mask_first)
        self.use_fft = use_fft  # accepted for deepinv's signature; the operator is the same
        if device is not None:
            self.to(device)

    def update_parameters(self, filters=None, multipliers=None, padding=None, **kwargs) -> None:
        """Store the given ones (None: keep), as deepinv's ``update_parameters``."""
        if filters is not None:
            self.filters = filters
        if multipliers is not None:
            self.multipliers = multipliers
        if padding is not None:
            self.padding = _mode(padding)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.A(x, **kwargs)

    def _layout(self, image: torch.Tensor):
        if self.filters is None or self.multipliers is None:
            raise ValueError("filters and multipliers must be set (constructor or A(x, filters=..., multipliers=...))")
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            raise ValueError(f"the image must be a (B, C, H, W) tensor, got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
        B, C = int(image.shape[0]), int(image.shape[1])
        weights, basis, fold = deepinv_to_psfops(self.filters, self.multipliers, B, C)
        return B, C, weights, basis, fold

    def A(self, x: torch.Tensor, filters=None, multipliers=None, padding=None, **kwargs) -> torch.Tensor:
        """The blur: (B, C, H, W) -> (B, C, H, W) (``"valid"``: (B, C, H-fh+1, W-fw+1))."""
        self.update_parameters(filters, multipliers, padding)
        B, C, weights, basis, fold = self._layout(x)
        H, W = int(x.shape[-2]), int(x.shape[-1])
        z = x.reshape(B * C, 1, H, W) if fold else x
        fh, fw = int(self.filters.shape[-2]), int(self.filters.shape[-1])
        out = _apply(z, weights, basis, self.padding, self.mask_first, (fh, fw), (H, W), adjoint=False)
        return out.reshape(B, C, *out.shape[-2:]) if fold else out

    def A_adjoint(self, y: torch.Tensor, filters=None, multipliers=None, padding=None, **kwargs) -> torch.Tensor:
        """The exact adjoint of :meth:`A` (deepinv's ``A_adjoint``)."""
        self.update_parameters(filters, multipliers, padding)
        B, C, weights, basis, fold = self._layout(y)
        fh, fw = int(self.filters.shape[-2]), int(self.filters.shape[-1])
        Ho, Wo = int(y.shape[-2]), int(y.shape[-1])
        if self.padding == "valid":
            if self.mask_first:
                H, W = int(self.multipliers.shape[-2]), int(self.multipliers.shape[-1])
            else:
                H, W = Ho + fh - 1, Wo + fw - 1
        else:
            H, W = Ho, Wo
        z = y.reshape(B * C, 1, Ho, Wo) if fold else y
        out = _apply(z, weights, basis, self.padding, self.mask_first, (fh, fw), (H, W), adjoint=True)
        return out.reshape(B, C, H, W) if fold else out


def _apply(z, weights, basis, mode, mask_first, fsize, image_size, adjoint):
    """A (adjoint=False: z is the image) or A^T (z the measurement) in psfops terms; ``basis`` is in
    the scatter orientation."""
    k = int(basis.shape[-1])
    H, W = image_size
    if mode == "valid":
        oh, ow = (fsize[0] - 1) // 2, (fsize[1] - 1) // 2
        Ho, Wo = H - fsize[0] + 1, W - fsize[1] + 1
        embed = (ow, W - Wo - ow, oh, H - Ho - oh)  # (Ho, Wo) -> (H, W), zeros around
        crop = (slice(oh, oh + Ho), slice(ow, ow + Wo))
        if not mask_first:  # y = crop(w_out * corr(x, flip h)): multipliers are output-sized
            wfull = F.pad(weights, embed)
            if adjoint:
                return ops.psf_conv_transpose(F.pad(z, embed), wfull, basis.flip(-1, -2), 1, "zeros")
            return ops.psf_conv(z, wfull, basis.flip(-1, -2), 1, "zeros")[..., crop[0], crop[1]]
        if adjoint:
            return ops.psf_conv(F.pad(z, embed), weights, basis, 1, "zeros")
        return ops.psf_conv_transpose(z, weights, basis, 1, "zeros")[..., crop[0], crop[1]]
    if not mask_first:
        op = ops.psf_conv_transpose if adjoint else ops.psf_conv
        return op(z, weights, basis.flip(-1, -2), 1, mode)
    if mode in ("zeros", "circular"):
        op = ops.psf_conv if adjoint else ops.psf_conv_transpose
        return op(z, weights, basis, 1, mode)
    # reflect / replicate, mask first: a zero-padded scatter of the extended image and multipliers
    p = k // 2
    wext = _pad.pad(weights, p, p, mode)
    if adjoint:
        return _pad.pad_adjoint(ops.psf_conv(F.pad(z, (p, p, p, p)), wext, basis, 1, "zeros"), p, p, mode)
    return ops.psf_conv_transpose(_pad.pad(z, p, p, mode), wext, basis, 1, "zeros")[..., p:p + H, p:p + W]
