"""How good generated streets are, in numbers (cityclf.gan's measures).

The Fréchet distance here is NOT the Inception FID of the GAN literature, and its values cannot
be compared with published FIDs: it is the same formula on the 1280-d pooled embeddings of the
offline MobileNetV2 (ImageNet weights, cityclf.backbones), the network behind the project's
classifiers. Real and generated images are both taken at the GAN's size (the real ones through
the training pipeline's preprocessing) and enlarged alike to MobileNetV2's 224 px, so the
distance measures what the GAN gets wrong, not the detail its size cannot hold.

The distance of two finite samples is biased upwards, the more so the fewer images (about 45
held-out images per city on the demo, in 1280 dimensions): it is only meaningful beside its
floor, two halves of the real training images of each city, measured at the same number of
images. The untrained generator's distance is the ceiling.
"""
from __future__ import annotations

import keras
import numpy as np

from .lite import resize
from .runs import Run
from .weights import EMBEDDING_SIZE

CHUNK = 64


def embed_images(images: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) RGB 0..255 images of any size -> (n, 1280) float64 raw MobileNetV2
    embeddings, enlarged to 224 px as the pipeline enlarges. The network is the photo check's
    (cityclf.ood: MobileNetV2 in LiteRT, converted once per cityclf home, already there in
    any home that trained a classifier); its L2-normalisation is left out, as FID leaves it."""
    from .ood import GATE_SIZE, gate_network
    network = gate_network()
    out = np.zeros((len(images), EMBEDDING_SIZE))
    for start in range(0, len(images), CHUNK):
        chunk = [resize(np.asarray(image, np.float32), GATE_SIZE)
                 for image in images[start:start + CHUNK]]
        out[start:start + len(chunk)] = network.predict_proba(
            np.clip(np.stack(chunk), 0, 255))[:, :EMBEDDING_SIZE]
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two samples of embeddings (rows):
    |μa - μb|² + tr Σa + tr Σb - 2 tr (Σa Σb)^½.

    The trace of the square root is computed exactly from the samples: the non-zero eigenvalues
    of Σa Σb are the squared singular values of Ac Bcᵀ / √((na-1)(nb-1)) (Ac, Bc centred), so
    it is their sum, an SVD of an na × nb matrix instead of a 1280 × 1280 matrix square root
    (exact, and never complex from round-off)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Fréchet distance needs two or more images on each side, "
                         f"not {len(a)} and {len(b)}")
    ac, bc = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    cross = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt(na * nb)
    value = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum(ac * ac) / na + np.sum(bc * bc) / nb
             - 2 * cross)
    return float(max(value, 0.0))


def summary(per_city: dict[str, float]) -> dict:
    """{"mean": mean over cities, "per_city": {...}} as run.json records a distance or a top-1."""
    values = [v for v in per_city.values() if v is not None]
    return {"mean": float(np.mean(values)) if values else None,
            "per_city": {city: None if v is None else float(v) for city, v in per_city.items()}}


def city_distances(fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray,
                   real_labels: np.ndarray, classes: list[str]) -> dict:
    """summary() of the Fréchet distance between each city's generated and real embeddings
    (cities with fewer than two images on a side are left out)."""
    per_city = {}
    for i, city in enumerate(classes):
        f, r = fake[fake_labels == i], real[real_labels == i]
        if len(f) >= 2 and len(r) >= 2:
            per_city[city] = frechet_distance(f, r)
    return summary(per_city)


def halves(labels: np.ndarray, n_per_city: dict[int, int],
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random sets of rows with up to n_per_city[c] rows of each city c each: the
    floor compares them, at the held-out sample's size."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label, n in n_per_city.items():
        rows = rng.permutation(np.flatnonzero(labels == label))
        n = min(n, len(rows) // 2)
        first.append(rows[:n])
        second.append(rows[n:2 * n])
    return np.concatenate(first).astype(int), np.concatenate(second).astype(int)


def classifier_top1(run: Run, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """summary() of a classifier run's top-1 on `images` (RGB 0..255, any size) of each city,
    each image through the run's own preprocessing, as a photo would be. `labels` index
    `classes` (the GAN's cities), which the run must know."""
    from .inference import best_predictor, prepare_image, run_preprocess
    missing = sorted(set(classes) - set(run.classes))
    if missing:
        raise ValueError(f"run {run.id} does not know {', '.join(missing)}")
    pre, predictor = run_preprocess(run), best_predictor(run)
    prepared = np.stack([prepare_image(np.asarray(image, np.uint8), pre) for image in images])
    answers = np.asarray(run.classes)[predictor.predict_proba(prepared).argmax(1)]
    truth = np.asarray(classes)[labels]
    return summary({city: float(np.mean(answers[truth == city] == city))
                    for city in classes if (truth == city).any()})


class DistanceLog(keras.callbacks.Callback):
    """After every epoch of GAN training: the Fréchet distance of each city's generated images
    to its held-out real ones (a row of the history file, `frechet` in the logs Keras shows and
    TensorBoard keeps), and a grid of samples with fixed noise (samples/, and TensorBoard)."""

    def __init__(self, make_images, real: np.ndarray, real_labels: np.ndarray, classes: list[str],
                 steps_per_epoch: int, history, samples, writer):
        super().__init__()
        self.make_images, self.real, self.real_labels = make_images, real, real_labels
        self.classes, self.steps_per_epoch = classes, steps_per_epoch
        self.history, self.samples, self.writer = history, samples, writer

    def measure(self) -> dict:
        fake = embed_images(self.make_images(self.real_labels))
        return city_distances(fake, self.real_labels, self.real, self.real_labels, self.classes)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf
        step = (epoch + 1) * self.steps_per_epoch
        distances = self.measure()
        logs["frechet"] = np.nan if distances["mean"] is None else distances["mean"]
        self.history(step, {k: float(v) for k, v in logs.items()}, distances)
        grid = self.samples(step)
        with self.writer.as_default(step=step):
            for city, value in distances["per_city"].items():
                tf.summary.scalar(f"frechet/{city}", value)
            tf.summary.image("samples (a row per city)", grid[None])
        self.writer.flush()
