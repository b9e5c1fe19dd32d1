"""ImageNet backbones as Keras 3 functional models, ported exactly from offline torch weights.

MobileNetV2 (torchvision) and EfficientNet-Lite0/1/2 (TensorFlow's official checkpoints, as
converted to torch by ml-illustrated) share one skeleton: a stride-2 3×3 stem, inverted-residual
blocks, a 1×1 head to 1280 channels, global average pooling and a 1000-way classifier. They differ
only in the numbers and conventions kept in ``_Architecture``, so one builder makes them all.

Every model takes float32 RGB in [0, 255] and preprocesses inside itself. Layer names say which
part a layer belongs to: ``preprocess``, ``backbone.<part>.<conv|bn|relu6|pad|add>``, then
``embedding`` (the pooled 1280-d vector, the end of the backbone), then ``classifier.*``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import keras
import numpy as np
from keras import layers

from cityclf import weights as offline_weights
from cityclf.torchfile import WeightsFormatError
from cityclf.weights import EMBEDDING_SIZE, IMAGENET_CLASSES  # noqa: F401 - re-exported
MIN_INPUT_SIZE = 32  # five stride-2 stages: smaller inputs would shrink to nothing
# The square input size each backbone was trained and evaluated at (its default input_shape).
NATIVE_SIZE = {"mobilenet_v2": 224, "efficientnet_lite0": 224, "efficientnet_lite1": 240,
               "efficientnet_lite2": 260}


@dataclass(frozen=True)
class _Architecture:
    # (expansion, output channels, repeats, stride of the first repeat, depthwise kernel)
    stages: tuple[tuple[int, int, int, int, int], ...]
    # "torch": kernel//2 zeros on every side (torchvision); "same": TensorFlow's SAME, which pads
    # stride-2 convolutions more at the bottom/right (the TF-trained EfficientNet-Lite).
    padding: str
    bn_epsilon: float
    mean: tuple[float, float, float]  # on the [0, 255] scale
    std: tuple[float, float, float]
    # torch module names: stem and head as (conv, bn); blocks via (index, expands) -> part names
    stem: tuple[str, str]
    head: tuple[str, str]
    classifier: str
    block_names: Callable[[int, bool], dict[str, tuple[str, str]]]


def _torchvision_block_names(index: int, expands: bool) -> dict[str, tuple[str, str]]:
    prefix = f"features.{index + 1}.conv"
    if expands:
        return {"expand": (f"{prefix}.0.0", f"{prefix}.0.1"),
                "depthwise": (f"{prefix}.1.0", f"{prefix}.1.1"),
                "project": (f"{prefix}.2", f"{prefix}.3")}
    return {"depthwise": (f"{prefix}.0.0", f"{prefix}.0.1"), "project": (f"{prefix}.1", f"{prefix}.2")}


def _efficientnet_block_names(index: int, expands: bool) -> dict[str, tuple[str, str]]:
    prefix = f"_blocks.{index}"
    return {"expand": (f"{prefix}._expand_conv", f"{prefix}._bn0"),
            "depthwise": (f"{prefix}._depthwise_conv", f"{prefix}._bn1"),
            "project": (f"{prefix}._project_conv", f"{prefix}._bn2")}


ARCHITECTURES = {
    "mobilenet_v2": _Architecture(
        stages=((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3),
                (6, 96, 3, 1, 3), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)),
        padding="torch",
        bn_epsilon=1e-5,
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        stem=("features.0.0", "features.0.1"),
        head=("features.18.0", "features.18.1"),
        classifier="classifier.1",
        block_names=_torchvision_block_names,
    ),
    # Lite = EfficientNet-B0 without squeeze-excite, with ReLU6, fixed stem/head, and the
    # "inception-style" (x - 127) / 128 input scaling chosen for quantisation.
    "efficientnet_lite0": _Architecture(
        stages=((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)),
        padding="same",
        bn_epsilon=1e-3,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        stem=("_conv_stem", "_bn0"),
        head=("_conv_head", "_bn1"),
        classifier="_fc",
        block_names=_efficientnet_block_names,
    ),
}


def _lite_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """Lite0's stages scaled as TensorFlow's efficientnet_lite_builder scales Lite1–4.

    Channels are multiplied by ``width`` and rounded to a multiple of 8 (never down by more than
    10 %), repeats multiplied by ``depth`` and rounded up, except in the first and the last stage:
    like the 32-channel stem and 1280-channel head, their repeats stay fixed (fix_head_stem).
    """
    stages = ARCHITECTURES["efficientnet_lite0"].stages

    def channels(count):
        rounded = max(8, int(count * width + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * count * width else rounded

    def repeats(stage, count):
        return count if stage in (0, len(stages) - 1) else math.ceil(count * depth)

    return tuple((expansion, channels(out), repeats(stage, count), stride, kernel)
                 for stage, (expansion, out, count, stride, kernel) in enumerate(stages))


ARCHITECTURES["efficientnet_lite1"] = replace(ARCHITECTURES["efficientnet_lite0"],
                                              stages=_lite_stages(width=1.0, depth=1.1))
ARCHITECTURES["efficientnet_lite2"] = replace(ARCHITECTURES["efficientnet_lite0"],
                                              stages=_lite_stages(width=1.1, depth=1.2))


def _conv_bn(x, arch: _Architecture, name: str, torch_names: tuple[str, str], mapping: dict,
             filters: int = 0, kernel: int = 1, stride: int = 1, depthwise: bool = False,
             relu6: bool = True):
    """Convolution without bias, BatchNorm, optional ReLU6: the only building block used."""
    # SAME is a no-op for 1×1 and, at stride 1, torch's kernel//2 on every side; only strided
    # torch-style convolutions need explicit symmetric padding (cheaper to pad only there).
    padding = "same"
    if arch.padding == "torch" and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    if depthwise:
        conv = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=f"{name}.conv")
    else:
        conv = layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=f"{name}.conv")
    x = layers.BatchNormalization(epsilon=arch.bn_epsilon, name=f"{name}.bn")(conv(x))
    mapping[f"{name}.conv"], mapping[f"{name}.bn"] = torch_names
    return layers.ReLU(6.0, name=f"{name}.relu6")(x) if relu6 else x


def _build(arch: _Architecture, input_shape: tuple, name: str) -> tuple[keras.Model, dict]:
    """The full classifier, plus a map from its weighted layers to torch module names."""
    if any(size is not None and size < MIN_INPUT_SIZE for size in input_shape[:2]):
        raise ValueError(f"input_shape {input_shape}: height and width must be ≥ {MIN_INPUT_SIZE}")
    mapping: dict[str, str] = {}
    inputs = keras.Input(input_shape, name="image")
    x = layers.Normalization(mean=arch.mean, variance=np.square(arch.std), name="preprocess")(inputs)
    x = _conv_bn(x, arch, "backbone.stem", arch.stem, mapping, 32, kernel=3, stride=2)
    in_channels, index = 32, 0
    for expansion, channels, repeats, first_stride, kernel in arch.stages:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            names, block = arch.block_names(index, expansion != 1), f"backbone.block{index}"
            shortcut = x
            if expansion != 1:
                x = _conv_bn(x, arch, f"{block}.expand", names["expand"], mapping,
                             in_channels * expansion)
            x = _conv_bn(x, arch, f"{block}.depthwise", names["depthwise"], mapping,
                         kernel=kernel, stride=stride, depthwise=True)
            x = _conv_bn(x, arch, f"{block}.project", names["project"], mapping, channels, relu6=False)
            if stride == 1 and in_channels == channels:
                x = layers.Add(name=f"{block}.add")([shortcut, x])
            in_channels, index = channels, index + 1
    x = _conv_bn(x, arch, "backbone.head", arch.head, mapping, EMBEDDING_SIZE)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    x = layers.Dropout(0.2, name="classifier.dropout")(x)
    x = layers.Dense(len(IMAGENET_CLASSES), name="classifier.fc")(x)
    mapping["classifier.fc"] = arch.classifier
    outputs = layers.Activation("softmax", name="classifier.softmax")(x)
    return keras.Model(inputs, outputs, name=name), mapping


def _keras_arrays(layer, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """Take one torch module's tensors out of ``state`` in the layer's layout and order."""
    def take(suffix):
        try:
            return state.pop(f"{prefix}.{suffix}")
        except KeyError:
            raise WeightsFormatError(f"the torch weights lack {prefix}.{suffix} for {layer.name}") from None

    if isinstance(layer, layers.DepthwiseConv2D):
        return [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, h, w) -> (h, w, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]  # (O, I, h, w) -> (h, w, I, O)
    if isinstance(layer, layers.BatchNormalization):
        return [take(suffix) for suffix in ("weight", "bias", "running_mean", "running_var")]
    return [take("weight").T, take("bias")]  # Dense: torch stores (out, in)


def _assign_torch_weights(model: keras.Model, mapping: dict[str, str], state: dict[str, np.ndarray]):
    """Copy a torch state dict into the model, tensor by tensor, checking every shape."""
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    for layer_name, prefix in mapping.items():
        layer = model.get_layer(layer_name)
        arrays = _keras_arrays(layer, state, prefix)
        for array, variable in zip(arrays, layer.weights):
            if tuple(array.shape) != tuple(variable.shape):
                raise WeightsFormatError(
                    f"{prefix} gives {layer.name} shape {array.shape}, the layer needs {variable.shape}"
                )
        layer.set_weights(arrays)
    if state:
        raise WeightsFormatError(f"torch tensors left without a layer: {sorted(state)[:5]}")


def _load_imagenet(model: keras.Model, mapping: dict[str, str]) -> None:
    """Load from the converted cache, or convert the torch file and write the cache."""
    cache = offline_weights.cache_path(model.name)
    if cache.is_file():
        try:
            model.load_weights(cache)
            return
        except Exception:  # a cache is derived data: a damaged or stale one is simply rebuilt
            pass
    _assign_torch_weights(model, mapping, offline_weights.torch_state_dict(model.name))
    offline_weights.save_cache(model, model.name)


def _create(name: str, input_shape: tuple | None, include_top: bool, weights: str | None) -> keras.Model:
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    input_shape = input_shape or (NATIVE_SIZE[name], NATIVE_SIZE[name], 3)
    model, mapping = _build(ARCHITECTURES[name], tuple(input_shape), name)
    if weights == "imagenet":
        _load_imagenet(model, mapping)
    if include_top:
        return model
    return keras.Model(model.input, model.get_layer("embedding").output, name=f"{name}_backbone")


def mobilenet_v2(input_shape=None, include_top=True, weights="imagenet") -> keras.Model:
    """torchvision's MobileNetV2: [0, 255] RGB in (``input_shape`` defaults to the native size),
    1000 probabilities out, or the 1280-d pooled embedding with ``include_top=False``."""
    return _create("mobilenet_v2", input_shape, include_top, weights)


def efficientnet_lite0(input_shape=None, include_top=True, weights="imagenet") -> keras.Model:
    """EfficientNet-Lite0 from TensorFlow's checkpoint, same contract as ``mobilenet_v2``."""
    return _create("efficientnet_lite0", input_shape, include_top, weights)


def efficientnet_lite1(input_shape=None, include_top=True, weights="imagenet") -> keras.Model:
    """EfficientNet-Lite1 (deeper than Lite0, native 240 px), same contract as ``mobilenet_v2``."""
    return _create("efficientnet_lite1", input_shape, include_top, weights)


def efficientnet_lite2(input_shape=None, include_top=True, weights="imagenet") -> keras.Model:
    """EfficientNet-Lite2 (deeper and 10 % wider, native 260 px), same contract as ``mobilenet_v2``."""
    return _create("efficientnet_lite2", input_shape, include_top, weights)


BACKBONES = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0,
             "efficientnet_lite1": efficientnet_lite1, "efficientnet_lite2": efficientnet_lite2}


def decode_top(probs, k: int = 5) -> list[tuple[int, str, float]]:
    """The k most probable ImageNet classes of one image as (index, name, probability)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(IMAGENET_CLASSES),):
        raise ValueError(f"expected one image's {len(IMAGENET_CLASSES)} probabilities, "
                         f"got shape {probs.shape}")
    top = np.argsort(probs)[::-1][:k]
    return [(int(i), IMAGENET_CLASSES[i], float(probs[i])) for i in top]
