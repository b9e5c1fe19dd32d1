"""The input pipeline: image files to batches a model can eat, as a ``tf.data`` graph.

Decoding and resizing run in parallel in TensorFlow's C++ threads and the deterministic part is
cached (as uint8, a quarter of float32's memory), so later epochs skip decoding altogether. JPEGs
are decoded already cropped and, when much larger than the target, downscaled in the DCT domain,
and shrinking uses area averaging (a box filter: alias-free and twice as fast as antialiased
bilinear on 2 cores). Augmentation never
flips horizontally unless asked: a mirrored street drives on the other side of the road, which is
a different city.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # warnings (e.g. skipped images) but no info chatter
import tensorflow as tf  # noqa: E402

from .lite import PANORAMA_ASPECT, PANORAMA_TOLERANCE  # noqa: E402 - one definition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocess:
    """Deterministic preprocessing: what every image goes through before a model sees it."""

    img_size: int = 224
    crop_bottom: float = 0.0  # fraction of the frame height cut off below (a dash-cam's dashboard)
    grayscale: bool = False   # grey, repeated over 3 channels so every model takes the same input

    def __post_init__(self):
        if not 0 <= self.crop_bottom < 1:
            raise ValueError(f"crop_bottom must be in [0, 1), not {self.crop_bottom}")
        if self.img_size < 8:
            raise ValueError(f"img_size must be at least 8 px, not {self.img_size}")

    def key(self) -> str:
        """A short id of these settings, for caches of anything computed from the images."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Augment:
    """Random changes for training; small enough that the street stays the same street."""

    brightness: float = 0.15  # max delta, as a fraction of the 0..255 range
    contrast: float = 0.2     # factor drawn from [1 - c, 1 + c]
    zoom: float = 0.15        # crop up to this fraction away, then resize back
    flip: bool = False        # off: flipping swaps the driving side


JPEG_RATIOS = (1, 2, 4, 8)  # the downscaling factors libjpeg can apply while decoding




def view_window(height: tf.Tensor, width: tf.Tensor, crop_bottom: float) -> tf.Tensor:
    """[top, left, height, width] of the part of a frame a model sees: a panorama's forward
    view, otherwise the frame without its bottom ``crop_bottom`` (a dash-cam's dashboard)."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    panorama = tf.abs(w / h - PANORAMA_ASPECT) <= PANORAMA_TOLERANCE
    view_w, view_h = w / 4, w * 3 / 16
    window = tf.cond(
        panorama,
        lambda: tf.stack([(h - view_h) / 2, (w - view_w) / 2, view_h, view_w]),
        lambda: tf.stack([0.0, 0.0, h * (1 - crop_bottom), w]))
    return tf.maximum(tf.cast(window, tf.int32), [0, 0, 1, 1])


def finish(image: tf.Tensor, pre: Preprocess) -> tf.Tensor:
    """Optionally grey, then resize: a float32 (S, S, 3) image in 0..255 (the frame already cut
    to its view window)."""
    image = tf.cast(image, tf.float32)
    if pre.grayscale:
        image = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    size = (pre.img_size, pre.img_size)
    shrinking = tf.reduce_all(tf.shape(image)[:2] >= pre.img_size)
    image = tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"),
                    lambda: tf.image.resize(image, size, antialias=True))
    return tf.clip_by_value(image, 0.0, 255.0)


def preprocess(image: tf.Tensor, pre: Preprocess) -> tf.Tensor:
    """An already decoded (H, W, 3) uint8 image through crop, grey and resize."""
    top, left, height, width = tf.unstack(view_window(tf.shape(image)[0], tf.shape(image)[1],
                                                      pre.crop_bottom))
    return finish(image[top:top + height, left:left + width], pre)


def _decode_jpeg(data: tf.Tensor, pre: Preprocess) -> tf.Tensor:
    """Decode only the seen window, downscaled by the largest factor that stays above the target."""
    shape = tf.image.extract_jpeg_shape(data)
    window = view_window(shape[0], shape[1], pre.crop_bottom)
    smaller_side = tf.minimum(window[2], window[3])
    fits = [smaller_side >= pre.img_size * r for r in JPEG_RATIOS[1:]]
    choice = tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))

    def decode_at(ratio):  # the crop window is in the downscaled image's coordinates
        window_at = tf.maximum(window // ratio, [0, 0, 1, 1])
        # INTEGER_ACCURATE is libjpeg's default and PIL's; TensorFlow's own default (fast DCT)
        # is off by up to 5 grey levels, enough to move a prediction by 6 points.
        return tf.io.decode_and_crop_jpeg(data, window_at, channels=3, ratio=ratio,
                                          dct_method="INTEGER_ACCURATE")
    image = tf.switch_case(choice, [lambda r=r: decode_at(r) for r in JPEG_RATIOS])
    return finish(image, pre)


def _decode_other(data: tf.Tensor) -> tf.Tensor:
    """A PNG, WebP, GIF or BMP file's bytes as (H, W, 3) uint8; first frame of an animation."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode(path: tf.Tensor) -> tf.Tensor:
    """An image file as (H, W, 3) uint8 at full size, JPEGs with the accurate DCT as ``load``."""
    data = tf.io.read_file(path)
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                   lambda: _decode_other(data))


def load(path: tf.Tensor, pre: Preprocess) -> tf.Tensor:
    """An image file to a preprocessed float32 (S, S, 3) image; first frame of an animation."""
    data = tf.io.read_file(path)
    return tf.cond(tf.io.is_jpeg(data), lambda: _decode_jpeg(data, pre),
                   lambda: preprocess(_decode_other(data), pre))


def augment(image: tf.Tensor, aug: Augment, seed: tf.Tensor) -> tf.Tensor:
    """One random variant of a preprocessed image (stateless: the same seed, the same variant)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    size = tf.shape(image)[:2]
    if aug.zoom:
        scale = tf.random.stateless_uniform([], seeds[0], 1 - aug.zoom, 1.0)
        crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
        image = tf.image.stateless_random_crop(image, tf.concat([crop, [3]], 0), seeds[1])
        image = tf.image.resize(image, size)
    if aug.brightness:
        image = tf.image.stateless_random_brightness(image, aug.brightness * 255.0, seeds[2])
    if aug.contrast:
        image = tf.image.stateless_random_contrast(image, 1 - aug.contrast, 1 + aug.contrast,
                                                   seeds[3])
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    return tf.clip_by_value(image, 0.0, 255.0)


def make_dataset(paths, targets=None, pre: Preprocess = Preprocess(), batch_size: int = 32,
                 augmentation: Augment | None = None, shuffle: bool = False, seed: int = 0,
                 cache: bool | str = True, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of (images, targets) from image files.

    Without `targets` each image's target is its row number, so a caller can tell which files
    were skipped: an image that fails to decode is dropped with a warning, never the whole epoch.
    `cache` is True (memory), a file prefix (disk) or False. `drop_remainder` keeps every batch
    full, which replicas of a tf.distribute strategy need to split it evenly.
    """
    paths = [str(p) for p in paths]
    targets = np.arange(len(paths)) if targets is None else np.asarray(targets)
    if len(targets) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
    ds = tf.data.Dataset.from_tensor_slices((paths, targets))
    ds = ds.map(lambda p, t: (tf.cast(tf.round(load(p, pre)), tf.uint8), t),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:  # still uint8: a quarter of float32's memory in the shuffle buffer
        ds = ds.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    if augmentation is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
        ds = ds.map(lambda pair, s: (augment(tf.cast(pair[0], tf.float32), augmentation, s),
                                     pair[1]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    # One cast per batch, not per image: per-image casts made cached epochs op-bound.
    ds = ds.map(lambda images, t: (tf.cast(images, tf.float32), t))
    return ds.prefetch(tf.data.AUTOTUNE)


def load_images(paths, pre: Preprocess = Preprocess(), batch_size: int = 64):
    """All images as one float32 array plus the row numbers that decoded (others are skipped)."""
    images, rows = [], []
    for batch, index in make_dataset(paths, pre=pre, batch_size=batch_size, cache=False):
        images.append(batch.numpy())
        rows.append(index.numpy())
    if not images:
        return np.zeros((0, pre.img_size, pre.img_size, 3), np.float32), np.zeros(0, int)
    return np.concatenate(images), np.concatenate(rows)
