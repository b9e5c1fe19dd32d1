"""Backbone embeddings, computed once per image and kept on disk.

A frozen backbone gives the same embedding for an image every epoch, so computing it once makes
head training take seconds instead of minutes. The store is keyed by dataset, backbone and
preprocessing, and grows by appending (cityclf.embedstore): new or changed images are embedded,
known ones are read back, and a run that is killed keeps what it had published.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import config
from .embedstore import EmbeddingStore, StoredRows, file_key
from .pipeline import Preprocess, make_dataset

# From this many new images on, the backbone is converted to LiteRT first (seconds, cached):
# fewer are embedded faster by Keras than the conversion takes.
FAST_MIN_IMAGES = 500


def store_folder(dataset_id: str, backbone: str, pre: Preprocess) -> Path:
    return config.cache_dir() / "embeddings" / dataset_id / f"{backbone}-{pre.key()}"


def open_store(dataset_id: str, backbone: str, pre: Preprocess) -> EmbeddingStore:
    """The store of one (dataset, backbone, preprocessing); the .npz that came before it is a
    cache too, and is deleted rather than converted."""
    folder = store_folder(dataset_id, backbone, pre)
    folder.with_name(folder.name + ".npz").unlink(missing_ok=True)
    return EmbeddingStore(folder)


def embed_rows(backbone, backbone_name: str, dataset_id: str, paths, pre: Preprocess,
               batch_size: int = 32, progress: bool = True) -> tuple[StoredRows, np.ndarray]:
    """The embeddings of ``paths`` as rows to read lazily (``.read()``, ``.chunks()``, a subset
    with ``[mask]``), and a mask of which images could be read.

    The images not in the store yet are embedded and appended first. An image that fails to
    decode is not stored, so a fixed file is embedded on the next call; its row reads as zeros.
    """
    keys = [file_key(p) for p in paths]  # one stat per path: the key a row is stored under
    store = open_store(dataset_id, backbone_name, pre)
    where = store.locate(keys)
    todo = list(dict.fromkeys(k for k, w in zip(keys, where) if k is not None and w[0] < 0))
    if todo:
        from .fast import fast_backbone  # fast imports the model loaders, which import us
        fast = fast_backbone(backbone, backbone_name) if len(todo) >= FAST_MIN_IMAGES else None
        batches = make_dataset([k[0] for k in todo], pre=pre, batch_size=batch_size, cache=False)
        with store.writer() as writer, tqdm(total=len(todo), desc=f"embedding with {backbone_name}",
                                            unit="img", disable=not progress) as bar:
            for images, rows in batches:
                vectors = (fast.predict_proba(images.numpy()) if fast
                           else np.asarray(backbone.predict_on_batch(images)))
                writer.add([todo[row] for row in rows.numpy()], vectors)
                bar.update(len(images))
        store.refresh()
        where = store.locate(keys)
    rows = StoredRows(store, where)
    return rows, rows.found


def embed(backbone, backbone_name: str, dataset_id: str, paths, pre: Preprocess,
          batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``paths`` as one float32 (n, dim) array, and a mask of which images could
    be read (their rows are zero). For more rows than memory holds, use ``embed_rows``."""
    rows, ok = embed_rows(backbone, backbone_name, dataset_id, paths, pre, batch_size, progress)
    return rows.read(), ok
