"""Image files in and out.

Reading (:func:`read_image`, the one loader every command uses): any image Pillow opens, at its
true scale, as a (3, H, W) float32 RGB tensor in [0, 1], with its EXIF orientation applied:

- 8-bit files (L, RGB, palette, LA, RGBA, CMYK, YCbCr, ...): level / 255, converted to RGB by
  Pillow; alpha is dropped (the stored colour is kept, not composited); 1-bit files give 0 or 1.
- 16-bit files: level / 65535; grayscale (Pillow's ``I;16`` modes) and colour PNG/TIFF (which
  Pillow would truncate to 8 bits, so they are decoded by pypng / tifffile instead).
- 32-bit integer files (mode ``I``): level / 65535 (Pillow's mode for 16-bit data); a value
  outside 0..65535 is an error.
- 32-bit float files (mode ``F``): taken as intensities in [0, 1]; a value outside it (or NaN)
  is an error, never clipped silently.
- TIFFs Pillow cannot open (float RGB, float16/float64, 16-bit gray+alpha, ...) are read with
  tifffile under the same rules (integers as level / (2**bits - 1) for 8 and 16 bits, floats in
  [0, 1]).

Refused from the header, before any pixel is decoded (ValueError naming the file): animated
GIF/PNG/WebP and multi-page TIFF files (only one frame would be derained: extract the frames
first), and images of more than :func:`max_pixels` pixels (64 megapixels; the environment
variable ``SDPSFNET_MAX_PIXELS`` raises it), whose decoding alone could exhaust memory.

Grayscale files are replicated to the three channels. :func:`read_image` also returns the file's
:class:`PixelFormat` (8 or 16 bits, grayscale or colour) so that outputs can be written back in
it (:func:`save_as`: a 16-bit input gives a 16-bit output, a grayscale one a grayscale output;
float inputs give 16-bit outputs, the deepest PNG), with the input's ICC colour profile copied
into the output (pixels are not converted between colour spaces).

Folders of images and rainy/clean pairs: :mod:`sdpsfnet.data.folders`.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from ..files import atomic_write

__all__ = ["PixelFormat", "read_image", "load_image", "image_size", "max_pixels", "save_image", "save_as",
           "not_regular"]

_ORIENTATION = ExifTags.Base.Orientation
_GRAY_8BIT = ("1", "L", "LA")


class PixelFormat(NamedTuple):
    """How an image file stores its pixels: ``bits`` per channel (8 or 16), ``gray`` or colour,
    and its ICC colour profile (``icc`` bytes, None without one)."""

    bits: int = 8
    gray: bool = False
    icc: bytes | None = None


DEFAULT_MAX_PIXELS = 64_000_000
_TIFF = (".tif", ".tiff")


def max_pixels() -> int:
    """The most pixels (width x height) an image may have: ``SDPSFNET_MAX_PIXELS``, else 64e6."""
    text = os.environ.get("SDPSFNET_MAX_PIXELS", "")
    try:
        return int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"SDPSFNET_MAX_PIXELS must be an integer, got {text!r}") from None


class ImageRefused(ValueError):
    """An image file refused from its header (frames, size); the message names the file."""


def _check_header(path: Path, width: int, height: int, frames: int) -> None:
    if frames > 1:
        raise ImageRefused(f"{path} holds {frames} frames (an animation or a multi-page file); only "
                           f"single-frame images are read: extract the frames first")
    if width * height > max_pixels():
        raise ImageRefused(f"{path} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over "
                           f"the limit of {max_pixels() / 1e6:g} megapixels; set SDPSFNET_MAX_PIXELS to "
                           f"raise it if the memory allows")


@contextlib.contextmanager
def _open(path: Path):
    """``Image.open`` with Pillow's own decompression-bomb limit off (:func:`_check_header`
    applies sdpsfnet's, which the environment can raise); the frames and size are checked."""
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    with im:
        # MPO (a camera JPEG with a preview image): the first frame is the photo.
        _check_header(path, *im.size, 1 if im.format == "MPO" else getattr(im, "n_frames", 1))
        yield im


def _tiff_page(tif, path: Path):
    """The one page of a TIFF opened by tifffile, its header checked."""
    page = tif.pages[0]
    _check_header(path, page.imagewidth, page.imagelength, len(tif.pages))
    return page


def _bits_per_sample(im: Image.Image, path: Path) -> int:
    """Bits per channel stored in a PNG or TIFF file (Pillow's colour modes hold only 8)."""
    if im.format == "PNG":
        import png

        reader = png.Reader(filename=os.fspath(path))
        reader.preamble()
        return reader.bitdepth
    if im.format == "TIFF":
        return max(im.tag_v2.get(258, (8,)))  # BitsPerSample
    return 8


def _read_16bit_colour(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, channels) uint16 of a 16-bit PNG (pypng) or TIFF (tifffile), as stored."""
    if im.format == "PNG":
        import png

        width, height, rows, info = png.Reader(filename=os.fspath(path)).asDirect()
        return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        return np.moveaxis(arr, page.axes.index("S"), -1) if "S" in page.axes else arr[..., None]


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array: Pillow's exif_transpose on each channel
    (as a 16-bit image, since Pillow has no 16-bit colour mode)."""
    if orientation == 1:
        return arr
    channels = []
    for c in range(arr.shape[-1]):
        im = Image.fromarray(np.ascontiguousarray(arr[..., c]))
        im.getexif()[_ORIENTATION] = orientation
        channels.append(np.asarray(ImageOps.exif_transpose(im)))
    return np.stack(channels, -1)


def _check_range(arr: np.ndarray, lo: float, hi: float, what: str) -> None:
    if arr.size and np.isnan(arr).any():
        raise ValueError(f"{what} values must lie in [{lo:g}, {hi:g}], but the image holds NaN")
    if arr.size and not (arr.min() >= lo and arr.max() <= hi):
        raise ValueError(f"{what} values must lie in [{lo:g}, {hi:g}], found {arr.min():g}..{arr.max():g}")


def _read_tifffile(path: Path) -> tuple[np.ndarray, PixelFormat]:
    """(H, W, 1 or 3) float64 in [0, 1] and the pixel format of a TIFF that Pillow cannot open."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = _tiff_page(tif, path)
        arr = page.asarray()
        arr = np.moveaxis(arr, page.axes.index("S"), -1) if "S" in page.axes else arr[..., None]
        orientation = int(page.tags[274].value) if 274 in page.tags else 1
        icc = page.tags[34675].value if 34675 in page.tags else None
    gray = arr.shape[-1] < 3
    arr = arr[..., :1] if gray else arr[..., :3]  # drop alpha
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        _check_range(arr, 0, 1, f"{arr.dtype} (floating-point)")
        bits = 16
    elif arr.dtype in (np.uint8, np.uint16):
        bits = arr.dtype.itemsize * 8
        arr = arr / float(2 ** bits - 1)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
        _check_range(arr, 0, 65535, f"{arr.dtype} (integer)")
        arr, bits = arr / 65535.0, 16
    else:
        raise ValueError(f"samples of type {arr.dtype} are not supported")
    arr = _orient(arr.astype(np.float32), orientation).astype(np.float64)
    return arr, PixelFormat(bits, gray, bytes(icc) if icc else None)


def _decode(im: Image.Image, path: Path) -> tuple[np.ndarray, PixelFormat]:
    """(H, W, 1 or 3) float64 in [0, 1] and the pixel format of an open image (see the module
    docstring)."""
    icc = im.info.get("icc_profile") or None
    if im.mode in ("RGB", "RGBA", "LA") and _bits_per_sample(im, path) == 16:
        arr = _orient(_read_16bit_colour(im, path), im.getexif().get(_ORIENTATION, 1))
        gray = arr.shape[-1] < 3
        arr = arr[..., :1] if gray else arr[..., :3]  # drop alpha
        return arr / 65535.0, PixelFormat(16, gray, icc)
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        arr = np.asarray(im).astype(np.float64)
        _check_range(arr, 0, 65535, f"{im.mode} (integer)")
        return arr[..., None] / 65535.0, PixelFormat(16, True, icc)
    if im.mode == "F":
        arr = np.asarray(im).astype(np.float64)
        _check_range(arr, 0, 1, "F (floating-point)")
        return arr[..., None], PixelFormat(16, True, icc)
    if im.mode in _GRAY_8BIT:
        return np.asarray(im.convert("L"))[..., None] / 255.0, PixelFormat(8, True, icc)
    return np.asarray(im.convert("RGB")) / 255.0, PixelFormat(8, False, icc)


def _pillow_or_tifffile(path: Path, pillow, tiff):
    """``pillow(im)`` of the opened image, or for a TIFF that Pillow cannot identify,
    ``tiff(path)``; errors other than a header refusal become ValueError naming ``path``."""
    from PIL import UnidentifiedImageError

    try:
        try:
            with _open(path) as im:
                return pillow(im)
        except UnidentifiedImageError:
            if path.suffix.lower() not in _TIFF:
                raise
            return tiff(path)
    except ImageRefused:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {e}") from e


def read_image(path: str | os.PathLike) -> tuple[Tensor, PixelFormat]:
    """Read an image file -> ((3, H, W) float32 RGB in [0, 1], its :class:`PixelFormat`); see the
    module docstring for how each kind of file is scaled.

    Raises FileNotFoundError or ValueError naming ``path`` if it is missing, not a readable image,
    or holds values outside its mode's range.
    """
    path = Path(path)
    if not path.is_file():
        if os.path.lexists(path):
            raise not_regular(path)
        raise FileNotFoundError(f"image file not found: {path}")
    arr, fmt = _pillow_or_tifffile(path, lambda im: _decode(im, path), _read_tifffile)
    img = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    return img.expand(3, -1, -1).contiguous(), fmt


def load_image(path: str | os.PathLike) -> Tensor:
    """The (3, H, W) float32 RGB image in [0, 1] of :func:`read_image` (without the format)."""
    return read_image(path)[0]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`read_image` returns it (EXIF orientation
    applied), from its header only. ValueError naming ``path`` if it is not a readable image or
    :func:`read_image` would refuse it from its header (frames, size)."""
    def pillow(im):
        w, h = im.size
        return (h, w) if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)  # 90-degree turns

    def tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = _tiff_page(tif, path)
            turned = 274 in page.tags and int(page.tags[274].value) in (5, 6, 7, 8)
            return (page.imagelength, page.imagewidth) if turned else (page.imagewidth, page.imagelength)

    return _pillow_or_tifffile(Path(path), pillow, tiff)


def not_regular(path, advice: str = "") -> ValueError:
    """The error for an image path that exists but is not a regular file or a link to one."""
    return ValueError(f"{path} is not a regular file (a broken or looping link, a FIFO or a device){advice}")


def _with_icc(png: bytes, icc: bytes) -> bytes:
    """The PNG file ``png`` with an iCCP chunk holding the ICC profile ``icc`` after its IHDR."""
    body = b"iCCP" + b"ICC profile\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def save_image(img: Tensor, path: str | os.PathLike, bits: int = 8, icc: bytes | None = None) -> None:
    """Write a (3, H, W) RGB or (1, H, W) / (H, W) grayscale image in [0, 1] as a PNG of ``bits``
    (8 or 16) per channel, atomically, with the ICC colour profile ``icc`` if given.

    Values are clamped to [0, 1] and rounded to ``round(x * (2**bits - 1))``. Written with
    :func:`sdpsfnet.files.atomic_write`: a reader never sees a partial file, parent folders are
    created, and the file gets the umask's permissions.
    """
    if not isinstance(img, Tensor):
        raise TypeError(f"img must be a torch.Tensor, got {type(img).__name__}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    if img.dim() == 2:
        img = img.unsqueeze(0)
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"img must have shape (3, H, W), (1, H, W) or (H, W), got {tuple(img.shape)}")
    top = 2 ** bits - 1
    arr = torch.round(img.detach().double().clamp(0, 1) * top).cpu().permute(1, 2, 0).numpy()
    arr = arr.astype(np.uint8 if bits == 8 else np.uint16)
    buf = io.BytesIO()
    if bits == 16 and arr.shape[-1] == 3:  # Pillow writes 16-bit grayscale only
        import png

        h, w, _ = arr.shape
        png.Writer(w, h, greyscale=False, bitdepth=16).write(buf, arr.reshape(h, w * 3))
    else:
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    with atomic_write(path) as f:
        f.write(_with_icc(buf.getvalue(), icc) if icc else buf.getvalue())


def save_as(img: Tensor, path: str | os.PathLike, fmt: PixelFormat) -> None:
    """Write a (3, H, W) image in the pixel format of an input file: at ``fmt.bits``, as
    grayscale (the mean of the channels) when ``fmt.gray``, with its ICC profile."""
    save_image(img.mean(0, keepdim=True) if fmt.gray else img, path, fmt.bits, fmt.icc)
