"""The run's figures: ``curves.png`` (training loss and validation PSNR-Y against step) and
``before_after.png`` (rows of rainy | restored | clean validation images, labelled)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # at import, not in the middle of a run's first checkpoint
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..data import save_image
from ..files import atomic_write
from .config import TrainConfig
from .logs import read_csv

COLUMN_LABELS = ("rainy", "restored", "clean")
SAMPLE_ROWS = 3  # validation images shown in before_after.png, one per row
MIN_ROW_PX = 128  # each row is enlarged to at least this height


def run_title(cfg: TrainConfig) -> str:
    """What ``curves.png`` is of: the model, its recipe and the training data."""
    return f"{cfg.model} ({cfg.recipe} recipe) on {cfg.data or 'built-in synthetic rain'}"


def write_curves(csv_path: str, png_path: str, title: str) -> None:
    """``curves.png`` of :func:`curves_figure` (nothing while ``metrics.csv`` has no rows)."""
    fig = curves_figure(csv_path, title)
    if fig is not None:
        with atomic_write(png_path) as f:
            fig.savefig(f, format="png", dpi=110)


def curves_figure(csv_path: str, title: str):
    """Training loss (log scale) and validation PSNR-Y (restored and rainy input) against step
    from ``metrics.csv``, under ``title`` (:func:`run_title`); None without rows. A
    ``matplotlib.figure.Figure`` with fixed margins (no pyplot, no ``tight_layout``: a run plots it
    at every checkpoint, and its layout pass alone doubled the time)."""
    rows = read_csv(csv_path)
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows if r["loss"]]
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_psnr_y"]), float(r["input_psnr_y"]))
           for r in rows if r.get("val_psnr_y")]
    fig = Figure(figsize=(10, 3.8))
    a, b = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.82, wspace=0.28)
    a.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    w = len(loss) // 50
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        a.plot(steps[w - 1:], smooth, lw=1.5, label=f"mean of {w}")
    a.set_yscale("log"), a.set_xlabel("optimizer step"), a.set_ylabel("loss (log scale)"), a.legend()
    if val:
        s, p, p0 = zip(*val)
        b.plot(s, p, "o-", label="restored")
        b.plot(s, p0, "x--", color="gray", label="rainy input")
        b.legend()
    b.set_xlabel("optimizer step"), b.set_ylabel("validation PSNR-Y (dB)")
    a.set_title("training loss", fontsize=10), b.set_title("validation", fontsize=10)
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=11)
    return fig


def label_strip(labels: tuple[str, ...], width: int, at_least: int = 1) -> tuple[Tensor, int]:
    """(strip, k): white ``labels`` on black, each centred over its column, for columns of
    ``width * k`` px; k is the smallest integer enlargement of ``width``, at least ``at_least``,
    that fits the widest label with 2 px to spare on each side. The strip is a
    (3, h, width * k * len(labels)) image."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [measure.textbbox((0, 0), text, font=font) for text in labels]
    k = max(at_least, -(-(max(b[2] - b[0] for b in boxes) + 4) // width))
    height = max(b[3] for b in boxes) + 4
    strip = Image.new("L", (width * k * len(labels), height), 0)
    draw = ImageDraw.Draw(strip)
    for i, (text, box) in enumerate(zip(labels, boxes)):
        draw.text(((i + 0.5) * width * k - (box[2] - box[0]) / 2, 2), text, fill=255, font=font)
    return torch.from_numpy(np.asarray(strip).copy()).float().div(255).expand(3, -1, -1), k


def write_before_after(samples: list[tuple[Tensor, ...]], path: str) -> None:
    """Rows of (rainy, restored, clean) images under the column labels rainy | restored | clean.

    Every image is padded (black) to the widest so the columns line up, and the grid is enlarged
    (nearest neighbour, integer factor) until every row is at least :data:`MIN_ROW_PX` tall and a
    column is wider than its label.
    """
    width = max(im.shape[2] for s in samples for im in s)
    grid = torch.cat([torch.cat([F.pad(im, (0, width - im.shape[2])) for im in s], dim=2)
                      for s in samples], dim=1)
    lowest = min(s[0].shape[1] for s in samples)
    strip, k = label_strip(COLUMN_LABELS, width, at_least=-(-MIN_ROW_PX // lowest))
    if k > 1:
        grid = F.interpolate(grid[None], scale_factor=k, mode="nearest")[0]
    save_image(torch.cat([strip, grid], dim=1), path)
