"""Test-time augmentation: several views of each photo, one answer.

A model that saw a street slightly cropped or shifted should still name its city; averaging its
answers over a few crops evens out what any one framing happens to show or cut off. The views
are the whole frame and crops of it, never mirror images: a mirrored street drives on the other
side of the road, which is another city. The run's dashboard crop comes first, so no view shows
the dashboard, and each view then goes through the rest of the run's preprocessing (grey, resize).
Views are cut from the decoded photo, not from the model's small input, so a crop keeps the
detail of the original.

The cost is one forward pass per view. The gain is not guaranteed: for the demo's MobileNetV2
head (trained on whole frames, without augmentation) top-1 moved by -0.008 on its test split and
by +0.045 and +0.015 on two synthetic datasets it had never seen, for 6x the model's work
(bench/tta.py). Measure it on your own data before turning it on by default.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from .lite import combine_views
from .pipeline import Preprocess, decode, finish, view_window

# Side of a crop, as a fraction of the frame's. Of 0.875, 0.9 and 0.95, 0.9 did best on two
# synthetic datasets the run had never seen (top-1 +0.045 and +0.015 over no TTA).
SCALE = 0.9
# (scale, top, left): the crop's size and where it sits, 0 = at the top / left edge, 1 = at the
# bottom / right edge. The first view is the whole frame, what prediction without TTA sees.
VIEWS = ((1.0, 0.5, 0.5), (SCALE, 0.5, 0.5),
         (SCALE, 0.0, 0.0), (SCALE, 0.0, 1.0), (SCALE, 1.0, 0.0), (SCALE, 1.0, 1.0))
N_VIEWS = len(VIEWS)
BATCH_IMAGES = 16  # photos per forward pass in evaluate: 16 × 6 views at 224 px, 58 MB as float32


def views(image, pre: Preprocess) -> tf.Tensor:
    """A decoded (H, W, 3) uint8 photo as its (N_VIEWS, S, S, 3) float32 model inputs.

    The crops are cut from what pipeline.preprocess would show the model (the frame without its
    dashboard, or a panorama's forward view), and finished (grey, resize) as it does.
    """
    image = tf.convert_to_tensor(image)
    top, left, height, width = tf.unstack(view_window(tf.shape(image)[0], tf.shape(image)[1],
                                                      pre.crop_bottom))
    image = image[top:top + height, left:left + width]
    size = tf.cast(tf.stack([height, width]), tf.float32)
    out = []
    for scale, at_top, at_left in VIEWS:
        crop = tf.maximum(1, tf.cast(tf.round(size * scale), tf.int32))
        start = tf.cast(tf.round((size - tf.cast(crop, tf.float32)) * (at_top, at_left)),
                        tf.int32)
        out.append(finish(image[start[0]:start[0] + crop[0], start[1]:start[1] + crop[1]], pre))
    return tf.stack(out)


combine = combine_views  # the views' one answer (defined TF-free, in cityclf.lite)


def predict_paths(predictor, paths, pre: Preprocess, batch_size: int = BATCH_IMAGES):
    """Every view's probabilities for image files, decoded and cut on all cores by tf.data.

    Returns ((n, N_VIEWS, C) probabilities, the row numbers of `paths` that decoded (the others
    are skipped with a warning, as in pipeline.load_images), seconds spent in the model).
    """
    rows = np.arange(len(paths))
    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], rows))
    # Rounded to uint8 as pipeline.make_dataset does, so the first view is what plain
    # evaluation sees (photos at least twice the input size excepted: those it decodes smaller).
    ds = ds.map(lambda p, i: (tf.cast(tf.round(views(decode(p), pre)), tf.uint8), i),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True).batch(batch_size).prefetch(1)
    probabilities, kept, seconds = [], [], 0.0
    for batch, index in ds:
        batch = batch.numpy().astype(np.float32)
        start = time.perf_counter()
        flat = predictor.predict_proba(batch.reshape((-1,) + batch.shape[2:]))
        seconds += time.perf_counter() - start
        probabilities.append(np.asarray(flat).reshape(len(batch), N_VIEWS, -1))
        kept.append(index.numpy())
    if not probabilities:
        return np.zeros((0, N_VIEWS, predictor.n_classes), np.float32), np.zeros(0, int), seconds
    return np.concatenate(probabilities), np.concatenate(kept), seconds
