"""Figures that must stay readable: the show-psf mixing-weight maps on a robust colour scale (a
bright border row does not flatten them) and numbers on every y axis of the benchmark plots."""
from __future__ import annotations

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sdpsfnet.evaluation import psf_figures  # noqa: E402


def test_one_bright_row_does_not_flatten_the_weight_maps(monkeypatch):
    J, H, W = 4, 128, 48  # one row: 0.8% of the pixels
    ramp = torch.linspace(0.0, 0.2, W).expand(H, W)  # the signal: a left-to-right ramp
    weights = torch.stack([ramp * (j + 1) / J for j in range(J)]).clone()
    weights[:, 0, :] = 50.0  # one bright border row, 250x the signal
    maps = [{"name": "stage", "basis": torch.rand(J, 3, 3), "weights": weights}]
    monkeypatch.setattr(psf_figures, "psf_maps", lambda model, image=None: maps)
    fig = psf_figures.psf_figure(None, torch.rand(3, H, W), top=J)
    try:
        shown = [im for ax in fig.axes if ax.get_title().startswith("w") for im in ax.get_images()]
        assert len(shown) == J
        spreads = []
        for im in shown:
            data = im.get_array()[1:]  # the signal rows, without the outlier
            spreads.append(float(im.norm(data.max()) - im.norm(data.min())))
            assert im.norm.vmax < 1.0  # (the outlier, 50, would have set it)
        assert max(spreads) > 0.8 and min(spreads) > 0.2, spreads  # one shared scale, not flat
    finally:
        plt.close(fig)
    lo, hi = psf_figures.robust_range(weights)
    assert hi < 1.0 and lo >= 0.0


def _recs(ms_by_size: dict[int, float]) -> list[dict]:
    return [{"op": "gated_blend", "pass": "fwd+bwd", "status": "ok", "B": 2, "C": 16, "H": h, "W": h,
             "impl": "eager", "dtype": "float32", "ms": ms} for h, ms in ms_by_size.items()]


def test_benchmark_plot_y_axes_have_numbers():
    from bench import report

    for series in ({64: 0.11, 128: 0.35, 256: 0.9}, {64: 0.5, 128: 40.0, 256: 600.0}):  # < and > a decade
        fig = report.op_figure(_recs(series), "gated_blend")
        try:
            fig.canvas.draw()
            ax = fig.axes[0]
            labels = [t.get_text() for t in ax.get_yticklabels(which="both")
                      if ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1] and t.get_text()]
            assert len(labels) >= 2, labels
            assert all(float(t.replace("\u2212", "-")) > 0 for t in labels)
        finally:
            plt.close(fig)


def test_above_the_copy_roof_comes_with_the_reason():
    from bench import harness, report

    rec = {"op": "gated_blend", "impl": "eager", "pass": "fwd", "dtype": "float32", "status": "ok", "B": 2,
           "C": 16, "H": 64, "W": 64, "ms": 0.107, "bytes": 2097152, "flops": 0, "roofline_gbps": 17.98, "peak_mb": None,
           "device_type": "cpu"}
    rec.update(harness.roofs(rec, 17.98, None))
    assert rec["pct_roofline"] > 100 and "fits in the CPU caches" in rec["roof_note"]
    assert "fits in the CPU caches" in harness.format_record(rec)
    lines = report.roof_lines([rec])
    assert len(lines) == 1 and "2.1 MB" in lines[0]
    slow = {**rec, "ms": 1.0}
    slow.update(harness.roofs(slow, 17.98, None))
    assert slow["roof_note"] is None and report.roof_lines([slow]) == []
