"""Image files in and out, and paired rainy/clean folders for training and evaluation.

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

Folders are listed by :func:`image_files`, the one rule every command and the trainer use: image
suffixes only, hidden names (``.*``, as macOS's ``._photo.png``) and sub-folders skipped, and an
entry with an image suffix that is not a regular file (or a link to one) refused by name.

Paired folders: ``root/input/`` + ``root/target/`` or ``root/rain/`` + ``root/norain/`` (if both
exist, ``input/`` + ``target/`` wins). Images: .png .jpg .jpeg .bmp .tif .tiff .webp (any case);
other files are ignored. Partners are matched by file stem, so ``input/7.png`` pairs with
``target/7.jpg``. One name variant is accepted: a leading ``rain`` / ``norain`` token followed by
``-``, ``_`` or a digit is ignored for matching, so the Rain100H/Rain100L release names
``rain/rain-001.png`` and ``norain/norain-001.png`` pair up. Many-to-one layouts (Rain1400's 14
rainy versions ``1_1.jpg``..``1_14.jpg`` of ``1.jpg``) are not supported: rename first.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from .files import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS", "PixelFormat", "read_image", "load_image", "image_size", "image_files",
    "max_pixels", "save_image",
    "save_as", "check_pairs", "find_pairs", "images_by_key", "PairedImages", "random_crop",
    "random_flip_rot", "pad_to", "natural_key",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = (("input", "target"), ("rain", "norain"))
_RAIN_PREFIX = re.compile(r"^(?:no)?rain(?=[-_\d])[-_]?", re.IGNORECASE)
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


def natural_key(name: str):
    """Sort key that orders ``2`` before ``10`` (digit runs compare as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(name)) if t]


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


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted: names with an image suffix
    (:data:`IMAGE_EXTENSIONS`), hidden names (``.*``) and sub-folders skipped. ValueError naming
    an entry with an image suffix that is not a regular file or a link to one (a dangling or
    looping link, a FIFO, a device), before any file is read."""
    found = []
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or p.is_dir():
            continue
        if not p.is_file():
            raise not_regular(p, f"; remove it or move it out of {folder}")
        found.append(p)
    return found


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


def _size_mismatch(a: Path, a_size: tuple[int, int], b: Path, b_size: tuple[int, int]) -> ValueError:
    return ValueError(f"{a} is {a_size[0]}x{a_size[1]} but its partner {b} is {b_size[0]}x{b_size[1]} "
                      "(width x height)")


def check_pairs(pairs: Iterable[tuple[Path, Path]], min_side: int = 1, why: str = "") -> None:
    """Before any work: ValueError naming both files of a pair whose sizes differ, or a file
    whose width or height is under ``min_side`` (``why`` says what needs it). Reads headers only."""
    for a, b in pairs:
        a_size, b_size = image_size(a), image_size(b)
        if a_size != b_size:
            raise _size_mismatch(a, a_size, b, b_size)
        if min(a_size) < min_side:
            raise ValueError(f"{a} and {b} are {a_size[0]}x{a_size[1]}: {why or 'need'} at least "
                             f"{min_side}x{min_side} pixels")


def _pair_key(stem: str) -> str:
    return _RAIN_PREFIX.sub("", stem) or stem


def images_by_key(folder: str | os.PathLike, what: str = "folder") -> dict[str, Path]:
    """The image files directly in ``folder``, keyed by their matching name (the file stem, less a
    leading ``rain``/``norain`` token; see the module docstring), listed by :func:`image_files`.
    ValueError naming ``what`` and the folder if it is missing or holds no images, or
    naming both files if two share a key (``1.png`` and ``1.jpg``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is not a directory")
    found: dict[str, Path] = {}
    for p in image_files(folder):
        key = _pair_key(p.stem)
        if key in found:
            raise ValueError(f"{p} and {found[key]} in {folder} have the same name {key!r}; keep one")
        found[key] = p
    if not found:
        raise ValueError(f"{what} {str(folder)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def find_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(rainy_path, clean_path) pairs under ``root`` (see the module docstring), in natural name order.

    Raises ValueError naming the file for a rainy image without a clean partner (or the reverse),
    naming the folder if it is missing or holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {str(root)!r} is not a directory")
    for rainy_name, clean_name in LAYOUTS:
        rainy_dir, clean_dir = root / rainy_name, root / clean_name
        if rainy_dir.is_dir() and clean_dir.is_dir():
            break
    else:
        expected = " or ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
        half = [f"{a}/ but no {b}/" if (root / a).is_dir() else f"{b}/ but no {a}/"
                for a, b in LAYOUTS if (root / a).is_dir() != (root / b).is_dir()]
        found = f" (it has {half[0]})" if half else ""
        raise ValueError(f"root {str(root)!r} must contain {expected}{found}")
    return match_by_key(images_by_key(rainy_dir, "rainy folder"), images_by_key(clean_dir, "clean folder"),
                        "clean partner", "rainy partner", clean_dir, rainy_dir)


def match_by_key(first: dict, second: dict, first_lacks: str, second_lacks: str,
                 second_dir, first_dir) -> list[tuple[Path, Path]]:
    """Pairs (first[k], second[k]) for the keys of two :func:`images_by_key` listings, in natural
    order; ValueError naming the first file of either side that has no partner on the other."""
    for key, p in first.items():
        if key not in second:
            raise ValueError(f"{p} has no {first_lacks} named {p.stem}.* in {second_dir}")
    for key, p in second.items():
        if key not in first:
            raise ValueError(f"{p} has no {second_lacks} named {p.stem}.* in {first_dir}")
    return [(first[k], second[k]) for k in sorted(first, key=natural_key)]


def pad_to(img: Tensor, height: int, width: int) -> Tensor:
    """Reflect-pad a (C, H, W) image at the bottom/right to at least (height, width).

    Pads larger than the image reflect repeatedly (like ``numpy.pad(mode="reflect")``); a side of
    1 pixel is replicated.
    """
    while img.shape[-2] < height or img.shape[-1] < width:
        H, W = img.shape[-2:]
        ph, pw = max(0, height - H), max(0, width - W)
        if (ph and H == 1) or (pw and W == 1):
            return F.pad(img.unsqueeze(0), (0, pw, 0, ph), mode="replicate")[0]
        img = F.pad(img.unsqueeze(0), (0, min(pw, W - 1), 0, min(ph, H - 1)), mode="reflect")[0]
    return img


def random_crop(images: tuple[Tensor, ...] | list[Tensor], crop: int) -> list[Tensor]:
    """The same random ``crop`` x ``crop`` window of each (C, H, W) image (torch's global RNG).

    Images smaller than ``crop`` are reflect-padded first (see :func:`pad_to`).
    """
    images = [pad_to(im, crop, crop) for im in images]
    H, W = images[0].shape[-2:]
    top = int(torch.randint(H - crop + 1, ()).item())
    left = int(torch.randint(W - crop + 1, ()).item())
    return [im[..., top:top + crop, left:left + crop] for im in images]


def random_flip_rot(images: tuple[Tensor, ...] | list[Tensor]) -> list[Tensor]:
    """The same random horizontal flip, vertical flip and rot90 (k in 0..3) of each (C, H, W) image.

    Draws from torch's global RNG (so DataLoader worker seeding applies). Together these give all
    8 symmetries of the square.
    """
    hflip, vflip = (bool(b) for b in torch.randint(2, (2,)))
    k = int(torch.randint(4, ()).item())
    out = []
    for im in images:
        if hflip:
            im = im.flip(-1)
        if vflip:
            im = im.flip(-2)
        out.append(torch.rot90(im, k, dims=(-2, -1)).contiguous())
    return out


def _check_crop(crop) -> None:
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(f"crop must be a positive int or None, got {crop!r}")


class PairedImages(Dataset):
    """Rainy/clean pairs from a folder (see :func:`find_pairs`).

    ``train=True``: a random ``crop`` x ``crop`` window (the same on both images; images smaller
    than the crop are reflect-padded), random flips and rot90, all drawn from torch's global RNG so
    ``torch.manual_seed`` and DataLoader worker seeding make it reproducible; ``crop=None`` keeps
    the full image (still flipped/rotated). ``train=False``: full images, untouched.

    ``__getitem__(i) -> (rainy (3,h,w), clean (3,h,w), name)``, float32 in [0, 1], name the rainy
    file's stem. Partners of different sizes raise ValueError naming both files (checked when the
    pair is loaded).
    """

    def __init__(self, root: str | os.PathLike, crop: int | None = 128, train: bool = True):
        _check_crop(crop)
        self.root = Path(root)
        self.crop = crop
        self.train = bool(train)
        self.pairs = find_pairs(self.root)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        rainy_path, clean_path = self.pairs[index]
        rainy, clean = load_image(rainy_path), load_image(clean_path)
        if rainy.shape != clean.shape:
            raise _size_mismatch(rainy_path, (rainy.shape[2], rainy.shape[1]),
                                 clean_path, (clean.shape[2], clean.shape[1]))
        if self.train:
            pair = [rainy, clean]
            if self.crop is not None:
                pair = random_crop(pair, self.crop)
            rainy, clean = random_flip_rot(pair)
        return rainy, clean, rainy_path.stem
