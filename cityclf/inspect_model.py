"""Looking inside a trained network: its convolutional layers, their feature maps and kernels.

Transfer members nest their backbone as a model inside the model; layers are found inside nested
models that take the image itself, which every zoo backbone does. Images for display are plain
uint8 arrays, so any front end can show them.
"""
from __future__ import annotations

import keras
import numpy as np

from .zoo import ZooModel

CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
GAP = 2  # pixels between tiles
GAP_VALUE = 255  # white, so tiles stand apart on a light page
MAX_CHANNELS = 8  # input channels drawn per kernel: enough to see patterns, few enough to read


def not_a_network(predictor: ZooModel) -> str | None:
    """Why there is nothing inside `predictor` to look at, or None for a Keras network."""
    if predictor.model is not None:
        return None
    return (f"{predictor.name} is not a neural network: a random forest votes on hand-made "
            "features (grey pixels, edge histograms), so it has no layers, feature maps or "
            "kernels to show.")


def _takes_image(container: keras.Model, index: int) -> bool:
    """Whether the layer at `index` is fed the container's input image directly."""
    return all(isinstance(layer, keras.layers.InputLayer) for layer in container.layers[:index])


def _walk(model: keras.Model):
    """(container, layer) for every convolution, shallow to deep, nested models included."""
    for index, layer in enumerate(model.layers):
        if isinstance(layer, keras.Model) and _takes_image(model, index):
            yield from _walk(layer)
        elif isinstance(layer, CONV_TYPES):
            yield model, layer


def conv_layers(model: keras.Model) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, (h, w, channels) of its output) per convolutional layer, shallow to deep."""
    return [(layer.name, tuple(layer.output.shape[1:])) for _, layer in _walk(model)]


def _find(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.layers.Layer]:
    for container, layer in _walk(model):
        if layer.name == layer_name:
            return container, layer
    raise ValueError(f"{model.name} has no convolutional layer {layer_name!r}")


def feature_maps(model: keras.Model, layer_name: str, image: np.ndarray) -> np.ndarray:
    """(h, w, channels): the layer's output for one (s, s, 3) RGB 0..255 image."""
    container, layer = _find(model, layer_name)
    upto = keras.Model(container.input, layer.output)
    batch = np.asarray(image, np.float32)[None]
    return keras.ops.convert_to_numpy(upto(batch, training=False))[0]


def kernels(model: keras.Model, layer_name: str) -> np.ndarray:
    """The layer's weights as (kh, kw, in_channels, filters); depthwise: (kh, kw, channels, 1)."""
    _, layer = _find(model, layer_name)
    return keras.ops.convert_to_numpy(layer.kernel)


def _grid(tiles: np.ndarray, columns: int, scale: int) -> np.ndarray:
    """Tiles (n, h, w[, 3]) in 0..1, enlarged `scale` times, as one uint8 image with gaps."""
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = tiles.shape[:3]
    columns = min(columns, n)
    rows = -(-n // columns)
    out = np.full((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP, *tiles.shape[3:]),
                  GAP_VALUE, np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (h + GAP), (i % columns) * (w + GAP)
        out[top:top + h, left:left + w] = np.round(tile * 255)
    return out


def _scale_for(size: int, target: int) -> int:
    return max(1, round(target / size))


def _kernel_style(model: keras.Model, layer: keras.layers.Layer) -> str:
    """How a layer's kernels are best drawn: "rgb", "depthwise" or "per_channel"."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    first = next(_walk(model))[1]
    return "rgb" if layer is first and layer.kernel.shape[2] == 3 else "per_channel"


# ----------------------------------------------------------------------- what the page shows
# One small image per channel or filter, so the page can lay them out in a row that wraps to
# the column's width (a single wide strip does not fit a narrow column), and ranked for the
# chosen image instead of "the first 32".

def most_active(maps: np.ndarray, n: int = 32) -> np.ndarray:
    """The `n` channels of `maps` (h, w, channels) with the highest mean activation for this
    image, most active first: deep layers have hundreds of channels and the first 32 are no
    more telling than any others, while the most active ones are what the image excites."""
    means = np.asarray(maps, np.float32).reshape(-1, maps.shape[-1]).mean(axis=0)
    return np.argsort(-means, kind="stable")[:n]


def feature_map_tiles(maps: np.ndarray, channels, tile: int = 96) -> list[np.ndarray]:
    """One uint8 greyscale image per channel in `channels`, each stretched from its own minimum
    (black) to maximum (white) and enlarged to about `tile` px without blurring."""
    scale = _scale_for(maps.shape[0], tile)
    out = []
    for channel in channels:
        values = np.asarray(maps[..., channel], np.float32)
        low, span = values.min(), values.max() - values.min()
        normalised = (values - low) / span if span > 0 else np.zeros_like(values)
        out.append(np.round(normalised * 255).astype(np.uint8)
                   .repeat(scale, axis=0).repeat(scale, axis=1))
    return out


def is_pointwise(model: keras.Model, layer_name: str) -> bool:
    """Whether the layer is a 1×1 convolution: it mixes channels and sees no neighbourhood, so
    its "kernels" are single numbers, better read as a matrix than as 1-pixel squares."""
    _, layer = _find(model, layer_name)
    return (not isinstance(layer, keras.layers.DepthwiseConv2D)
            and tuple(layer.kernel.shape[:2]) == (1, 1))


def mixing_weights(model: keras.Model, layer_name: str, filters) -> np.ndarray:
    """(len(filters), in_channels): how much each input channel adds to each chosen output
    channel of a 1×1 convolution."""
    if not is_pointwise(model, layer_name):
        raise ValueError(f"{layer_name!r} is not a 1×1 convolution: its kernels are pictures, "
                         "not mixing weights")
    return kernels(model, layer_name)[0, 0][:, list(filters)].T


def kernel_images(model: keras.Model, layer_name: str, filters, max_channels: int = MAX_CHANNELS,
                  tile: int = 48) -> list[np.ndarray]:
    """One uint8 image per filter in `filters`, scaled to the filter's own largest weight:
    mid-grey is 0, brighter positive, darker negative. An RGB first layer's filter is one colour
    tile; a depthwise filter one grey tile; any other filter a small grid of grey tiles, one per
    input channel (the first `max_channels`)."""
    _, layer = _find(model, layer_name)
    style = _kernel_style(model, layer)
    weights = keras.ops.convert_to_numpy(layer.kernel)
    kh, kw = weights.shape[:2]
    scale = _scale_for(max(kh, kw), tile)
    out = []
    for f in filters:
        kernel = weights[:, :, f, 0] if style == "depthwise" else weights[..., f]
        shown = 0.5 + kernel / (2 * max(float(np.abs(kernel).max()), 1e-12))
        if style == "per_channel":
            tiles = np.moveaxis(shown[:, :, :max_channels], -1, 0)
            out.append(_grid(tiles, min(4, len(tiles)), scale))
        else:
            out.append(np.round(shown.repeat(scale, axis=0).repeat(scale, axis=1) * 255)
                       .astype(np.uint8))
    return out


def kernel_note(model: keras.Model, layer_name: str, shown: int,
                max_channels: int = MAX_CHANNELS) -> str:
    """What `kernel_images` (or, for a 1×1 layer, the mixing matrix) shows, in words."""
    _, layer = _find(model, layer_name)
    kh, kw, inputs, filters = layer.kernel.shape
    style = _kernel_style(model, layer)
    count = inputs if style == "depthwise" else filters
    which = f"its {count}" if shown >= count else f"{shown} of its {count}"
    if style == "rgb":
        return f"{which} filters of {kh}×{kw} px as RGB tiles: the colours and edges it seeks"
    if style == "depthwise":
        return f"{which} depthwise {kh}×{kw} filters, one per channel"
    if is_pointwise(model, layer_name):
        return (f"a 1×1 convolution: each of its {filters} filters is a weighted sum of the "
                f"{inputs} input channels, drawn as one row per filter ({shown} shown)")
    return (f"{which} filters, each a grid of {kh}×{kw} tiles, one per input channel (the "
            f"first {min(inputs, max_channels)} of {inputs})")
