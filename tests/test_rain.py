"""sdpsfnet.data.rain: streak kernels, the scatter form, renderer determinism and physics sanity, SyntheticRain,
synth_folder."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdpsfnet.data import PairedImages, load_image, save_image
from sdpsfnet.evaluation.metrics import image_metrics
from sdpsfnet.data.rain import (RainConfig, SyntheticRain, layer_inputs, rain_layer_stats, render_rain, streak_basis,
                           streak_kernels, synth_folder)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clean(b=2, h=48, w=40, seed=0) -> torch.Tensor:
    """A smooth-ish random clean image in [0.1, 0.8] (never 0 or 1, so clipping is not the test)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 6, 5, generator=g)
    return 0.1 + 0.7 * torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


# ---- streak kernels ------------------------------------------------------------------------------

def _fwhm(profile: torch.Tensor) -> float:
    """Full width at half maximum of a 1-D profile with one peak, linear interpolation, pixels."""
    p = profile.double() / profile.max()
    above = (p >= 0.5).nonzero().flatten()
    i0, i1 = int(above[0]), int(above[-1])
    left = i0 - (p[i0] - 0.5) / (p[i0] - p[i0 - 1]) if i0 > 0 else float(i0)
    right = i1 + (p[i1] - 0.5) / (p[i1] - p[i1 + 1]) if i1 + 1 < len(p) else float(i1)
    return float(right - left)


def test_vertical_streak_kernel_by_hand():
    """Gaussian cross-section averaged over the pixel (peak 1 for a wide streak), flat middle and
    half-cosine fading ends along it."""
    w, L, k = 1.2, 20.0, 31
    ker = streak_kernels(torch.tensor([0.0]), torch.tensor([L]), torch.tensor([w]), k=k, taper=0.3)[0].double()
    sigma = w / (2 * math.sqrt(2 * math.log(2)))
    across = torch.arange(k, dtype=torch.float64) - k // 2
    phi = lambda t: 0.5 * (1 + torch.erf(t / (sigma * math.sqrt(2))))  # noqa: E731
    expected = sigma * math.sqrt(2 * math.pi) * (phi(across + 0.5) - phi(across - 0.5))
    expected = torch.where(expected < 1e-4, 0.0, expected)
    torch.testing.assert_close(ker[k // 2], expected, rtol=0, atol=1e-6)      # the middle row, across
    # along the centre column: flat middle, fading ends (fade over 0.3 * L/2 = 3 px), 0 past L/2 + 1/2
    col = ker[:, k // 2] / ker[k // 2, k // 2]
    along = (torch.arange(k) - k // 2).abs().double()
    assert torch.all(col[along <= 7.5 - 1e-9] == 1)
    u = ((10.5 - along) / 3).clamp(0, 1)
    torch.testing.assert_close(col, 0.5 - 0.5 * torch.cos(math.pi * u), rtol=0, atol=1e-6)
    assert torch.all(col[along >= 10.5] == 0)
    # translucent when thin: the light across is sigma*sqrt(2 pi) = 1.064 w for any width
    for width in (0.4, 0.8, 1.6):
        kk = streak_kernels(torch.tensor([0.0]), torch.tensor([L]), torch.tensor([width]), k=k)[0]
        assert float(kk[k // 2].sum()) == pytest.approx(1.0645 * width, rel=2e-3)
        assert float(kk.max()) <= min(1.0, 1.07 * width) + 1e-6


def test_streak_kernel_symmetries():
    ang = torch.tensor([17.0, -17.0, 90.0, 0.0])
    ks = streak_kernels(ang, torch.tensor([21.0, 21.0, 13.0, 13.0]), torch.tensor([1.7, 1.7, 0.8, 0.8]), k=25)
    torch.testing.assert_close(ks[1], ks[0].flip(-1), rtol=0, atol=1e-6)   # mirror angle = mirror image
    torch.testing.assert_close(ks[2], ks[3].T, rtol=0, atol=1e-5)          # 90 degrees = transpose
    torch.testing.assert_close(ks, ks.flip(-1, -2), rtol=0, atol=1e-6)     # centrally symmetric
    # positive angle leans right at the bottom: mass below-right of centre
    r = torch.arange(25) - 12
    assert (ks[0] * r.view(-1, 1) * r.view(1, -1)).sum() > 0
    assert ks.max() <= 1 and ks.min() >= 0


def test_default_streaks_are_thin():
    """Every kernel of every depth's basis has a cross-section FWHM under 3 px (real Rain100H
    streaks: about 1.3 px); far layers are translucent (peak < 1)."""
    for depth in (0.0, 0.5, 1.0):
        basis, (_, width, _) = streak_basis(_gen(0), 10.0, depth)
        k = basis.shape[-1]
        for ker in basis:
            th = math.radians(10.0)  # the middle row cuts the streak at 1/cos(10) of its width
            assert _fwhm(ker[k // 2]) * math.cos(th) < 3.0
        if depth == 0.0:
            assert basis.max() < 1


# ---- the scatter form ----------------------------------------------------------------------------

def test_render_uses_the_scatter_op(monkeypatch):
    import psfops

    calls = []
    real = psfops.psf_conv_transpose

    def spy(*args, **kwargs):
        calls.append(args[2].shape)
        return real(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the renderer must scatter (psf_conv_transpose), not gather")

    monkeypatch.setattr(psfops, "psf_conv_transpose", spy)
    monkeypatch.setattr(psfops, "psf_conv", forbidden)
    cfg = RainConfig(layers=(2, 2))
    render_rain(_clean(b=1, h=24, w=20), _gen(1), config=cfg)
    assert len(calls) == 2 and all(len(s) == 3 for s in calls)  # one scatter per layer


def test_a_single_drop_spreads_into_the_psf_of_its_own_position():
    """Scatter form: a lone drop at p lays down sum_j weights[j, p] * basis[j], centred on p (the
    gather psf_conv would mix the kernels of the pixels it lands on)."""
    import psfops

    _, weights, basis, pad = layer_inputs(_gen(2), 20, 20, 8.0, 0.7)
    H, W = weights.shape[-2:]
    k = basis.shape[-1]
    p = (H // 2, W // 2 + 1)
    drops = torch.zeros(1, 1, H, W)
    drops[0, 0, p[0], p[1]] = 0.8
    out = psfops.psf_conv_transpose(drops, weights, basis)[0, 0]
    psf = (weights[0, :, p[0], p[1]].view(-1, 1, 1) * basis).sum(0)
    expected = torch.zeros(H, W)
    expected[p[0] - k // 2:p[0] + k // 2 + 1, p[1] - k // 2:p[1] + k // 2 + 1] = 0.8 * psf
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    gather = psfops.psf_conv(drops, weights, basis)[0, 0]
    assert not torch.allclose(gather, expected, atol=1e-3)  # the per-pixel weights vary: forms differ


def test_scatter_is_the_adjoint_for_the_renderers_own_weights():
    import psfops

    _, weights, basis, _ = layer_inputs(_gen(3), 6, 5, -12.0, 0.2, RainConfig(length=(4.0, 6.0)))
    weights, basis = weights.double(), basis.double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, *weights.shape[-2:], generator=g, dtype=torch.float64)
    y = torch.randn(1, 1, *weights.shape[-2:], generator=g, dtype=torch.float64)
    lhs = (psfops.psf_conv(x, weights, basis) * y).sum()
    rhs = (x * psfops.psf_conv_transpose(y, weights, basis)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


# ---- render_rain ---------------------------------------------------------------------------------

def test_render_is_deterministic_given_the_generator():
    clean = _clean()
    a, b = render_rain(clean, _gen(5)), render_rain(clean, _gen(5))
    c = render_rain(clean, _gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == clean.shape and a.dtype == clean.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[0], a[1])  # each image of a batch gets its own rain


def test_without_haze_rain_only_brightens_and_only_on_streaks():
    """Additive light: rainy = min(clean + S, 1), S in [0, 1): changed only on streaks, by the same
    amount on any background until white clips it."""
    clean = _clean(b=3, h=64, w=64, seed=1)
    light = RainConfig(density=(0.003, 0.001), length=(12.0, 40.0))  # default: heavy rain, streaks everywhere
    rainy, streaks = render_rain(clean, _gen(11), config=light, haze=False, return_streaks=True)
    assert streaks.shape == (3, 1, 64, 64) and streaks.min() >= 0 and streaks.max() < 1
    on = (streaks > 0).expand_as(clean)
    assert 0.05 < on.float().mean() < 0.95                       # sparse-ish, but present
    assert torch.equal(rainy[~on], clean[~on])                   # untouched off the streaks
    visible = (streaks > 1e-3).expand_as(clean)
    assert (rainy[visible] > clean[visible]).all()               # brighter on them
    torch.testing.assert_close(rainy, (clean + streaks).clamp(max=1), rtol=0, atol=1e-6)


def test_streaks_are_thin_translucent_and_clip_at_white():
    """Rendered streaks: a cross-section FWHM under 3 px (rain-layer autocorrelation); on a dark
    image most streak pixels add less than half the range (translucent, not flat white bars); on a
    bright one the light is cut at white, and a white image stays white."""
    dark = torch.full((1, 3, 96, 96), 0.1)
    rainy, streaks = render_rain(dark, _gen(4), haze=False, return_streaks=True)
    stats = rain_layer_stats(rainy[0], dark[0])
    assert 0.5 < stats["width"] < 3.0, stats
    s = streaks[streaks > 0.05]
    assert (s < 0.5).float().mean() > 0.5
    bright = torch.full((1, 3, 96, 96), 0.85)
    rainy, streaks = render_rain(bright, _gen(4), haze=False, return_streaks=True)
    assert int((rainy == 1).sum()) > 0 and rainy.max() == 1
    torch.testing.assert_close(rainy - bright, streaks.clamp(max=0.15).expand_as(rainy), rtol=0, atol=1e-6)
    white = render_rain(torch.ones(1, 3, 32, 32), _gen(4), haze=False)
    assert torch.equal(white, torch.ones(1, 3, 32, 32))


def test_haze_is_the_atmospheric_veil():
    """With haze, off-streak pixels follow I = t*J + (1-t)*A: a contrast reduction toward a grey
    airlight, so dark pixels get brighter and the image's spread shrinks."""
    clean = _clean(b=1, h=64, w=64, seed=2)
    light = RainConfig(density=(0.004, 0.001), length=(12.0, 40.0),  # default: heavy rain, streaks everywhere
                       transmission=(0.7, 0.8))  # t < 1 everywhere (the default reaches 1: no haze there)
    hazy, streaks = render_rain(clean, _gen(3), config=light, haze=True, return_streaks=True)
    off = (streaks == 0).expand_as(clean)
    assert off.float().mean() > 0.05
    assert not torch.equal(hazy[off], clean[off])
    assert hazy[off].std() < clean[off].std()
    dark = off & (clean < 0.3)
    assert (hazy[dark] > clean[dark]).all()


def test_streaks_follow_the_wind_angle():
    """Streak maps are correlated along the wind direction, barely across it."""
    angle = 25.0
    cfg = RainConfig(angle=(angle, angle), angle_jitter=0.0, drift=(0.0, 0.0), layers=(1, 1))
    _, s = render_rain(_clean(b=1, h=96, w=96), _gen(0), config=cfg, haze=False, return_streaks=True)
    s = s[0, 0] - s[0, 0].mean()

    def corr(dy, dx):
        a = s[max(dy, 0):96 + min(dy, 0), max(dx, 0):96 + min(dx, 0)]
        b = s[max(-dy, 0):96 + min(-dy, 0), max(-dx, 0):96 + min(-dx, 0)]
        return float((a * b).mean() / (a.std() * b.std()))

    th = math.radians(angle)
    along = corr(round(4 * math.cos(th)), round(4 * math.sin(th)))
    across = corr(round(-4 * math.sin(th)), round(4 * math.cos(th)))
    assert along > 0.5 and across < 0.2, (along, across)


def test_mid_dark_tells_additive_light_from_a_screen_blend():
    """rain_layer_stats' mid_dark: 1 when streaks add the same light on dark and mid-grey
    backgrounds, (1 - 0.5) / (1 - 0.1) = 0.56 for a screen blend on the same two backgrounds."""
    clean = torch.full((1, 3, 64, 64), 0.1)
    clean[..., 32:] = 0.5
    _, s = render_rain(clean, _gen(7), haze=False, return_streaks=True)
    add = rain_layer_stats((clean + s)[0], clean[0])
    screen = rain_layer_stats((clean + s * (1 - clean))[0], clean[0])
    s_dark, s_mid = float(s[..., :32].mean()), float(s[..., 32:].mean())
    assert add["mid_dark"] == pytest.approx(s_mid / s_dark, rel=2e-2)
    assert screen["mid_dark"] == pytest.approx(s_mid / s_dark * 0.5 / 0.9, rel=2e-2)
    assert math.isnan(rain_layer_stats((clean + s)[0, :, :32, :32], clean[0, :, :32, :32])["mid_dark"])


def test_default_rain_layer_is_rain100h_like():
    """The defaults' rain layer on a real photo, averaged over 4 renders, lands near the means of
    Rain100H's 30 dev pairs (rainy PSNR-Y 13.8 dB, width 1.28 px, spread 8.8 degrees, mid_dark
    0.98 with single pairs 0.55..1.53, median 0.16, 99% quantile 0.48, 5% quantile 0.006, nothing
    darkened); a screen blend or the former grey haze fails mid_dark, q05 or neg."""
    clean = SyntheticRain("val")[0][1][:, :320, :480]  # coffee, cut to Rain100H's 480x320
    rows = [rain_layer_stats(torch.round(render_rain(clean[None], _gen(i))[0] * 255) / 255, clean) for i in range(4)]
    m = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    assert 12 < m["psnr_y"] < 16 and 1.0 < m["width"] < 1.6 and 4 < m["spread"] < 14, m
    assert 0.8 < m["mid_dark"] < 1.15 and 0.1 < m["q50"] < 0.22 and 0.35 < m["q99"] < 0.6, m
    assert m["q05"] < 0.02 and m["neg"] < 0.002, m


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="clean"):
        render_rain(torch.rand(3, 16, 16), _gen(0))
    with pytest.raises(TypeError, match="generator"):
        render_rain(torch.rand(1, 3, 16, 16), 0)
    with pytest.raises(TypeError, match="clean"):
        render_rain(torch.randint(0, 255, (1, 3, 16, 16)), _gen(0))


# ---- SyntheticRain -------------------------------------------------------------------------------

def test_val_split_is_fixed_and_heavy_rain():
    a, b = SyntheticRain("val"), SyntheticRain("val")
    assert len(a) == 2
    psnrs = []
    for i in range(len(a)):
        ra, ca, na = a[i]
        rb, cb, nb = b[i]
        assert na == nb and torch.equal(ra, rb) and torch.equal(ca, cb)
        assert ra.shape[1] % 8 == 0 and ra.shape[2] % 8 == 0 and ra.shape[1] >= 296
        psnrs.append(image_metrics(ra, ca)["psnr_y"])
    assert {n.split("_")[0] for n in (a[0][2], a[1][2])} == {"coffee", "chelsea"}
    # heavy rain, like Rain100H (whose rainy inputs score 8..22 dB, mean 13.8)
    assert all(8 < p < 22 for p in psnrs), psnrs


def test_train_items_are_fresh_crops_and_follow_torch_seed():
    ds = SyntheticRain("train", crop=64, size=8)
    assert len(ds) == 8
    torch.manual_seed(0)
    items = [ds[i] for i in range(8)]
    torch.manual_seed(0)
    again = ds[0]
    assert torch.equal(items[0][0], again[0]) and torch.equal(items[0][1], again[1])
    for rainy, clean, name in items:
        assert rainy.shape == clean.shape == (3, 64, 64)
        assert 0 <= rainy.min() and rainy.max() <= 1 and not torch.equal(rainy, clean)
    assert {n.split("_")[0] for _, _, n in items} == {"astronaut", "rocket", "motorcycle", "camera"}
    # the same item index gives a new crop and new rain on the next draw
    assert not torch.equal(ds[0][0], items[0][0])
    mean_psnr = np.mean([image_metrics(r, c)["psnr_y"] for r, c, _ in items])
    assert 10 < mean_psnr < 19, mean_psnr
    with pytest.raises(ValueError, match="split"):
        SyntheticRain("test")
    with pytest.raises(IndexError):
        ds[8]


# ---- synth_folder --------------------------------------------------------------------------------

def test_synth_folder_writes_a_paired_folder(tmp_path):
    for i in range(2):
        save_image(_clean(b=1, h=40, w=36, seed=i)[0], tmp_path / "clean" / f"{i}.png")
    written = synth_folder(tmp_path / "clean", tmp_path / "out", seed=4, progress=False)
    assert [(p.relative_to(tmp_path).as_posix(), q.relative_to(tmp_path).as_posix()) for p, q in written] == [
        ("out/input/0.png", "out/target/0.png"), ("out/input/1.png", "out/target/1.png")]
    ds = PairedImages(tmp_path / "out", train=False)
    for i in range(2):
        rainy, clean, name = ds[i]
        assert torch.equal(clean, load_image(tmp_path / "clean" / f"{i}.png"))
        expected = render_rain(clean[None], _gen(4 + i))[0]
        assert torch.equal(rainy, torch.round(expected * 255) / 255)  # reproducible from the seed
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.* contains no images"):
        synth_folder(tmp_path / "empty", tmp_path / "x", progress=False)


def test_synth_folder_never_overwrites_the_clean_originals(tmp_path):
    """``--clean D/input --out D`` would write D/input/<stem>.png over the clean files."""
    for i in range(2):
        save_image(_clean(b=1, h=24, w=20, seed=i)[0], tmp_path / "D" / "input" / f"{i}.png")
    before = {p.name: p.read_bytes() for p in (tmp_path / "D" / "input").iterdir()}
    for clean_dir, out in (("D/input", "D"), ("D/input", "D/../D"), ("D/../D/input", "D")):
        with pytest.raises(ValueError, match=r"refusing to write .*0\.png: it is the input"):
            synth_folder(tmp_path / clean_dir, tmp_path / out, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "D" / "input").iterdir()} == before
    assert not (tmp_path / "D" / "target").exists()  # refused before anything was written


def test_synth_folder_keeps_16_bits(tmp_path):
    """A 16-bit clean photo gives a 16-bit pair, the target identical to it."""
    levels = torch.randint(0, 65536, (3, 20, 24)).double() / 65535
    save_image(levels, tmp_path / "clean" / "a.png", bits=16)
    (rainy_path, clean_path), = synth_folder(tmp_path / "clean", tmp_path / "out", progress=False)
    assert torch.equal(load_image(clean_path), levels.float())
    rainy = load_image(rainy_path)
    assert not torch.equal(torch.round(rainy * 255) / 255, rainy)  # finer than 8-bit levels


def test_triton_path_renders_the_same_rain(device):
    """The CUDA path filters with the fused psfops.psf_conv (on a GPU machine: compiled; without
    one: the Triton interpreter, on a tiny image with short streaks) and must match the CPU
    conv-stack path."""
    import psfops

    cfg = RainConfig(length=(3.0, 5.0), width=(1.0, 1.5), density=(0.05, 0.03))
    clean = _clean(b=1, h=12, w=10, seed=3)
    cpu = render_rain(clean, _gen(9), config=cfg, return_streaks=True)
    with psfops.backend("triton"):
        tri = render_rain(clean.to(device), _gen(9), config=cfg, return_streaks=True)
    assert cpu[1].abs().sum() > 0
    for a, b in zip(cpu, tri):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)
