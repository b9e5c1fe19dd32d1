"""Fuzzing the image loader: mutated image bytes either load as RGB or raise ImageError.

Hypothesis flips bits, cuts, inserts and overwrites bytes of small valid files (the header, where
sizes and offsets live, most often) and feeds them to `load_rgb` and `image_size` as an upload
would arrive. Anything but an ImageError with a one-line message naming the file is a bug; so is a
case slower than DEADLINE_MS. Derandomised, so CI always runs the same examples: set
CITYCLF_FUZZ_EXAMPLES to a large number (and CITYCLF_FUZZ_RANDOM=1) to search further by hand.
"""
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityclf.images import ImageError, image_size, load_rgb
from hostile_corpus import encode, photo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt metadata

SEEDS = {  # file name -> valid bytes to mutate
    "baseline.jpg": encode(photo(48, 32), "JPEG"),
    "progressive.jpg": encode(photo(48, 32), "JPEG", progressive=True),
    "street.png": encode(photo(48, 32), "PNG"),
    "palette.png": encode(photo(48, 32).quantize(16), "PNG"),
    "animated.gif": encode(photo(24, 16), "GIF", save_all=True,
                           append_images=[photo(24, 16).rotate(90)]),
    "lossy.webp": encode(photo(48, 32), "WEBP"),
    "scan.tif": encode(photo(48, 32), "TIFF"),
}
HEADER_BYTES = 200  # where dimensions, chunk lengths and tables live
EXAMPLES = int(os.environ.get("CITYCLF_FUZZ_EXAMPLES", 10_000))  # about 15 s
DEADLINE_MS = 5000  # generous for a shared CI machine; a hang or a bomb takes far longer


@st.composite
def mutated_files(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        end = len(data) if draw(st.booleans()) else min(len(data), HEADER_BYTES)
        at = draw(st.integers(0, max(0, end - 1)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
    return name, bytes(data)


def upload(name: str, data: bytes) -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


def assert_clear(err: ImageError, name: str) -> None:
    message = str(err)
    assert message.startswith(f"{name}: ") and "\n" not in message, message


@settings(max_examples=EXAMPLES, deadline=DEADLINE_MS,
          derandomize=not os.environ.get("CITYCLF_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_images_load_or_raise_a_clear_image_error(case):
    name, data = case
    try:
        width, height = image_size(upload(name, data))
        assert width > 0 and height > 0
    except ImageError as err:
        assert_clear(err, name)
    try:
        rgb = load_rgb(upload(name, data))
    except ImageError as err:
        assert_clear(err, name)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size


def test_the_seeds_themselves_load():
    for name, data in SEEDS.items():
        assert load_rgb(upload(name, data)).shape[2] == 3
