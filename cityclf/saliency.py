"""Where in a photo the model looked: Grad-CAM, occlusion sensitivity, and an overlay to show them.

Grad-CAM needs the Keras model (it follows gradients into a convolutional feature map) and works
whether that map is in the model itself (LeNet) or in a backbone nested inside it (transfer
models). Occlusion needs only a ``predict_fn(images) -> probabilities``, so it works with any
model, including the fast LiteRT predictor that makes its hundreds of forward passes cheap.
Images are float RGB 0..255 at the model's input size, as ``inference.prepare_image`` makes them.
"""
from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf

GREY = 127.5


def grad_cam(model: keras.Model, image: np.ndarray, label: int | None = None,
             layer: str | None = None) -> np.ndarray:
    """(H, W) heatmap in 0..1: how much each region of the feature map raised ``label``'s
    probability (the predicted class by default).

    ``layer`` names the feature map, at any nesting depth; by default the last layer with a
    spatial output: the last convolutional block's map, just before the model flattens or
    pools it globally.
    """
    target = _find_layer(model, layer) if layer else _last_spatial_layer(model)
    if target is None and layer:
        raise ValueError(f"{model.name} has no layer named {layer!r}")
    if target is None or len(target.output.shape) != 4:
        raise ValueError(f"Grad-CAM needs a layer with a spatial (4-D) output; "
                         f"{layer or model.name} has none")
    forward = _activation_and_output(model, target)
    batch = tf.convert_to_tensor(np.asarray(image, np.float32)[None])
    with tf.GradientTape() as tape:
        activation, probabilities = forward(batch)
        if label is None:
            label = int(tf.argmax(probabilities[0]))
        score = probabilities[0, label]
    gradients = tape.gradient(score, activation)[0]
    weights = tf.reduce_mean(gradients, axis=(0, 1))  # one importance per channel
    cam = tf.nn.relu(tf.tensordot(activation[0], weights, axes=1)).numpy()
    height, width = image.shape[:2]
    cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    peak = cam.max()
    return cam / peak if peak > 0 else np.zeros_like(cam)


def occlusion(predict_fn, image: np.ndarray, label: int | None = None, patch: int | None = None,
              stride: int | None = None, batch_size: int = 32) -> np.ndarray:
    """(H, W) map of how much ``label``'s probability drops when a grey square hides each pixel
    (averaged over the squares covering it; negative where hiding helps).

    ``patch`` defaults to 1/7 of the image side and ``stride`` to half the patch: 169 forward
    passes per image, which the fast predictor does in 1-1.5 s at 224 px here.
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    patch = patch or max(1, min(height, width) // 7)
    stride = stride or max(1, patch // 2)
    base = predict_fn(image[None])[0]
    label = int(np.argmax(base)) if label is None else label
    corners = [(top, left) for top in _starts(height, patch, stride)
               for left in _starts(width, patch, stride)]
    drops = []
    for first in range(0, len(corners), batch_size):
        chunk = corners[first:first + batch_size]
        occluded = np.repeat(image[None], len(chunk), axis=0)
        for copy, (top, left) in zip(occluded, chunk):
            copy[top:top + patch, left:left + patch] = GREY
        drops.extend(base[label] - predict_fn(occluded)[:, label])
    total = np.zeros((height, width), np.float64)
    covered = np.zeros((height, width), np.float64)
    for (top, left), drop in zip(corners, drops):
        total[top:top + patch, left:left + patch] += drop
        covered[top:top + patch, left:left + patch] += 1
    return (total / np.maximum(covered, 1)).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with a jet-coloured heatmap blended over it, as RGB uint8 for display.

    The heatmap is scaled so its maximum is red; negative values (occlusion that helped) show
    as nothing.
    """
    image = np.clip(np.asarray(image, np.float32), 0, 255)
    height, width = image.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, np.float32), (width, height))
    heat = np.clip(heat, 0, None)
    if heat.max() > 0:
        heat = heat / heat.max()
    coloured = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET),
                            cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * image + alpha * coloured, 0, 255))


def _starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one side, the last flush with the edge so every pixel is covered."""
    starts = list(range(0, max(1, length - patch + 1), stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def _last_spatial_layer(model: keras.Model):
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            found = _last_spatial_layer(layer)
            if found is not None:
                return found
        elif not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4:
            return layer
    return None


def _find_layer(model: keras.Model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _find_layer(layer, name)
            if found is not None:
                return found
    return None


def _contains(model: keras.Model, target) -> bool:
    return any(layer is target or (isinstance(layer, keras.Model) and _contains(layer, target))
               for layer in model.layers)


def _activation_and_output(model: keras.Model, target):
    """A function images -> (``target``'s output, ``model``'s output), whatever the nesting.

    A layer inside a nested model is not connected to the outer model's input, so the outer graph
    is cut around the nested model's call: before it, the nested model split the same way, after.
    """
    if any(layer is target for layer in model.layers):
        split = keras.Model(model.input, [target.output, model.outputs[0]])
        return lambda images: split(images, training=False)
    child = next(layer for layer in model.layers
                 if isinstance(layer, keras.Model) and _contains(layer, target))
    # A nested model's own .input/.output belong to its inner graph; where it is called in the
    # outer graph is only recorded in its inbound node (Keras has no public accessor for that).
    if len(child._inbound_nodes) != 1:
        raise ValueError(f"Grad-CAM needs {child.name} to be called exactly once in {model.name}")
    call = child._inbound_nodes[0]
    before = keras.Model(model.input, call.input_tensors[0])
    after = keras.Model(call.output_tensors[0], model.outputs[0])
    inner = _activation_and_output(child, target)

    def forward(images):
        activation, features = inner(before(images, training=False))
        return activation, after(features, training=False)
    return forward
