"""A corpus of bad and unusual image files, generated on demand (no binaries in the repository).

Each Case writes one file (or folder, link, pipe) and says what cityclf must make of it: a photo
of a given shape, optionally with a pixel check, or an ImageError whose message contains `error`.
`python tests/hostile_corpus.py FOLDER` writes the corpus to look at by hand.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageCms

RED, GREEN, BLUE, WHITE = (230, 20, 20), (20, 200, 20), (20, 20, 230), (255, 255, 255)
SPARSE_BYTES = 200 * 2**20


@dataclass(frozen=True)
class Case:
    name: str                         # the file name, as a user would upload it
    write: Callable[[Path], None]     # creates the file at the path it is given
    error: str | None = None          # a fragment of the expected message; None: it must work
    shape: tuple[int, int] | None = None                # (height, width) of a photo that works
    check: Callable[[np.ndarray], bool] | None = None   # what its pixels must look like
    upload: bool = True               # False for what no browser can upload (a folder, a pipe)
    needs_non_root: bool = False      # permissions mean nothing to root

    @property
    def works(self) -> bool:
        return self.error is None


def close(pixel, rgb, tolerance=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - rgb) <= tolerance))


# ------------------------------------------------------------------------------ file bytes

def photo(width=96, height=72) -> Image.Image:
    """A small street-like picture: sky over road, with texture so JPEG has work to do."""
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 40, (height, width, 3), np.uint8)
    pixels[: height // 2] += np.array([150, 180, 200], np.uint8)
    pixels[height // 2:] += np.array([70, 70, 70], np.uint8)
    return Image.fromarray(pixels)


def halves(left, right, width=40, height=20, mode="RGB") -> Image.Image:
    pixels = np.zeros((height, width, len(left)), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2:] = left, right
    return Image.fromarray(pixels.squeeze(), mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


GREY_2X2_ROWS = (b"\0" + b"\x80" * 6) * 2  # two filter-less rows of two mid-grey RGB pixels


def raw_png(width, height, rows: bytes = GREY_2X2_ROWS, bit_depth=8, ihdr_crc=None, idat_crc=None,
            extra: bytes = b"") -> bytes:
    """An RGB PNG assembled by hand, to declare any size or depth whatever its pixels hold."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header, ihdr_crc) + extra
            + png_chunk(b"IDAT", zlib.compress(rows), idat_crc) + png_chunk(b"IEND", b""))


def png16_rgb() -> bytes:
    """16-bit RGB: left half mid-grey, right half full red."""
    row = b"\0" + b"".join(struct.pack(">HHH", 0x8080, 0x8080, 0x8080) for _ in range(4)) \
        + b"".join(struct.pack(">HHH", 0xFFFF, 0, 0) for _ in range(4))
    return raw_png(8, 6, row * 6, bit_depth=16)


def jpeg_with_size(width, height) -> bytes:
    """A small JPEG whose frame header is patched to declare another size."""
    data = bytearray(encode(photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rotated_jpeg() -> bytes:
    """Stored 40×20, red left and blue right, tagged 'rotate 90° clockwise to view'."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves(RED, BLUE), "JPEG", exif=exif, quality=95)


def exif_jpeg(tag: int, value) -> bytes:
    exif = Image.Exif()
    exif[tag] = value
    return encode(photo(), "JPEG", exif=exif)


def corrupt_exif_jpeg() -> bytes:
    """An APP1 segment that says Exif and then holds noise."""
    data = encode(photo(), "JPEG")
    noise = b"Exif\0\0" + bytes(np.random.default_rng(1).integers(0, 256, 300, np.uint8))
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(noise) + 2) + noise + data[2:]


def text_bomb_png() -> bytes:
    """A 2×2 PNG whose compressed comment inflates to 20 MiB."""
    comment = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 20 * 2**20))
    return raw_png(2, 2, extra=comment)


def rgba_png() -> bytes:
    """Left half fully transparent (black underneath), right half opaque blue."""
    return encode(halves((0, 0, 0, 0), (*BLUE, 255), mode="RGBA"), "PNG")


def palette_png(transparent=False) -> bytes:
    image = halves(RED, BLUE).quantize(4)
    if not transparent:
        return encode(image, "PNG")
    return encode(image, "PNG", transparency=image.getpixel((0, 0)))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 16), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("street.jpg", encode(photo(), "JPEG"))
    return buffer.getvalue()


def cmyk_jpeg(icc=False) -> bytes:
    image = Image.new("CMYK", (32, 24), (0, 230, 230, 20))  # red ink
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if icc else None
    return encode(image, "JPEG", icc_profile=profile)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
HEIC = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64
MP4 = struct.pack(">I", 24) + b"ftypisom" + b"\0\0\2\0" + b"isomiso2" + b"\0" * 64
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
PSD = b"8BPS\0\1" + b"\0" * 6 + b"\0\3" + struct.pack(">IIHH", 10, 10, 8, 3) + b"\0" * 32
HTML = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body></body></html>\n"
TEXT = "Photos from the trip: Tokyo, Kyōto, Osaka.\n".encode() * 3


# ------------------------------------------------------------------------------ writers

def data(content: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content() if callable(content) else content)


def image(make: Callable[[], Image.Image], fmt: str, **options) -> Callable[[Path], None]:
    return data(lambda: encode(make(), fmt, **options))


def sparse(path: Path) -> None:
    """A 200 MiB file that takes no disk space: a hole, zeros to whoever reads it."""
    with open(path, "wb") as file:
        file.truncate(SPARSE_BYTES)


def unreadable(path: Path) -> None:
    path.write_bytes(encode(photo(), "JPEG"))
    path.chmod(0)


# ------------------------------------------------------------------------------ the cases

def red_left_blue_right(rgb) -> bool:
    return close(rgb[:, 2], RED) and close(rgb[:, -3], BLUE)


def white_left_blue_right(rgb) -> bool:
    return close(rgb[:, 2], WHITE, 1) and close(rgb[:, -3], BLUE)


CASES = (
    Case("empty.jpg", data(b""), error="empty file (0 bytes)"),
    Case("notes.jpg", data(TEXT), error="not a readable image (it is a text file)"),
    Case("forbidden.jpg", data(HTML), error="it is a web page, not a photo"),
    Case("cut_in_half.jpg", data(lambda: encode(photo(320, 240), "JPEG")[:3000]),
         error="damaged image data (image file is truncated"),
    Case("cut_header.jpg", data(lambda: encode(photo(), "JPEG")[:120]),
         error="not a readable image"),
    Case("cut_in_half.png", data(lambda: encode(photo(320, 240), "PNG")[:20_000]),
         error="damaged image data"),
    Case("signature_only.png", data(b"\x89PNG\r\n\x1a\n"), error="damaged PNG header"),
    Case("zero_by_zero.png", data(raw_png(0, 0)), error="damaged PNG header"),
    Case("bad_header_crc.png", data(raw_png(2, 2, ihdr_crc=1)), error="damaged PNG header"),
    Case("bad_data_crc.png", data(raw_png(2, 2, idat_crc=1)), shape=(2, 2)),  # Pillow skips it
    Case("jpeg_named.png", image(photo, "JPEG"), shape=(72, 96)),
    Case("progressive.jpg", image(photo, "JPEG", progressive=True), shape=(72, 96)),
    Case("garbage_after.jpg", data(lambda: encode(photo(), "JPEG") + b"\0junk" * 500),
         shape=(72, 96)),
    Case("cmyk.jpg", data(cmyk_jpeg), shape=(24, 32), check=lambda rgb: close(rgb[5, 5], RED, 60)),
    Case("cmyk_icc.jpg", data(lambda: cmyk_jpeg(icc=True)), shape=(24, 32),
         check=lambda rgb: close(rgb[5, 5], RED, 60)),
    Case("grey.jpg", image(lambda: photo().convert("L"), "JPEG"), shape=(72, 96),
         check=lambda rgb: bool((rgb[..., 0] == rgb[..., 2]).all())),
    Case("rgb16.png", data(png16_rgb), shape=(6, 8),
         check=lambda rgb: close(rgb[0, 0], (128,) * 3, 1) and close(rgb[0, 7], (255, 0, 0), 1)),
    Case("grey16.png", image(lambda: Image.fromarray(np.full((6, 8), 0x8080, np.uint16)), "PNG"),
         shape=(6, 8), check=lambda rgb: close(rgb[0, 0], (128, 128, 128), 1)),
    Case("grey16.tif", image(lambda: Image.fromarray(np.full((6, 8), 0xFFFF, np.uint16)), "TIFF"),
         shape=(6, 8), check=lambda rgb: close(rgb[0, 0], WHITE, 0)),
    Case("palette.png", data(palette_png), shape=(20, 40), check=red_left_blue_right),
    Case("palette_transparent.png", data(lambda: palette_png(transparent=True)), shape=(20, 40),
         check=white_left_blue_right),
    Case("transparent.png", data(rgba_png), shape=(20, 40), check=white_left_blue_right),
    Case("grey_alpha.png", image(lambda: halves((0, 0), (90, 255), mode="LA"), "PNG"),
         shape=(20, 40),
         check=lambda rgb: close(rgb[0, 2], WHITE, 0) and close(rgb[0, -3], (90,) * 3, 0)),
    Case("rotated_by_exif.jpg", data(rotated_jpeg), shape=(40, 20),
         check=lambda rgb: close(rgb[5, 10], RED) and close(rgb[-5, 10], BLUE)),
    Case("bad_orientation.jpg", data(lambda: exif_jpeg(0x0112, 9)), shape=(72, 96)),
    Case("corrupt_exif.jpg", data(corrupt_exif_jpeg), shape=(72, 96)),
    Case("huge_exif.jpg", data(lambda: exif_jpeg(0x9286, b"ASCII\0\0\0" + b"x" * 60_000)),
         shape=(72, 96)),  # a 60 kB user comment: nearly all a JPEG segment can hold
    Case("one_pixel.png", image(lambda: Image.new("RGB", (1, 1), GREEN), "PNG"), shape=(1, 1),
         check=lambda rgb: close(rgb[0, 0], GREEN, 0)),
    Case("strip_10000x10.jpg", image(lambda: photo(10_000, 10), "JPEG"), shape=(10, 10_000)),
    Case("animated.gif", data(animated_gif), shape=(16, 24),
         check=lambda rgb: close(rgb[8, 12], RED)),
    Case("old.bmp", image(photo, "BMP"), shape=(72, 96)),
    Case("scan.tif", image(photo, "TIFF", compression="tiff_lzw"), shape=(72, 96)),
    Case("lossless.webp", image(photo, "WEBP", lossless=True), shape=(72, 96),
         check=lambda rgb: bool((rgb == np.asarray(photo())).all())),
    Case("Straße café 東京 №1.jpg", image(photo, "JPEG"), shape=(72, 96)),
    Case("bomb_50000x50000.png", data(raw_png(50_000, 50_000)),
         error="image is too large (over 64,000,000 pixels)"),
    Case("bomb_60000x60000.jpg", data(lambda: jpeg_with_size(60_000, 60_000)),
         error="image is too large"),
    Case("over_limit_8001x8000.png", data(raw_png(8001, 8000)),
         error="8001×8000 px is too large (limit 64,000,000 pixels)"),
    Case("text_bomb.png", data(text_bomb_png),
         error="not a readable image (Decompressed data too large"),
    Case("200MB.jpg", sparse, error="file is too large (200 MiB; limit 50 MiB)"),
    Case("drawing.png", data(SVG), error="it is an SVG drawing, not a photo"),
    Case("iphone.jpg", data(HEIC), error="it is a HEIC photo; export it as JPEG"),
    Case("clip.jpg", data(MP4), error="it is a video, not a photo"),
    Case("invoice.jpg", data(PDF), error="it is a PDF, not a photo"),
    Case("photos.jpg", data(zip_bytes), error="it is a ZIP archive, not a photo"),
    Case("figure.jpg", data(EPS), error="it is a PostScript file, not a photo"),
    Case("layers.png", data(PSD), error="it is a Photoshop file; export it as JPEG"),
    Case("folder.jpg", lambda path: path.mkdir(), error="is a folder, not an image file",
         upload=False),
    Case("gone.jpg", lambda path: path.symlink_to(path.with_name("missing.jpg")),
         error="a link to a missing file", upload=False),
    Case("loop.jpg", lambda path: path.symlink_to(path), error="cannot be read", upload=False),
    Case("pipe.jpg", lambda path: os.mkfifo(path), error="not a regular file", upload=False),
    Case("secret.jpg", unreadable, error="permission denied", upload=False, needs_non_root=True),
)


def applicable() -> list[Case]:
    """The cases that mean something for this user (root reads any file)."""
    return [case for case in CASES if not (case.needs_non_root and os.geteuid() == 0)]


def generate(folder: Path) -> dict[str, Path]:
    """Write the applicable cases into `folder`; returns each case's path by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in applicable():
        case.write(folder / case.name)
        paths[case.name] = folder / case.name
    return paths


if __name__ == "__main__":
    for name in generate(Path(sys.argv[1])):
        print(name)
