"""Backbone embeddings, computed once per image and cached on disk.

A frozen backbone gives the same embedding for an image every epoch, so computing it once makes
head training take seconds instead of minutes. The cache is keyed by dataset, backbone and
preprocessing, and grows incrementally: new images are embedded, known ones are read back.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import config
from .pipeline import Preprocess, make_dataset

# From this many new images on, the backbone is converted to LiteRT first (seconds, cached):
# fewer are embedded faster by Keras than the conversion takes.
FAST_MIN_IMAGES = 500


def cache_file(dataset_id: str, backbone: str, pre: Preprocess) -> Path:
    return config.cache_dir() / "embeddings" / dataset_id / f"{backbone}-{pre.key()}.npz"


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as saved:
            return dict(zip(saved["paths"].tolist(), saved["embeddings"]))
    except (OSError, ValueError, KeyError):
        return {}


def embed(backbone, backbone_name: str, dataset_id: str, paths, pre: Preprocess,
          batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `paths` and a mask of which images could be read.

    Rows of images that fail to decode are zero and masked out; they are not cached, so a fixed
    file is embedded on the next call.
    """
    paths = [str(p) for p in paths]
    path = cache_file(dataset_id, backbone_name, pre)
    known = _read(path)
    todo = [p for p in dict.fromkeys(paths) if p not in known]
    if todo:
        from .fast import fast_backbone  # fast imports the model loaders, which import us
        fast = fast_backbone(backbone, backbone_name) if len(todo) >= FAST_MIN_IMAGES else None
        batches = make_dataset(todo, pre=pre, batch_size=batch_size, cache=False)
        with tqdm(total=len(todo), desc=f"embedding with {backbone_name}", unit="img",
                  disable=not progress) as bar:
            for images, rows in batches:
                vectors = (fast.predict_proba(images.numpy()) if fast
                           else np.asarray(backbone.predict_on_batch(images)))
                for row, vector in zip(rows.numpy(), vectors):
                    known[todo[row]] = vector
                bar.update(len(images))
    if todo and known:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # unique: runs may overlap
        np.savez(tmp, paths=np.array(list(known)), embeddings=np.stack(list(known.values())))
        os.replace(tmp, path)
    dim = len(next(iter(known.values()))) if known else 0
    ok = np.array([p in known for p in paths], dtype=bool)
    vectors = np.stack([known.get(p, np.zeros(dim, np.float32)) for p in paths]) if paths else \
        np.zeros((0, dim), np.float32)
    return vectors.astype(np.float32), ok
