"""sdpsfnet.data: image I/O, pairing rules and their errors, and PairedImages' aligned augmentation."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdpsfnet.data import (PairedImages, PixelFormat, check_pairs, find_pairs, image_size, load_image, pad_to,
                           read_image, save_as, save_image)
from realdata import VENDORED


def _levels(*shape) -> torch.Tensor:
    """Random exact 8-bit levels in [0, 1] (round-trip through PNG without loss)."""
    return torch.randint(0, 256, shape).float() / 255


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ---- load / save ---------------------------------------------------------------------------------

def test_save_load_roundtrip_is_exact(tmp_path):
    img = _levels(3, 17, 23)
    save_image(img, tmp_path / "sub" / "a.png")
    back = load_image(tmp_path / "sub" / "a.png")
    assert back.dtype == torch.float32 and back.shape == (3, 17, 23)
    assert torch.equal(back, img)
    assert os.listdir(tmp_path / "sub") == ["a.png"]  # no temp file left behind
    # compared with Pillow's own reading of the file
    ref = np.asarray(Image.open(tmp_path / "sub" / "a.png"))
    assert np.array_equal(ref, np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_save_quantizes_clamps_and_overwrites(tmp_path):
    img = torch.rand(3, 8, 9) * 1.4 - 0.2
    save_image(img, tmp_path / "q.png")
    save_image(img, tmp_path / "q.png")
    expected = torch.round(img.clamp(0, 1) * 255) / 255
    assert torch.equal(load_image(tmp_path / "q.png"), expected)
    save_image(img[0], tmp_path / "g.png")  # (H, W) grey
    assert torch.equal(load_image(tmp_path / "g.png"), expected[0].expand(3, -1, -1))
    with pytest.raises(ValueError, match="img"):
        save_image(torch.rand(2, 8, 8), tmp_path / "bad.png")


def test_load_converts_grey_and_rgba_to_rgb(tmp_path):
    grey = np.random.randint(0, 256, (6, 7), dtype=np.uint8)
    rgba = np.random.randint(0, 256, (6, 7, 4), dtype=np.uint8)
    _write_png(tmp_path / "l.png", grey)
    _write_png(tmp_path / "rgba.png", rgba)
    assert torch.equal(load_image(tmp_path / "l.png"), torch.from_numpy(grey).float().div(255).expand(3, -1, -1))
    rgb = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255  # alpha dropped
    assert torch.equal(load_image(tmp_path / "rgba.png"), rgb)


def test_unreadable_or_missing_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")


# ---- every kind of file at its true scale -------------------------------------------------------

def _u16(*shape) -> np.ndarray:
    """Random 16-bit levels spanning the whole range (most of them above 255)."""
    return np.random.randint(0, 65536, shape).astype(np.uint16)


def _chw(arr: np.ndarray, top: float) -> torch.Tensor:
    """(H, W) or (H, W, 3) levels -> the expected (3, H, W) float32 image, levels / top."""
    t = torch.from_numpy(arr.astype(np.float64) / top).float()
    return t.expand(3, -1, -1) if t.dim() == 2 else t.permute(2, 0, 1)


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    import png

    h, w, c = arr.shape
    with open(path, "wb") as f:
        png.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=16).write(f, arr.reshape(h, w * c))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    ramp = _u16(9, 13)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    img, fmt = read_image(tmp_path / "g16.png")
    assert fmt == PixelFormat(16, True)
    assert torch.equal(img, _chw(ramp, 65535))  # convert("RGB") made ~all of it white
    assert (img < 0.99).float().mean() > 0.5


def test_16bit_colour_png_and_tiff_keep_all_16_bits(tmp_path):
    import tifffile

    rgb = _u16(7, 11, 3)
    _png16_rgb(tmp_path / "c.png", rgb)
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), planarconfig="separate", photometric="rgb")
    _png16_rgb(tmp_path / "rgba.png", np.concatenate([rgb, _u16(7, 11, 1)], -1))
    for name in ("c.png", "c.tif", "planar.tif", "rgba.png"):  # Pillow alone keeps the top 8 bits
        img, fmt = read_image(tmp_path / name)
        assert fmt == PixelFormat(16, False), name
        assert torch.equal(img, _chw(rgb, 65535)), name
    la = _u16(5, 6, 2)
    _png16_rgb(tmp_path / "la.png", la)
    img, fmt = read_image(tmp_path / "la.png")  # gray + alpha: gray, alpha dropped
    assert fmt == PixelFormat(16, True) and torch.equal(img, _chw(la[..., 0], 65535))


def test_32bit_integer_and_float_modes(tmp_path):
    ints = np.random.randint(0, 65536, (6, 8)).astype(np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    img, fmt = read_image(tmp_path / "i.tif")
    assert fmt == PixelFormat(16, True) and torch.equal(img, _chw(ints, 65535))
    floats = np.random.rand(6, 8).astype(np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    img, fmt = read_image(tmp_path / "f.tif")
    assert fmt == PixelFormat(16, True) and torch.equal(img, torch.from_numpy(floats).expand(3, -1, -1))
    Image.fromarray(ints + 70000, mode="I").save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif.*0, 65535"):
        load_image(tmp_path / "big.tif")
    Image.fromarray(floats * 3 - 1, mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"hdr\.tif.*\[0, 1\]"):  # never clipped silently
        load_image(tmp_path / "hdr.tif")


def test_8bit_modes_palette_la_cmyk_and_bilevel(tmp_path):
    rgb = np.random.randint(0, 256, (6, 7, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    palette = np.asarray(pal.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert read_image(tmp_path / "p.png")[1] == PixelFormat(8, False)
    assert torch.equal(load_image(tmp_path / "p.png"), _chw(palette[np.asarray(pal)], 255))
    la = np.random.randint(0, 256, (6, 7, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[1] == PixelFormat(8, True)
    assert torch.equal(load_image(tmp_path / "la.png"), _chw(la[..., 0], 255))
    cmyk = np.random.randint(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = (255 - c) * (255 - k) / 255 / 255  # ink to light
    assert (load_image(tmp_path / "cmyk.tif") - _chw(expected, 1)).abs().max() <= 0.5 / 255 + 1e-6
    bits = np.random.rand(6, 7) > 0.5
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert torch.equal(load_image(tmp_path / "b.png"), _chw(bits.astype(np.uint8), 1))


def _rot90_cw(a: np.ndarray) -> np.ndarray:
    """EXIF orientation 6 displays the stored image turned 90 degrees clockwise."""
    return np.rot90(a, k=-1)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:8, :8] = (250, 20, 20)  # a red block top-left
    stored[8:, :] = np.random.randint(40, 200, (8, 32, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "r.jpg")
    decoded = np.asarray(Image.open(tmp_path / "r.jpg").convert("RGB"))  # as stored, not turned
    assert img.shape == (3, 32, 16) and image_size(tmp_path / "r.jpg") == (16, 32)
    assert torch.equal(img, _chw(_rot90_cw(decoded).copy(), 255))
    assert img[0, :8, -8:].mean() > 0.8  # the red block is now top-right
    import tifffile  # a 16-bit colour file, read around Pillow, is turned too

    rgb = _u16(4, 6, 3)
    tifffile.imwrite(tmp_path / "r16.tif", rgb, extratags=[(274, "H", 1, 6, True)])  # Orientation
    assert torch.equal(load_image(tmp_path / "r16.tif"), _chw(_rot90_cw(rgb).copy(), 65535))


def test_save_16bit_and_save_as_an_inputs_format(tmp_path):
    rgb = torch.from_numpy(_u16(3, 5, 6).astype(np.float64) / 65535).float()
    save_image(rgb, tmp_path / "rgb16.png", bits=16)
    assert torch.equal(load_image(tmp_path / "rgb16.png"), rgb)
    save_as(rgb, tmp_path / "gray16.png", PixelFormat(16, True))
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode == "I;16"
        assert np.array_equal(np.asarray(im), np.round(rgb.double().mean(0).numpy() * 65535).astype(np.uint16))
    save_as(rgb, tmp_path / "rgb8.png", PixelFormat(8, False))
    assert Image.open(tmp_path / "rgb8.png").mode == "RGB"
    with pytest.raises(ValueError, match="bits"):
        save_image(rgb, tmp_path / "x.png", bits=12)


def test_check_pairs_names_files_before_reading_pixels(tmp_path):
    save_image(torch.rand(3, 12, 14), tmp_path / "a.png")
    save_image(torch.rand(3, 12, 15), tmp_path / "b.png")
    save_image(torch.rand(3, 12, 8), tmp_path / "c.png")
    save_image(torch.rand(3, 12, 8), tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"a\.png is 14x12 but its partner .*b\.png is 15x12"):
        check_pairs([(tmp_path / "a.png", tmp_path / "b.png")])
    with pytest.raises(ValueError, match=r"c\.png and .*d\.png are 8x12: SSIM needs at least 11x11"):
        check_pairs([(tmp_path / "c.png", tmp_path / "d.png")], 11, "SSIM needs")
    check_pairs([(tmp_path / "c.png", tmp_path / "d.png")])


# ---- find_pairs ----------------------------------------------------------------------------------

def _make_folder(root: Path, rainy: str, clean: str, rainy_names, clean_names, size=(12, 10)):
    for n in rainy_names:
        save_image(_levels(3, *size), root / rainy / n)
    for n in clean_names:
        save_image(_levels(3, *size), root / clean / n)


def test_find_pairs_input_target_natural_order(tmp_path):
    names = ["10.png", "2.png", "1.png"]
    _make_folder(tmp_path, "input", "target", names, names)
    (tmp_path / "input" / "notes.txt").write_text("ignored")
    pairs = find_pairs(tmp_path)
    assert [p.name for p, _ in pairs] == ["1.png", "2.png", "10.png"]
    assert all(q.parent.name == "target" for _, q in pairs)
    assert all(p.stem == q.stem for p, q in pairs)


def test_find_pairs_rain_norain_release_names(tmp_path):
    _make_folder(tmp_path, "rain", "norain", ["rain-001.png", "rain-002.png"], ["norain-001.png", "norain-002.png"])
    pairs = find_pairs(tmp_path)
    assert [(p.name, q.name) for p, q in pairs] == [
        ("rain-001.png", "norain-001.png"), ("rain-002.png", "norain-002.png")]


def test_find_pairs_matches_stems_across_extensions(tmp_path):
    save_image(_levels(3, 8, 8), tmp_path / "input" / "x.png")
    (tmp_path / "target").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "target" / "x.jpg")
    assert [(p.name, q.name) for p, q in find_pairs(tmp_path)] == [("x.png", "x.jpg")]


def test_find_pairs_errors_name_the_file_or_folder(tmp_path):
    _make_folder(tmp_path / "a", "input", "target", ["1.png", "2.png"], ["1.png"])
    with pytest.raises(ValueError, match=r"input/2\.png has no clean partner"):
        find_pairs(tmp_path / "a")
    _make_folder(tmp_path / "b", "input", "target", ["1.png"], ["1.png", "3.png"])
    with pytest.raises(ValueError, match=r"target/3\.png has no rainy partner"):
        find_pairs(tmp_path / "b")
    (tmp_path / "c" / "input").mkdir(parents=True)
    _make_folder(tmp_path / "c", "input", "target", [], ["1.png"])
    with pytest.raises(ValueError, match=r"rainy folder '.*c/input' contains no images"):
        find_pairs(tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="input/ \\+ target/ or rain/ \\+ norain/"):
        find_pairs(tmp_path / "d")
    (tmp_path / "d" / "rain").mkdir()
    with pytest.raises(ValueError, match=r"it has rain/ but no norain/"):
        find_pairs(tmp_path / "d")
    with pytest.raises(ValueError, match="not a directory"):
        find_pairs(tmp_path / "missing")


def test_find_pairs_on_real_rain100h_pairs():
    pairs = find_pairs(VENDORED)
    assert [(a.name, b.parent.name) for a, b in pairs] == [("1.png", "target"), ("7.png", "target"),
                                                           ("19.png", "target")]


# ---- PairedImages --------------------------------------------------------------------------------

def _coded_pair(root: Path, name: str, h: int, w: int) -> None:
    """Clean image whose R/G channels code the pixel's column/row; rainy = 255 - clean (exact)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    clean = np.stack([cols * 4, rows * 4, np.random.randint(0, 256, (h, w))], -1).astype(np.uint8)
    _write_png(root / "target" / name, clean)
    _write_png(root / "input" / name, 255 - clean)


def test_train_crops_keep_pairs_aligned_and_are_windows(tmp_path):
    _coded_pair(tmp_path, "0.png", 40, 50)
    ds = PairedImages(tmp_path, crop=16, train=True)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        rainy, clean, name = ds[0]
        assert name == "0" and rainy.shape == clean.shape == (3, 16, 16)
        assert torch.allclose(rainy, 1 - clean, atol=1e-6)  # same transform on both images
        col, row = (torch.round(clean[c] * 255 / 4).long() for c in (0, 1))
        # a window of the original, up to one of the 8 square symmetries: neighbours are 1 apart
        step_x = (col[:, 1:] - col[:, :-1]).abs() + (row[:, 1:] - row[:, :-1]).abs()
        step_y = (col[1:] - col[:-1]).abs() + (row[1:] - row[:-1]).abs()
        assert (step_x == 1).all() and (step_y == 1).all()
        assert col.max() - col.min() == 15 and row.max() - row.min() == 15
        seen.add(tuple(int(d) for d in (col[0, 1] - col[0, 0], row[0, 1] - row[0, 0],
                                        col[1, 0] - col[0, 0], row[1, 0] - row[0, 0])))
    assert len(seen) == 8  # all 8 orientations (flips x rot90) occur over these fixed seeds


def test_train_items_follow_torch_seed(tmp_path):
    _coded_pair(tmp_path, "0.png", 40, 50)
    ds = PairedImages(tmp_path, crop=16)
    torch.manual_seed(3)
    a = ds[0]
    torch.manual_seed(3)
    b = ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_small_images_are_reflect_padded(tmp_path):
    _coded_pair(tmp_path, "s.png", 10, 12)
    rainy, clean, _ = PairedImages(tmp_path, crop=16)[0]
    assert rainy.shape == clean.shape == (3, 16, 16)
    assert torch.allclose(rainy, 1 - clean, atol=1e-6)
    x = torch.rand(2, 5, 7)
    expected = np.pad(x.numpy(), ((0, 0), (0, 13), (0, 2)), mode="reflect")  # pad > size: repeated
    assert np.array_equal(pad_to(x, 18, 9).numpy(), expected)


def test_eval_mode_returns_full_images(tmp_path):
    _coded_pair(tmp_path, "e.png", 21, 34)
    rainy, clean, name = PairedImages(tmp_path, train=False)[0]
    assert clean.shape == (3, 21, 34) and name == "e"
    assert torch.equal(clean, load_image(tmp_path / "target" / "e.png"))
    assert torch.equal(rainy, load_image(tmp_path / "input" / "e.png"))


def test_size_mismatch_names_the_file(tmp_path):
    save_image(_levels(3, 20, 20), tmp_path / "input" / "m.png")
    save_image(_levels(3, 20, 24), tmp_path / "target" / "m.png")
    ds = PairedImages(tmp_path, crop=8)
    with pytest.raises(ValueError, match=r"input/m\.png is 20x20 but its partner .*target/m\.png is 24x20"):
        ds[0]


def test_batches_through_a_dataloader(tmp_path):
    for i in range(3):
        _coded_pair(tmp_path, f"{i}.png", 30, 30)
    loader = torch.utils.data.DataLoader(PairedImages(tmp_path, crop=8), batch_size=3)
    rainy, clean, names = next(iter(loader))
    assert rainy.shape == (3, 3, 8, 8) and sorted(names) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="crop"):
        PairedImages(tmp_path, crop=0)


# ---- refused from the header, folders listed by one rule, TIFFs Pillow cannot read, ICC ----------

def _frames(path: Path, n: int = 2) -> Path:
    frames = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(n)]
    if path.suffix in (".tif", ".tiff"):
        import tifffile
        tifffile.imwrite(path, np.stack([np.asarray(f) for f in frames]), photometric="rgb")
    else:
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "pages.tif", "anim.webp"])
def test_animations_and_multi_page_files_are_refused(tmp_path, name):
    path = _frames(tmp_path / name)
    for read in (read_image, image_size):
        with pytest.raises(ValueError, match=rf"{name} holds 2 frames .* extract the frames"):
            read(path)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path, monkeypatch):
    bomb = _png_header_only(tmp_path / "bomb.png", 13000, 13000)  # 169 megapixels declared
    for read in (read_image, image_size):
        with pytest.raises(ValueError, match=r"bomb\.png is 13000x13000 .* limit of 64 megapixels.*SDPSFNET_MAX_PIXELS"):
            read(bomb)
    save_image(torch.rand(3, 16, 16), tmp_path / "a.png")
    monkeypatch.setenv("SDPSFNET_MAX_PIXELS", "255")
    with pytest.raises(ValueError, match="over the limit"):
        read_image(tmp_path / "a.png")
    monkeypatch.setenv("SDPSFNET_MAX_PIXELS", "256")
    assert read_image(tmp_path / "a.png")[0].shape == (3, 16, 16)


def test_every_command_lists_folders_by_one_rule(tmp_path):
    from sdpsfnet.data import image_files, images_by_key
    from sdpsfnet.evaluation.inference import list_images

    save_image(torch.rand(3, 4, 4), tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\0\5\x16\7 AppleDouble")  # macOS metadata, not an image
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert image_files(tmp_path) == [tmp_path / "a.png"]
    assert list_images([str(tmp_path)]) == [str(tmp_path / "a.png")]
    assert list(images_by_key(tmp_path).values()) == [tmp_path / "a.png"]


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo"])
def test_entries_that_are_not_regular_files_are_refused_before_any_work(tmp_path, kind):
    from sdpsfnet.data import images_by_key
    from sdpsfnet.evaluation.inference import derain_outputs

    save_image(torch.rand(3, 4, 4), tmp_path / "in" / "a.png")
    bad = tmp_path / "in" / "b.png"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "missing.png")
    elif kind == "loop":
        bad.symlink_to(bad)
    else:
        os.mkfifo(bad)
    for listing in (lambda: derain_outputs([str(tmp_path / "in")], str(tmp_path / "out")),
                    lambda: images_by_key(tmp_path / "in"),
                    lambda: derain_outputs([str(bad)], str(tmp_path / "out")),
                    lambda: read_image(bad)):
        with pytest.raises(ValueError, match=r"b\.png is not a regular file"):
            listing()
    assert not (tmp_path / "out").exists()


def test_a_float_tiff_holding_nan_says_so(tmp_path):
    import tifffile

    arr = np.full((4, 4), 0.5, np.float32)
    arr[1, 2] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", arr)
    with pytest.raises(ValueError, match=r"n\.tif.*holds NaN"):
        read_image(tmp_path / "n.tif")


@pytest.mark.parametrize("dtype,samples,bits", [("float32", 3, 16), ("uint16", 2, 16), ("float64", 1, 16),
                                                ("float16", 1, 16)])
def test_tiffs_pillow_cannot_open_are_read_with_tifffile(tmp_path, dtype, samples, bits):
    import tifffile

    rng = np.random.default_rng(0)
    shape = (5, 7, samples) if samples > 1 else (5, 7)
    arr = (rng.integers(0, 65536, shape).astype(np.uint16) if dtype == "uint16"
           else rng.random(shape).astype(dtype))
    extra = {"extrasamples": [2]} if samples == 2 else {}
    tifffile.imwrite(tmp_path / "t.tif", arr, photometric="minisblack" if samples < 3 else "rgb", **extra)
    img, fmt = read_image(tmp_path / "t.tif")
    scale = 65535.0 if dtype == "uint16" else 1.0
    first = arr[..., 0] if samples == 2 else arr
    expected = torch.from_numpy((first / scale).astype(np.float32))
    expected = expected.permute(2, 0, 1) if samples == 3 else expected.expand(3, -1, -1)
    torch.testing.assert_close(img, expected)
    assert fmt == PixelFormat(bits, samples < 3) and image_size(tmp_path / "t.tif") == (7, 5)


@pytest.mark.parametrize("bits", [8, 16])
def test_the_icc_profile_of_an_input_is_kept_in_its_output(tmp_path, bits):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    save_image(torch.rand(3, 6, 5), tmp_path / "in.png", bits, icc=icc)
    img, fmt = read_image(tmp_path / "in.png")
    assert fmt.icc == icc
    save_as(img, tmp_path / "out.png", fmt)
    with Image.open(tmp_path / "out.png") as out:
        assert out.info["icc_profile"] == icc
    assert torch.equal(read_image(tmp_path / "out.png")[0], img)
