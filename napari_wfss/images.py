"""Image files in and out: list a folder, read any common image as ``uint8`` RGB, read/write label maps.

Reading rules (one place, so the engine, the widget and the export see the same pixels):

- Formats: PNG, JPEG, TIFF, BMP, WebP (:data:`IMAGE_EXTENSIONS`, case-insensitive). Other files of a
  folder (GIF, text, ...) are not images of it; :func:`scan_folder` lists them so callers can say so.
- Size: an image of more than ``max_pixels`` (default :data:`MAX_PIXELS`) is refused from its header,
  before its pixels are decoded (:class:`ImageTooLargeError`), so memory stays bounded whatever the file
  says; the limit can be raised where the memory is there (``wfss label --max-megapixels``).
- EXIF orientation is applied (``ImageOps.exif_transpose``; the TIFF ``Orientation`` tag for TIFF),
  so arrays are upright as a viewer shows them.
- Grey images are repeated to three channels; palette images are expanded to their colours.
- Alpha is composited on **white** (``rgb * a + 255 * (1 - a)``), so transparent areas look as they do
  on a web page; the alpha channel itself is dropped.
- Deeper than 8 bits (16-bit, 32-bit, float): scaled to 8 bits by robust percentiles,
  :data:`LOW_PERCENTILE` .. :data:`HIGH_PERCENTILE` over all colour channels together (one range per
  image, so colour balance is kept), clipped. A constant image becomes black. Exception: Pillow
  itself reduces 16-bit *RGB* PNG and TIFF to 8 bits by taking the high byte (it has no 16-bit RGB
  mode); 16-bit grey PNG and all TIFF read by tifffile get the percentile rule.
- Multi-page TIFF and animated WebP: the first page/frame only. TIFF samples beyond four (multi-channel
  microscopy) keep the first three as RGB; two samples are grey + alpha.
- TIFF is read with tifffile; compressions tifffile cannot decode without ``imagecodecs`` (LZW, JPEG,
  PackBits) are read by Pillow instead.

Label maps (``(H, W)`` ``uint8`` class ids, 0 = background, 255 = ignore) are stored as palette PNGs
(mode ``"P"``): the pixel values are the class ids and the palette makes them visible in any viewer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hhn.errors import UserError

from .atomic import atomic_open

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MAX_MEGAPIXELS = 64.0  #: the default largest image read, in millions of pixels (an 8000 x 8000 image)
MAX_PIXELS = int(MAX_MEGAPIXELS * 1e6)  #: the same in pixels: the default ``max_pixels`` of :func:`read_image`
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
_PERCENTILE_SAMPLE = 1_000_000  # values used to estimate the percentiles of a large image
_TIFF_ORIENTATION_TAG = 274


class ImageReadError(UserError):
    """An image file is missing, corrupt or in a form we cannot decode; the message names the file."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the reader's limit; refused before its pixels are decoded."""


class ImageFolderError(UserError):
    """The image folder does not exist or is not a folder."""


class LabelMapError(UserError):
    """A label map is not a 2-D array / single-channel image of class ids in 0..255."""


def natural_key(text: str) -> tuple:
    """Sort key putting ``img2`` before ``img10`` (digit runs compare as numbers, letters case-folded)."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(t) if i % 2 else t.casefold() for i, t in enumerate(parts)), text


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has one of :data:`IMAGE_EXTENSIONS` (the file is not opened)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FolderScan:
    """The files of an image folder (``folder / relative path``, in natural order of the relative paths):
    ``images`` have one of :data:`IMAGE_EXTENSIONS`; ``skipped`` are the other files (GIF, text, ...)."""

    images: list[Path]
    skipped: list[Path]


def scan_folder(folder: str | os.PathLike[str], recursive: bool = False) -> FolderScan:
    """The image files of ``folder`` and the other files it holds (see :class:`FolderScan`).

    Files and folders whose name starts with ``"."`` are left out of both (this hides the ``.wfss``
    project folder and editor/OS litter). With ``recursive=True`` sub-folders are searched too (symlinked
    folders are not followed).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageFolderError(f"image folder not found: {root} (give an existing folder of images)")
    images: list[Path] = []
    skipped: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        here = Path(dirpath)
        for name in filenames:
            if not name.startswith("."):
                (images if is_image_file(name) else skipped).append(here / name)

    def order(p: Path) -> tuple:
        return natural_key(p.relative_to(root).as_posix())

    return FolderScan(sorted(images, key=order), sorted(skipped, key=order))


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (:attr:`FolderScan.images` of :func:`scan_folder`)."""
    return scan_folder(folder, recursive).images


def file_sha1(path: str | os.PathLike[str]) -> str:
    """Hex SHA-1 of the file's bytes: a content signature for caches (renaming keeps it, editing changes it)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- pixels


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map an array of any numeric dtype to ``uint8`` 0..255.

    ``uint8`` is returned unchanged and ``bool`` becomes 0/255. Anything else is scaled linearly so the
    :data:`LOW_PERCENTILE` and :data:`HIGH_PERCENTILE` of its finite values map to 0 and 255 (min/max
    if those coincide; all zeros for a constant array), clipped; NaN becomes 0. Shape is kept.
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    flat = values.reshape(-1).astype(np.float64)
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    step = max(1, finite.size // _PERCENTILE_SAMPLE)
    lo, hi = np.percentile(finite[::step], [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.nan_to_num(np.clip(np.rint(scaled), 0, 255), nan=0.0).astype(np.uint8)


def _alpha_fraction(alpha: np.ndarray) -> np.ndarray:
    """Alpha of any dtype as float32 in [0, 1] (integers by their dtype's maximum, floats as given)."""
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    return np.clip(np.nan_to_num(alpha.astype(np.float32), nan=1.0), 0.0, 1.0)


def _samples_to_rgb(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, S)`` samples of any dtype -> ``(H, W, 3)`` uint8 RGB (rules in the module doc)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] == 0:
        raise ValueError(f"unsupported pixel array shape {arr.shape}")
    n = arr.shape[2]
    if n == 2:  # grey + alpha
        color, alpha = arr[:, :, :1], arr[:, :, 1]
    elif n == 4:  # RGB + alpha
        color, alpha = arr[:, :, :3], arr[:, :, 3]
    else:  # grey, RGB, or more samples of which the first three are shown
        color, alpha = arr[:, :, :3], None
    rgb = scale_to_uint8(color)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if alpha is not None:
        a = _alpha_fraction(alpha)[:, :, None]
        rgb = np.rint(rgb.astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.ascontiguousarray(rgb)


_PIL_DIRECT = {"1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("PA", "RGBa", "RGBX"):
        im = im.convert("RGBA")
    elif im.mode == "La":
        im = im.convert("LA")
    elif im.mode not in _PIL_DIRECT:
        im = im.convert("RGB")  # CMYK, YCbCr, HSV, LAB, ...
    return _samples_to_rgb(np.array(im))  # a writable copy (np.asarray of a Pillow image is read-only)


def refuse_large(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` if ``width x height`` is more than ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image too large ({width} x {height} = {width * height / 1e6:.1f} megapixels, the limit is "
            f"{max_pixels / 1e6:g}): {path}; shrink it, or raise the limit (wfss label --max-megapixels) "
            "if the computer has the memory (it grows with the pixel count)"
        )


def _read_pillow(path: Path, max_pixels: int) -> np.ndarray:
    with Image.open(path) as im:
        width, height = im.size
        refuse_large(path, width, height, max_pixels)
        im.load()
        return _pil_to_rgb(ImageOps.exif_transpose(im))


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation value (1..8) to an ``(H, W, ...)`` array, as exif_transpose does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(int(orientation))
    return arr if op is None else op(arr)


def _tiff_orientation(page) -> int:
    tag = page.tags.get(_TIFF_ORIENTATION_TAG)
    return int(tag.value) if tag is not None else 1


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    return _samples_to_rgb(_tiff_samples(path, max_pixels))


def _tiff_samples(path: Path, max_pixels: int) -> np.ndarray:
    """The first page's upright samples ``(H, W[, S])`` at the file's own dtype (palette expanded to RGB)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        dims = dict(zip(page.axes, page.shape))
        refuse_large(path, dims.get("X", 1), dims.get("Y", 1), max_pixels)
        photometric = int(page.photometric)
        if photometric not in (0, 1, 2, 3):  # MINISWHITE, MINISBLACK, RGB, PALETTE; others -> Pillow
            raise ValueError(f"TIFF photometric {page.photometric!r} is left to Pillow")
        data = page.asarray()
        axes = page.axes
        colormap = page.colormap
        orientation = _tiff_orientation(page)
    # Bring to (Y, X[, S]); any other axis (e.g. a depth of a volume page) keeps its first index.
    for ax in [a for a in axes if a not in "YXS"]:
        data = np.take(data, 0, axis=axes.index(ax))
        axes = axes.replace(ax, "")
    order = [axes.index(a) for a in "YXS" if a in axes]
    data = np.transpose(data, order)
    if photometric == 3 and colormap is not None:
        cmap = np.asarray(colormap)
        cmap8 = (cmap >> 8 if cmap.max() > 255 else cmap).astype(np.uint8)  # (3, 2**bits), high byte
        data = np.moveaxis(cmap8[:, data], 0, -1)
    elif photometric == 0:  # MINISWHITE: 0 is white
        if data.dtype == np.bool_:
            data = ~data
        elif np.issubdtype(data.dtype, np.integer):
            data = np.iinfo(data.dtype).max - data
        else:
            data = data.max() - data
    return _orient(data, orientation)


_PIL_DEEP = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _deep_samples(path: Path, max_pixels: int) -> np.ndarray | None:
    """The upright pixels of a file deeper than 8 bits at its own dtype, ``(H, W)`` grey or ``(H, W, 3)``
    colour (alpha and extra samples dropped); None for 8-bit (and 1-bit) files."""
    if path.suffix.lower() in (".tif", ".tiff"):
        data = _tiff_samples(path, max_pixels)
    else:
        with Image.open(path) as im:
            width, height = im.size
            refuse_large(path, width, height, max_pixels)
            if im.mode not in _PIL_DEEP:
                return None
            im.load()
            data = np.array(ImageOps.exif_transpose(im))
    if data.dtype in (np.uint8, np.bool_):
        return None
    if data.ndim == 3:
        data = data[:, :, 0] if data.shape[2] <= 2 else data[:, :, :3]
    return np.ascontiguousarray(data)


def read_display_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image to show a person: deep files (16-bit, 32-bit, float) upright at their own dtype, ``(H, W)``
    grey or ``(H, W, 3)`` colour, so no precision is lost on screen; every other file as :func:`read_image`
    gives it (the model always gets :func:`read_image`'s 8-bit copy). Same errors as :func:`read_image`."""
    p = Path(path)
    deep = None
    with contextlib.suppress(Exception):  # unreadable here: read_image below says why
        deep = _deep_samples(p, max_pixels)
    return deep if deep is not None else read_image(p, max_pixels)


def display_range(pixels: np.ndarray) -> tuple[float, float]:
    """Contrast limits that show ``pixels`` as the model sees them: the :data:`LOW_PERCENTILE` ..
    :data:`HIGH_PERCENTILE` range of :func:`scale_to_uint8` (``(0, 255)`` for ``uint8``)."""
    if pixels.dtype == np.uint8:
        return 0.0, 255.0
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels.reshape(-1)
    if finite.size == 0:
        return 0.0, 1.0
    step = max(1, finite.size // _PERCENTILE_SAMPLE)
    lo, hi = (float(v) for v in np.percentile(finite[::step], [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as an upright ``(H, W, 3)`` ``uint8`` RGB array (rules in the module doc).

    Raises :class:`ImageReadError` (a ``UserError``) naming the file and the reason when the file is
    missing, truncated, corrupt or undecodable, and :class:`ImageTooLargeError` (one) before decoding
    an image of more than ``max_pixels`` pixels (or more than Pillow's own limit, for files Pillow reads).
    """
    p = Path(path)
    _check_file(p)
    tiff_reason = None
    if p.suffix.lower() in (".tif", ".tiff"):
        try:
            return _read_tiff(p, max_pixels)
        except ImageTooLargeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure falls back to Pillow below
            tiff_reason = f"{type(exc).__name__}: {exc}"
    try:
        return _read_pillow(p, max_pixels)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large ({exc}): {p}; shrink it") from exc
    except Exception as exc:  # noqa: BLE001 - corrupt files raise anything; report it as a UserError
        reason = _decode_failure(exc)
        if tiff_reason:
            reason = f"{reason}; tifffile: {tiff_reason}"
            if "imagecodecs" in tiff_reason:
                reason += " (installing 'imagecodecs' lets tifffile decode this compression)"
        raise ImageReadError(f"{reason}: {p}; check that it opens in an image viewer, or remove it from the "
                             "folder") from exc


def _check_file(p: Path) -> None:
    """Raise :class:`ImageReadError` (reason first, then the path) unless ``p`` is a non-empty file."""
    if p.is_symlink() and not p.exists():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        raise ImageReadError(f"broken symbolic link, or a link loop (it points to {target}): {p}; point it at an "
                             "image file or remove it")
    if not p.is_file():
        raise ImageReadError(f"image not found: {p} (was it moved or deleted?)")
    if p.stat().st_size == 0:
        raise ImageReadError(f"empty file (0 bytes), not an image: {p}; copy it again or remove it from the folder")


def _decode_failure(exc: Exception) -> str:
    """Why a decoder failed, in words, without the file name the decoders repeat in their messages."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image, or its header is corrupt (no decoder recognises the file)"
    text = str(exc)
    if "truncated" in text:
        return "truncated image: the file ends before its pixels do"
    return f"corrupt image data ({type(exc).__name__}: {text})"


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of the upright image, from the file header; equals ``read_image(path).shape[:2]``."""
    p = Path(path)
    _check_file(p)
    if p.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                page = tif.pages[0]
                if int(page.photometric) in (0, 1, 2, 3):
                    dims = dict(zip(page.axes, page.shape))
                    h, w = dims["Y"], dims["X"]
                    return (w, h) if _tiff_orientation(page) >= 5 else (h, w)
        except Exception:  # noqa: BLE001 - Pillow below decides whether the file is readable
            pass
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = im.getexif().get(_TIFF_ORIENTATION_TAG, 1)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{_decode_failure(exc)}: {p}") from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


# ------------------------------------------------------------------------------------- label maps


def as_label_map(values: np.ndarray) -> np.ndarray:
    """Validate a label map and return it as a C-contiguous ``(H, W)`` ``uint8`` array of class ids.

    Accepts any integer or bool array of ndim 2 with values in 0..255 (e.g. a napari Labels layer's
    ``int32`` data); raises :class:`LabelMapError` otherwise.
    """
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise LabelMapError(f"a label map must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise LabelMapError(f"a label map must hold integer class ids, got dtype {arr.dtype}")
    if arr.size and arr.dtype != np.uint8 and (arr.min() < 0 or arr.max() > 255):
        raise LabelMapError(
            f"label values must be class ids in 0..255, found {int(arr.min())}..{int(arr.max())}"
        )
    return np.ascontiguousarray(arr, dtype=np.uint8)


def write_label_png(path: str | os.PathLike[str], label_map: np.ndarray, palette: bytes) -> None:
    """Atomically write ``label_map`` (``(H, W)`` class ids) as a palette PNG.

    ``palette`` is 768 bytes (256 RGB triples, e.g. ``ClassTable.palette()``). The file's pixel values
    are the class ids; the palette only colours them.
    """
    if len(palette) != 768:
        raise ValueError(f"a PNG palette has 768 bytes (256 RGB colours), got {len(palette)}")
    im = Image.fromarray(as_label_map(label_map))
    im.putpalette(palette)
    with atomic_open(path, "wb") as fh:
        im.save(fh, format="PNG")


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map PNG (palette ``"P"`` or grey ``"L"``) as ``(H, W)`` ``uint8`` class ids."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L"):
                raise LabelMapError(
                    f"{p} is not a label map: mode {im.mode!r}; label maps are single-channel "
                    "(palette or grey) PNGs whose pixel values are class ids"
                )
            return np.array(im, dtype=np.uint8)
    except LabelMapError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"unreadable label map, {_decode_failure(exc)}: {p}") from exc


def write_label_tiff(path: str | os.PathLike[str], label_map: np.ndarray, dtype: str = "uint8") -> None:
    """Atomically write ``label_map`` as a single-page deflate-compressed TIFF of ``dtype`` uint8 or uint16."""
    import tifffile

    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"TIFF label maps are uint8 or uint16, not {dtype!r}")
    arr = as_label_map(label_map).astype(dtype)
    with atomic_open(path, "wb") as fh:
        tifffile.imwrite(fh, arr, photometric="minisblack", compression="zlib")
