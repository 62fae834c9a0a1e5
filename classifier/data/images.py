"""Decode one image file into uint8 pixels, the same way for every PIL mode.

Every path that reads an image file (streaming training, folder statistics, ``test.py``, the
predictor) goes through :func:`load_image`, so a deployed model sees pixels decoded exactly as in
training. Rules, in order:

* EXIF orientation is applied (phone photos are stored rotated).
* Transparency (LA, RGBA, PA, P/L/RGB with a ``transparency`` key) is composited on white.
* High bit depth is scaled to 8 bit by its range: ``I;16*`` by 65535; ``I`` and ``F`` by the
  smallest of the ranges 0-1 (``F`` only), 0-255, 0-65535 that holds the data, else by the image's
  own min..max.
* CMYK, YCbCr, LAB, HSV -> RGB with PIL's conversions; ``1`` -> 0/255.
* Finally L or RGB: gray is replicated to RGB, RGB goes to gray with PIL's ITU-R 601 luma.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from classifier.errors import ClassifierError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_ORIENTATION = 0x0112  # EXIF tag
# Images over the pixel limit are refused (BadImageError) by load_image and are "unknown" to image_size;
# PIL's multi-line warning about them would only repeat that.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImageError(ClassifierError):
    """An image file that cannot be decoded (empty, truncated, not an image, too large)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a non-hidden file name with an image extension (the file itself is not opened)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files_under(folder: str | os.PathLike) -> list[str]:
    """The image files below ``folder`` (followed links included, hidden folders such as .ipynb_checkpoints
    skipped), sorted by folder, then name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
    return out


DRAFT_FACTOR = 2  # draft mode keeps at least this many decoded pixels per model pixel along each side


def load_image(path: str | os.PathLike, channels: int, *, draft: tuple[int, int] | None = None,
               data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` to a uint8 array of shape (H, W, channels); channels is 1 or 3.

    ``draft`` (a model input size, height x width): a JPEG much larger than it is decoded at a reduced
    size (Pillow's draft mode: the JPEG decoder's own 1/2, 1/4, 1/8 scaling, much faster), never below
    ``DRAFT_FACTOR`` x the longer model side. Training uses it; evaluation and deployment decode at full
    size, so the pixels differ slightly (see the README for the measured effect). ``data``: the file's
    bytes, already read (``path`` then only names it in messages).

    Raises :class:`BadImageError` with a one-line reason for anything that cannot be decoded,
    including images above ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression bombs).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = os.fspath(path)
    try:
        # Image.open warns above MAX_IMAGE_PIXELS (and raises above twice that); _refuse_bomb makes the
        # warning case an error too. No warnings.catch_warnings here: it is not thread-safe, and
        # images are decoded from threads.
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            _refuse_bomb(im)
            if draft and im.format == "JPEG":
                side = DRAFT_FACTOR * max(draft)  # max: EXIF rotation may swap the axes
                im.draft(im.mode, (side, side))
            im.load()
            return pil_to_array(im, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(f"{path}: refused, too many pixels (limit {Image.MAX_IMAGE_PIXELS}), "
                            "a possible decompression bomb") from None
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except Image.UnidentifiedImageError:
        empty = not data if data is not None else os.path.isfile(path) and os.path.getsize(path) == 0
        raise BadImageError(f"{path}: {'empty file (0 bytes)' if empty else 'not a readable image'}") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, MemoryError, struct.error,
            zlib.error) as err:
        # PIL reports truncated/corrupt data with any of these, depending on the format plugin.
        raise BadImageError(f"{path}: cannot decode ({_first_line(err)})") from None


def pil_to_array(im: Image.Image, channels: int) -> np.ndarray:
    """An opened PIL image -> uint8 (H, W, channels) by the rules in the module docstring."""
    if im.getexif().get(_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    im = _to_8bit(im)
    if im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode == "1" else "RGB")  # 1 -> 0/255; CMYK, P, YCbCr... -> RGB
    # L -> RGB replicates; RGB -> L is ITU-R 601-2 luma (classifier.preprocess.LUMA). Composited
    # gray (R=G=B) comes back exactly, the integer luma weights sum to 1.
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.array(im, dtype=np.uint8)  # a writable copy (asarray can be read-only)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float images to mode L; other modes pass through."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64) / 257.0  # 0..65535 -> 0..255
    elif im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        a = _scale_by_range(a, allow_unit=im.mode == "F")
    else:
        return im
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _scale_by_range(a: np.ndarray, allow_unit: bool) -> np.ndarray:
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if lo >= 0:
        if allow_unit and hi <= 1.0:
            return a * 255.0
        if hi <= 255:
            return a
        if hi <= 65535:
            return a / 257.0
    if hi == lo:
        return np.zeros_like(a)
    return (a - lo) * (255.0 / (hi - lo))


def _refuse_bomb(im: Image.Image) -> None:
    # Image.open only warns between the limit and twice the limit: refuse that range as well.
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.size[0] * im.size[1] > limit:
        raise Image.DecompressionBombError(f"{im.size[0]}x{im.size[1]} exceeds the limit of {limit} pixels")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def image_size(path: str | os.PathLike) -> tuple[tuple[int, int], str] | None:
    """((height, width), mode) read from the header only, or None if unreadable or over the pixel limit."""
    try:
        with Image.open(Path(path)) as im:
            _refuse_bomb(im)
            w, h = im.size
            if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w  # exif_transpose swaps the axes for these orientations
            return (h, w), im.mode
    except Exception:  # noqa: BLE001 - a header we cannot read is just "unknown"
        return None
