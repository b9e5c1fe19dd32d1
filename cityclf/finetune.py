"""Cheap fine-tuning: the top of a backbone trained on cached features from its frozen bottom.

Fine-tuning the top ~40 layers of MobileNetV2 is worth 5.6 points of top-1 on real photos, but
through the image pipeline every epoch decodes every photo and runs the whole network. The
bottom of the network stays frozen (and its BatchNorm layers are frozen everywhere), so its
output for an image never changes: it is computed once, in the same pass as the embedding, kept
as float16, and every epoch only runs the top blocks at 1/16 of the input resolution. The cut is
just before the backbone's last downsampling stage; for MobileNetV2 the part above it is 40
layers, the amount measured. The price: no image augmentation while fine-tuning this way.
"""
from __future__ import annotations

import time

import keras
import numpy as np
from tqdm.auto import tqdm

from .pipeline import Preprocess, make_dataset


def cut_layer(backbone: keras.Model) -> keras.layers.Layer:
    """The first layer of the backbone's last downsampling stage (its expansion convolution)."""
    strided = [layer for layer in backbone.layers
               if isinstance(layer, keras.layers.DepthwiseConv2D) and layer.strides == (2, 2)]
    if not strided:
        raise ValueError(f"{backbone.name} has no strided depthwise convolution to cut before")
    block = strided[-1].name.rsplit(".depthwise", 1)[0]
    return backbone.get_layer(f"{block}.expand.conv")


def split(backbone: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(bottom, top): ``top(bottom(x)) == backbone(x)``, sharing the backbone's layers, so
    training ``top`` trains the backbone itself."""
    cut = cut_layer(backbone).input
    return keras.Model(backbone.input, cut), keras.Model(cut, backbone.output)


def make_trainable(top: keras.Model) -> int:
    """Unfreeze every layer of ``top`` but BatchNorm (ImageNet statistics stay). Returns how
    many layers now train."""
    count = 0
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        count += bool(layer.weights) and layer.trainable
    return count


def cut_features(backbone: keras.Model, paths, pre: Preprocess, batch_size: int = 32,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One pass over the images: (features at the cut as float16, embeddings, readable mask,
    images per second). Both come out side by side as one flat vector, so that many images go
    through LiteRT, as embeddings do (cityclf.embeddings)."""
    from .embeddings import FAST_MIN_IMAGES
    from .fast import fast_backbone
    bottom, _ = split(backbone)
    shape = tuple(bottom.output.shape[1:])
    both = keras.Model(backbone.input, keras.layers.Concatenate()(
        [keras.layers.Flatten()(bottom.output), backbone.output]))
    fast = fast_backbone(both, f"{backbone.name}-cut") if len(paths) >= FAST_MIN_IMAGES else None
    cut_size = int(np.prod(shape))
    features = np.zeros((len(paths), *shape), np.float16)
    embeddings = np.zeros((len(paths), backbone.output.shape[-1]), np.float32)
    ok = np.zeros(len(paths), bool)
    start = time.perf_counter()
    with tqdm(total=len(paths), desc=f"features of {backbone.name}", unit="img",
              disable=not progress) as bar:
        for images, rows in make_dataset(paths, pre=pre, batch_size=batch_size, cache=False):
            flat = (fast.predict_proba(images.numpy()) if fast
                    else np.asarray(both.predict_on_batch(images)))
            rows = rows.numpy()
            features[rows] = flat[:, :cut_size].reshape(-1, *shape)
            embeddings[rows], ok[rows] = flat[:, cut_size:], True
            bar.update(len(rows))
    speed = len(paths) / max(1e-9, time.perf_counter() - start)
    return features, embeddings, ok, speed


class Deadline(keras.callbacks.Callback):
    """Stop before an epoch that would end after ``deadline`` (a time.monotonic() value)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline, self.started, self.stopped_early = deadline, 0.0, False

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() + (time.monotonic() - self.started) > self.deadline:
            self.model.stop_training, self.stopped_early = True, True


def stacked_model(top: keras.Model, head: keras.Model, tuned: int, part_sizes: list[int]):
    """The trainable model of a fine-tuning: cut features of part ``tuned`` through ``top``,
    the other parts' (fixed) embeddings beside it in their usual order, then the head."""
    cut = keras.Input(top.input.shape[1:], name="cut_features")
    others = [keras.Input((size,), name=f"embedding_{i}")
              for i, size in enumerate(part_sizes) if i != tuned]
    pieces = list(others)
    pieces.insert(tuned, top(cut))
    joined = keras.layers.Concatenate()(pieces) if len(pieces) > 1 else pieces[0]
    return keras.Model([cut, *others], head(joined))
