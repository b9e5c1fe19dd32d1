"""Opening image files safely: one place that decides what counts as a readable image.

Scans, predictions and the dashboard all go through here, so a corrupt file, a decompression bomb or
a rotated phone photo is handled the same way everywhere.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MAX_PIXELS = 64_000_000  # 8000×8000: far above any street photo, far below a bomb


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why in one line."""


def is_image_name(path: str | Path) -> bool:
    """Whether the file name has one of the image suffixes cityclf reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


Source = str | Path | BinaryIO  # a file on disk, or an open file such as a browser upload


def _name(source: Source) -> str:
    """The file name that error messages show: the user's own name for an upload."""
    return Path(getattr(source, "name", None) or str(source)).name


def _open(source: Source) -> Image.Image:
    """Open lazily (header only) and refuse sizes that would allocate absurd memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{_name(source)}: image too large ({err})") from None
    except FileNotFoundError:
        raise ImageError(f"{_name(source)}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{_name(source)}: not a readable image ({err.__class__.__name__})") from None
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"{_name(source)}: {image.width}×{image.height} px is too large "
                         f"(limit {MAX_PIXELS:,} pixels)")
    return image


def image_size(source: Source) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with _open(source) as image:
        return image.size


def load_rgb(source: Source) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 RGB array, applying the EXIF rotation a camera recorded."""
    with _open(source) as image:
        try:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"{_name(source)}: damaged image data ({err})") from None
