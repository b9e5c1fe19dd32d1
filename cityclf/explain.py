"""LIME explanations: which superpixels of a photo pushed the model towards (or away from) a city.

Model-agnostic, like ``lime`` itself: the model comes in as a plain ``predict(batch) -> probs``
function, so a forest, a Keras network or a faster runtime can all be explained the same way.
LIME costs ``num_samples`` forward passes per image, so explanations are cached on disk per run,
image and settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries, quickshift, slic

from . import config

SUPPORT_COLOUR = np.array([40, 200, 60], np.float32)
OPPOSE_COLOUR = np.array([230, 40, 40], np.float32)


def _quickshift(image: np.ndarray, seed: int) -> np.ndarray:
    # LIME's own default segmentation, with its parameters.
    return quickshift(image, kernel_size=4, max_dist=200, ratio=0.2, rng=seed)


def _slic(image: np.ndarray, seed: int) -> np.ndarray:
    # Fewer, more regular superpixels: LIME's linear model then needs fewer samples.
    return slic(image, n_segments=50, compactness=10, start_label=0)


SEGMENTATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "quickshift": _quickshift, "slic": _slic}


def segment(image: np.ndarray, segmentation: str = "quickshift", seed: int = 0) -> np.ndarray:
    """Superpixel labels 0..n-1 of an RGB 0..255 image.

    Segmenters read float images as 0..1, so the image goes in as uint8, as LIME's users pass it.
    Labels are renumbered without gaps: LIME takes the n labels to be exactly 0..n-1.
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {segmentation!r}; "
                         f"choose one of: {', '.join(SEGMENTATIONS)}")
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    labels = SEGMENTATIONS[segmentation](pixels, seed)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


@dataclass
class Explanation:
    """LIME's answer for one label: a weight per superpixel of the image."""

    label: int
    segments: np.ndarray  # (h, w) superpixel index per pixel
    weights: np.ndarray   # (n_superpixels,) positive: supports `label`; negative: opposes it
    score: float          # R² of LIME's local linear model: how far to trust the weights
    seconds: float        # time the explanation took to compute
    cached: bool = False

    def supporting(self, n: int = 5) -> np.ndarray:
        """The `n` superpixels that raise the label's probability most."""
        order = np.argsort(-self.weights)[:n]
        return order[self.weights[order] > 0]

    def opposing(self, n: int = 5) -> np.ndarray:
        """The `n` superpixels that lower the label's probability most."""
        order = np.argsort(self.weights)[:n]
        return order[self.weights[order] < 0]

    def mask(self, n: int = 5) -> np.ndarray:
        """(h, w) int8: 1 on the top supporting superpixels, -1 on the top opposing, else 0."""
        result = np.zeros(self.segments.shape, np.int8)
        result[np.isin(self.segments, self.supporting(n))] = 1
        result[np.isin(self.segments, self.opposing(n))] = -1
        return result

    def overlay(self, image: np.ndarray, n: int = 5, width: int | None = None,
                alpha: float = 0.45) -> np.ndarray:
        """The image with supporting superpixels tinted green and opposing ones red (RGB uint8).

        `width` enlarges the picture for display before drawing, so outlines stay sharp.
        """
        mask = self.mask(n)
        picture = np.clip(image, 0, 255).astype(np.uint8)
        if width:
            height = round(width * picture.shape[0] / picture.shape[1])
            picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))
            mask = mask[np.ix_(np.arange(height) * mask.shape[0] // height,
                               np.arange(width) * mask.shape[1] // width)]
        out = picture.astype(np.float32)
        for value, colour in ((1, SUPPORT_COLOUR), (-1, OPPOSE_COLOUR)):
            region = mask == value
            out[region] = (1 - alpha) * out[region] + alpha * colour
            out[find_boundaries(region, mode="inner")] = colour
        return out.astype(np.uint8)


def explain_lime(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
                 label: int | None = None, num_samples: int = 1000,
                 segmentation: str = "quickshift", batch_size: int = 10, seed: int = 0,
                 progress: Callable[[float], None] | None = None) -> Explanation:
    """Explain `predict_fn`'s answer for `label` (default: its top label) on one image.

    `image` is (h, w, 3) RGB 0..255 as the model takes it; `predict_fn` maps (n, h, w, 3)
    batches to (n, n_classes) probabilities. The defaults are LIME's; fewer samples and SLIC's
    fewer superpixels trade some stability for speed. `progress` gets the fraction done.
    """
    from lime.lime_image import LimeImageExplainer

    image = np.asarray(image, np.float32)
    done = 0

    def predict_with_progress(batch: np.ndarray) -> np.ndarray:
        nonlocal done
        probabilities = predict_fn(batch)
        done += len(batch)
        if progress:
            progress(min(1.0, done / num_samples))
        return probabilities

    start = time.perf_counter()
    explainer = LimeImageExplainer(random_state=seed)
    targets = {"top_labels": 1} if label is None else {"labels": (label,), "top_labels": None}
    result = explainer.explain_instance(
        image, predict_with_progress, num_samples=num_samples, batch_size=batch_size,
        segmentation_fn=lambda picture: segment(picture, segmentation, seed), random_seed=seed,
        **targets)
    label = result.top_labels[0] if label is None else label
    weights = np.zeros(result.segments.max() + 1, np.float32)
    for superpixel, weight in result.local_exp[label]:
        weights[superpixel] = weight
    return Explanation(int(label), result.segments.astype(np.int32), weights, float(result.score),
                       time.perf_counter() - start)


def cache_path(run_id: str, image: np.ndarray, label: int | None, settings: dict) -> Path:
    """Where the explanation of this run, image (exact pixels), label and settings is kept."""
    digest = hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes())
    digest.update(json.dumps({"label": label, **settings}, sort_keys=True).encode())
    return config.cache_dir() / "explanations" / run_id / f"{digest.hexdigest()[:20]}.npz"


def explain_cached(run_id: str, image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
                   label: int | None = None, progress: Callable[[float], None] | None = None,
                   **settings) -> Explanation:
    """`explain_lime`, answered from the disk cache when this exact request was made before."""
    path = cache_path(run_id, image, label, settings)
    try:
        with np.load(path, allow_pickle=False) as saved:
            return Explanation(int(saved["label"]), saved["segments"], saved["weights"],
                               float(saved["score"]), float(saved["seconds"]), cached=True)
    except (OSError, ValueError, KeyError):
        pass  # not computed yet, or a damaged file: compute it (again)
    explanation = explain_lime(image, predict_fn, label, progress=progress, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")  # sessions may race
    np.savez_compressed(partial, label=explanation.label, segments=explanation.segments,
                        weights=explanation.weights, score=explanation.score,
                        seconds=explanation.seconds)
    os.replace(partial, path)
    return explanation
