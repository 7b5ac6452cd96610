"""Figures of a model's learned PSFs: the basis kernels of a dynamic-PSF module and, for an image,
its per-pixel mixing weights (``sdpsfnet show-psf``)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from torch import Tensor


def psf_modules(model: nn.Module) -> list[nn.Module]:
    """The model's dynamic-PSF modules: ``model.psf_modules()`` if it has one, else every
    ``psfops.nn.DynamicPSF`` inside it."""
    if hasattr(model, "psf_modules"):
        return list(model.psf_modules())
    from psfops.nn import DynamicPSF
    return [m for m in model.modules() if isinstance(m, DynamicPSF)]


def _call_weights(module: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """Per-pixel mixing weights (B,J,H,W) of one forward call: the ``weights`` argument when the
    caller passes them (SD-PSFNet's ``dynamic_psf(x, weights)``), else ``mixing_weights(x)``."""
    if kwargs.get("weights") is not None:
        return kwargs["weights"]
    if len(args) > 1 and args[1] is not None:
        return args[1]
    return module.mixing_weights(args[0])


@torch.no_grad()
def psf_maps(model: nn.Module, image: Tensor | None = None) -> list[dict]:
    """For each dynamic-PSF module: ``{"name", "basis": (J,k,k), "weights": (J,H',W') or None}``.

    The weights are those the module applied (first call) during a forward pass of ``image``
    (3,H,W), at that module's feature resolution H', W'.
    """
    mods = psf_modules(model)
    if not mods:
        raise ValueError("the model has no dynamic-PSF modules (e.g. num_basis=0): nothing to show")
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[int, Tensor] = {}

    def grab(mod, args, kwargs, out):  # returns None: the module's output is left alone
        if id(mod) not in seen:
            seen[id(mod)] = _call_weights(mod, args, kwargs)

    hooks = [m.register_forward_hook(grab, with_kwargs=True) for m in mods]
    try:
        if image is not None:
            device = next(model.parameters()).device
            model(image[None].to(device))
    finally:
        for h in hooks:
            h.remove()
    return [{"name": names.get(id(m), type(m).__name__), "basis": m.kernels().float().cpu(),
             "weights": seen[id(m)][0].float().cpu() if id(m) in seen else None} for m in mods]


def _kernel_colours(J: int):
    """J distinct colours for kernel indices: tab20's for J <= 20, else J samples of turbo."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["tab20"].colors[:J] if J <= 20 else colormaps["turbo"].resampled(J)(range(J)))


def robust_range(values: Tensor, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """(``low``, ``high``) percentiles of ``values``: a colour scale that a few extreme pixels (a
    bright border row of the mixing weights) cannot set, so the maps do not look uniform. Values
    outside are drawn in the end colours (the colour bar's arrows)."""
    import numpy as np

    flat = values.detach().flatten().float().cpu().numpy()  # numpy: torch.quantile caps the size
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    return (lo, hi) if hi > lo else (float(flat.min()), float(flat.max()) + 1e-12)


def psf_figure(model: nn.Module, image: Tensor | None = None, module: int = 0, top: int = 8):
    """Matplotlib figure of one DynamicPSF module (index ``module`` in :func:`psf_modules` order).

    Its J normalized basis kernels as a grid on one colour scale (colour bar "kernel weight");
    with ``image`` (3,H,W) also the input, the per-pixel index of the dominant kernel (one colour
    per kernel, legend of the kernels that dominate somewhere), and the ``top`` mixing-weight maps
    with the largest spatial variance on one colour scale, their 1st to 99th percentiles
    (:func:`robust_range`; colour bar "mixing weight (1st-99th pct)").
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    maps = psf_maps(model, image)
    if not 0 <= module < len(maps):
        raise ValueError(f"module must be in [0, {len(maps)}), got {module}")
    info = maps[module]
    basis, weights = info["basis"], info["weights"]
    J = basis.shape[0]
    cols = min(10, J)
    krows = -(-J // cols)
    wrows = 0 if weights is None else 1 + -(-min(top, J) // cols)
    fig, axes = plt.subplots(krows + wrows, cols, figsize=(1.4 * cols + 2.2, 1.3 * (krows + wrows) + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    lo, hi = float(basis.min()), float(basis.max())
    for j in range(J):
        ax = axes[j // cols, j % cols]
        shown = ax.imshow(basis[j].numpy(), cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(f"k{j}", fontsize=7)
    fig.colorbar(shown, ax=axes[:krows].ravel().tolist(), label="kernel weight", shrink=0.9)
    if weights is not None:
        r = krows
        axes[r, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[r, 0].set_title("input", fontsize=7)
        if cols > 1:
            colours = _kernel_colours(J)
            dominant = weights.argmax(0)
            axes[r, 1].imshow(dominant.numpy(), cmap=colours, vmin=-0.5, vmax=J - 0.5, interpolation="nearest")
            axes[r, 1].set_title("dominant k", fontsize=7)
            present = dominant.unique().tolist()  # legend in the free panel beside the map
            axes[r, min(2, cols - 1)].legend(handles=[Patch(color=colours(j), label=f"k{j}") for j in present],
                                             loc="center left", fontsize=6, ncol=1 + len(present) // 6,
                                             title="dominant", title_fontsize=6)
        order = weights.flatten(1).var(1).argsort(descending=True)[:top].tolist()
        wlo, whi = robust_range(weights[order])
        for i, j in enumerate(order):
            ax = axes[r + 1 + i // cols, i % cols]
            shown = ax.imshow(weights[j].numpy(), cmap="viridis", vmin=wlo, vmax=whi)
            ax.set_title(f"w{j}", fontsize=7)
        fig.colorbar(shown, ax=axes[r + 1:].ravel().tolist(), label="mixing weight (1st-99th pct)",
                     shrink=0.9, extend="both")
    fig.suptitle(f"{info['name']}: {J} basis kernels {tuple(basis.shape[1:])}", fontsize=9)
    return fig


FIGURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg")


def figure_format(path: str) -> str:
    """The figure format ``path``'s suffix names; ValueError naming ``path`` for another suffix."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"--out {path}: the suffix picks the format, use one of "
                         f"{', '.join('.' + f for f in FIGURE_FORMATS)}")
    return fmt


def show_psf(model: nn.Module, out_png: str, image: Tensor | None = None, module: int = 0,
             top: int = 8) -> str:
    """Write :func:`psf_figure` in the format ``out_png``'s suffix names (:func:`figure_format`),
    atomically (:func:`sdpsfnet.files.atomic_write`)."""
    import matplotlib.pyplot as plt

    from ..files import atomic_write

    fmt = figure_format(out_png)
    fig = psf_figure(model, image, module, top)
    try:
        with atomic_write(out_png) as f:
            fig.savefig(f, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    return out_png
