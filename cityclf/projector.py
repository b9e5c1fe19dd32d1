"""A 2-D map of a dataset's MobileNetV2 embeddings: TensorBoard's projector, as a table to plot.

The embeddings are the ones the demo's transfer runs cache (same backbone name, same 160 px
preprocessing), so after training the map costs no forward pass. Similar images land close
together, which shows at a glance whether cities (or scene types) separate.
"""
from __future__ import annotations

import base64
from functools import lru_cache
from io import BytesIO

import keras
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from .backbones import mobilenet_v2
from .datasets import Dataset
from .embeddings import embed
from .images import ImageError, load_rgb
from .pipeline import Preprocess

EMBEDDING_BACKBONE = "mobilenet_v2-imagenet"  # the name `cityclf train` caches embeddings under
EMBEDDING_PREPROCESS = Preprocess(160)        # the size the scene tagger was fitted at
METHODS = ("pca", "tsne")
TSNE_PCA_DIMS = 50  # t-SNE on a PCA reduction: the usual, much faster start


@lru_cache(maxsize=1)
def imagenet_model() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """MobileNetV2 up to its embedding, plus the ImageNet classifier's weights and bias."""
    full = mobilenet_v2((EMBEDDING_PREPROCESS.img_size,) * 2 + (3,), include_top=True)
    backbone = keras.Model(full.input, full.get_layer("embedding").output)
    weights, bias = full.get_layer("classifier.fc").get_weights()
    return backbone, weights, bias


def imagenet_embeddings(dataset: Dataset, paths,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 1280-d embeddings of `paths` (cached on disk) and a mask of the images that decoded."""
    return embed(imagenet_model()[0], EMBEDDING_BACKBONE, dataset.id, paths, EMBEDDING_PREPROCESS,
                 progress=progress)


def imagenet_probabilities(vectors: np.ndarray) -> np.ndarray:
    """The 1000 ImageNet class probabilities of embeddings, from the classifier they came with."""
    _, weights, bias = imagenet_model()
    logits = vectors @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def embedding_map(dataset: Dataset, method: str = "pca", sample: int = 2000, seed: int = 0,
                  progress: bool = True) -> pd.DataFrame:
    """path, city, x, y (and scene when tagged) for up to `sample` images, sampled per seed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    from .scenes import attach_scenes  # scenes uses this module's embeddings
    manifest = attach_scenes(dataset.manifest, dataset)
    if len(manifest) > sample:
        manifest = manifest.sample(sample, random_state=seed)
    vectors, ok = imagenet_embeddings(dataset, manifest["path"], progress)
    extra = ["scene"] if "scene" in manifest else []
    table = manifest.loc[ok, ["path", "city"] + extra].reset_index(drop=True)
    vectors = vectors[ok]
    if len(table) < 3:
        xy = np.zeros((len(table), 2))
    elif method == "tsne":
        vectors = PCA(min(TSNE_PCA_DIMS, *vectors.shape), random_state=seed).fit_transform(vectors)
        xy = TSNE(2, perplexity=min(30.0, (len(table) - 1) / 3), init="pca",
                  random_state=seed).fit_transform(vectors)
    else:
        xy = PCA(2, random_state=seed).fit_transform(vectors)
    return table.assign(x=xy[:, 0], y=xy[:, 1])[["path", "city", "x", "y"] + extra]


def thumbnail_uri(path: str, size: int = 64) -> str:
    """A small JPEG as a data URI (for plotly hover images); empty when the file cannot be read."""
    try:
        image = Image.fromarray(load_rgb(path))
    except ImageError:
        return ""
    image.thumbnail((size, size))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
