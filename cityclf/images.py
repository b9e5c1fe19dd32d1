"""Opening image files safely: one place that decides what counts as a readable image.

Scans, predictions and the dashboard all go through here, so a corrupt file, a decompression bomb,
a PDF renamed ``.jpg`` or a rotated phone photo is handled the same way everywhere: it either
becomes an RGB array or raises ImageError with a one-line message that names the file.

What a photo becomes: the EXIF rotation a camera recorded is applied; transparent pixels are laid
on white (a cut-out on a white page, as a browser shows it); 16-bit pixels are scaled to 8 bits;
an animation gives its first frame.
"""
from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageChops

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})  # what dataset scans pick up
# Formats decoded, whatever the file's suffix. Every other Pillow plugin stays off: some, like
# EPS, would run external programs.
READABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_FILE_BYTES = 50 * 2**20  # 50 MiB: a 64-megapixel JPEG at top quality is about 30 MiB
MAX_PIXELS = 64_000_000  # 8000×8000: far above any street photo, far below a bomb
BACKGROUND = (255, 255, 255)  # what transparent pixels become

# Failures of Pillow's decoders on damaged data; anything else is a bug in cityclf.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                 struct.error, ZeroDivisionError)
EXIF_ORIENTATION = 0x0112
TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
# Leading bytes of files people mistake for photos, and what to call them in an error.
SIGNATURES = (
    (b"%PDF", "it is a PDF, not a photo"),
    (b"PK\x03\x04", "it is a ZIP archive, not a photo"),
    (b"\x1f\x8b", "it is a gzip archive, not a photo"),
    (b"Rar!", "it is a RAR archive, not a photo"),
    (b"7z\xbc\xaf", "it is a 7-Zip archive, not a photo"),
    (b"%!PS", "it is a PostScript file, not a photo"),
    (b"8BPS", "it is a Photoshop file; export it as JPEG"),
    (b"\x89PNG", "damaged PNG header"),
    (b"\xff\xd8", "damaged JPEG header"),
    (b"GIF8", "damaged GIF header"),
)
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}
AVIF_BRANDS = {b"avif", b"avis"}
SNIFF_BYTES = 4096


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why in one line."""


def is_image_name(path: str | Path) -> bool:
    """Whether the file name has one of the image suffixes cityclf reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


Source = str | Path | BinaryIO  # a file on disk, or an open file such as a browser upload


def _name(source: Source) -> str:
    """The file name that error messages show: the user's own name for an upload."""
    return Path(getattr(source, "name", None) or str(source)).name


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or err.__class__.__name__


def _byte_count(source: Source) -> int:
    """The file's size, found without reading it; refuses what is not a regular file."""
    name = _name(source)
    if hasattr(source, "seek"):
        position = source.seek(0, os.SEEK_END)
        source.seek(0)
        return position
    try:
        info = os.stat(source)
    except FileNotFoundError:
        missing = "a link to a missing file" if os.path.islink(source) else "no such file"
        raise ImageError(f"{name}: {missing}") from None
    except OSError as err:
        raise ImageError(f"{name}: cannot be read ({err.strerror or _one_line(err)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{name}: is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{name}: not a regular file (a device, pipe or socket)")
    return info.st_size


def _head(source: Source) -> bytes:
    """The first bytes of the file, leaving an open file where it was."""
    if hasattr(source, "seek"):
        source.seek(0)
        head = source.read(SNIFF_BYTES)
        source.seek(0)
        return head
    with open(source, "rb") as file:
        return file.read(SNIFF_BYTES)


def _what_it_is(head: bytes) -> str:
    """What a file Pillow cannot identify really is, as far as its first bytes tell."""
    for signature, description in SIGNATURES:
        if head.startswith(signature):
            return description
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in HEIF_BRANDS:
            return "it is a HEIC photo; export it as JPEG"
        if brand in AVIF_BRANDS:
            return "it is an AVIF image; export it as JPEG"
        return "it is a video, not a photo"
    text = head.lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return "it is an SVG drawing, not a photo"
    if text.startswith((b"<!doctype html", b"<html")):
        return "it is a web page, not a photo"
    return "it is a text file" if _is_text(head) else "unknown format"


def _is_text(head: bytes) -> bool:
    """Whether the bytes are printable UTF-8 (a character cut off at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[: err.start].decode("utf-8")
    return all(char.isprintable() or char.isspace() for char in text)


def _open(source: Source) -> Image.Image:
    """Open lazily (header only), refusing files and sizes that would take absurd memory or time."""
    name = _name(source)
    size = _byte_count(source)
    if size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file is too large ({size / 2**20:,.0f} MiB; "
                         f"limit {MAX_FILE_BYTES / 2**20:.0f} MiB)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=READABLE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (over {MAX_PIXELS:,} pixels)") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image ({_what_it_is(_head(source))})") from None
    except DECODE_ERRORS as err:
        raise ImageError(f"{name}: not a readable image ({_one_line(err)})") from None
    if image.width * image.height > MAX_PIXELS:
        with image:  # closes a file opened here, never the caller's
            raise ImageError(f"{name}: {image.width}×{image.height} px is too large "
                         f"(limit {MAX_PIXELS:,} pixels)")
    return image


def image_size(source: Source) -> tuple[int, int]:
    """(width, height) as stored in the file header (before EXIF rotation), decoding no pixels."""
    with _open(source) as image:
        return image.size


def _oriented(image: Image.Image) -> Image.Image:
    """The image turned as the camera's EXIF orientation says (a bad tag means no turn)."""
    orientation = image.getexif().get(EXIF_ORIENTATION)
    method = TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit grey scaled down (not clipped), transparency laid on BACKGROUND."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = np.clip(np.asarray(image.convert("I")), 0, 65535) // 257
        image = Image.fromarray(grey.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        rgb = rgba.convert("RGB")
        rgb.paste(BACKGROUND, mask=ImageChops.invert(rgba.getchannel("A")))  # "over" on white
        return rgb
    return image if image.mode == "RGB" else image.convert("RGB")


def _decoded(source: Source) -> Image.Image:
    """The first frame as upright 8-bit RGB; intermediate images are freed on return."""
    with _open(source) as image:
        try:
            image.load()
            return _rgb(_oriented(image))
        except DECODE_ERRORS as err:
            raise ImageError(f"{_name(source)}: damaged image data ({_one_line(err)})") from None


def load_rgb(source: Source) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 RGB array, applying the EXIF rotation a camera recorded."""
    return np.asarray(_decoded(source))  # copies the pixels: only one other image is alive
