"""Explanations: which parts of a photo pushed the model towards (or away from) a city.

Three methods behind one cached call, ``explain_cached``: LIME (the ``lime`` package: superpixels
switched off at random, a weighted linear surrogate fitted to the answers), occlusion (a grey
square slid over the photo) and Grad-CAM (the gradients of a neural network's last feature map).
LIME and occlusion are model-agnostic: the model comes in as a plain ``predict(batch) -> probs``,
so a forest, a Keras network or the fast LiteRT predictor are explained the same way.

LIME's cost is its forward passes. Its defaults (1000 samples on quickshift superpixels, batches
of 10, through ``keras.Model.predict``) take about 38 s a photo here; ``LIME_SETTINGS`` with the
fast predictor take under 3 s and are no less stable (figures: ``bench/explain.py``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries, quickshift, slic

from . import config, saliency, zoo
from .images import load_rgb
from .inference import best_predictor, load_predictor, prepare_image, run_preprocess
from .runs import Run, get_run

SUPPORT_COLOUR = np.array([40, 200, 60], np.float32)
OPPOSE_COLOUR = np.array([230, 40, 40], np.float32)
METHODS = {"lime": "LIME", "gradcam": "Grad-CAM", "occlusion": "occlusion"}
# LIME's own defaults, and ours (chosen by speed and stability in bench/explain.py).
LIME_DEFAULTS = {"num_samples": 1000, "segmentation": "quickshift", "batch_size": 10}
LIME_SETTINGS = {"num_samples": 300, "segmentation": "slic", "batch_size": 50}
PNG_WIDTH = 320  # px of each half of the picture explain_file writes
PNG_TITLE_PX = 28  # px of the title strip above it
PNG_LEGENDS = {  # what the colours of each method's picture mean, for the PNG's title
    "lime": "LIME: green supports, red opposes",
    "gradcam": "Grad-CAM: red where features raised it most",
    "occlusion": "occlusion: red where hiding the image lowers it most",
}


def _quickshift(image: np.ndarray) -> np.ndarray:
    # LIME's own default segmentation, exactly: its seed never reaches scikit-image, which
    # renamed the argument (rng), so skimage's default rng=42 is what LIME's users get.
    return quickshift(image, kernel_size=4, max_dist=200, ratio=0.2, rng=42)


def _slic(image: np.ndarray) -> np.ndarray:
    # About 12 regular superpixels (SLIC's grid at 224 px): few enough for LIME's 300 samples to
    # rank them as stably as its 1000 samples rank quickshift's ~30 (bench/explain.py).
    return slic(image, n_segments=20, compactness=10, start_label=0)


SEGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "quickshift": _quickshift, "slic": _slic}


def segment(image: np.ndarray, segmentation: str = "quickshift") -> np.ndarray:
    """Superpixel labels 0..n-1 of an RGB 0..255 image; deterministic, so LIME runs with
    different seeds explain the same superpixels.

    Segmenters read float images as 0..1, so the image goes in as uint8, as LIME's users pass it.
    Labels are renumbered without gaps: LIME takes the n labels to be exactly 0..n-1.
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {segmentation!r}; "
                         f"choose one of: {', '.join(SEGMENTATIONS)}")
    labels = SEGMENTATIONS[segmentation](np.clip(image, 0, 255).astype(np.uint8))
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def _enlarge(image: np.ndarray, width: int | None) -> np.ndarray:
    """RGB uint8, resized to `width` px wide (keeping the aspect) when a width is given."""
    picture = np.clip(image, 0, 255).astype(np.uint8)
    if not width:
        return picture
    height = round(width * picture.shape[0] / picture.shape[1])
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))


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

    def overlay(self, image: np.ndarray, width: int | None = None, n: int = 3,
                alpha: float = 0.6) -> np.ndarray:
        """The image with its `n` most supporting superpixels tinted green and `n` most opposing
        ones red, each outlined and tinted as strongly as its weight (the strongest at `alpha`),
        so that a region that barely counts does not look like one that decides (RGB uint8).

        `width` enlarges the picture for display before drawing, so outlines stay sharp.
        """
        picture = _enlarge(image, width)
        height, width = picture.shape[:2]
        segments = self.segments[np.ix_(np.arange(height) * self.segments.shape[0] // height,
                                        np.arange(width) * self.segments.shape[1] // width)]
        strongest = float(np.abs(self.weights).max()) or 1.0
        out = picture.astype(np.float32)
        for superpixels, colour in ((self.supporting(n), SUPPORT_COLOUR),
                                    (self.opposing(n), OPPOSE_COLOUR)):
            for superpixel in superpixels:
                region = segments == superpixel
                strength = alpha * abs(float(self.weights[superpixel])) / strongest
                out[region] = (1 - strength) * out[region] + strength * colour
                out[find_boundaries(region, mode="inner")] = colour
        return out.astype(np.uint8)


@dataclass
class Heatmap:
    """Grad-CAM's or occlusion's answer for one label: how much each pixel mattered."""

    label: int
    values: np.ndarray  # (h, w); higher: the region raised the label's probability more
    seconds: float
    cached: bool = False

    def overlay(self, image: np.ndarray, width: int | None = None) -> np.ndarray:
        """The image with the heatmap in jet colours over it (RGB uint8), `width` px wide."""
        return saliency.overlay(_enlarge(image, width), self.values)


def explain_lime(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
                 label: int | None = None, num_samples: int = LIME_SETTINGS["num_samples"],
                 segmentation: str = LIME_SETTINGS["segmentation"],
                 batch_size: int = LIME_SETTINGS["batch_size"], seed: int = 0,
                 progress: Callable[[float], None] | None = None) -> Explanation:
    """Explain `predict_fn`'s answer for `label` (default: its top label) on one image.

    `image` is (h, w, 3) RGB 0..255 as the model takes it; `predict_fn` maps (n, h, w, 3)
    batches to (n, n_classes) probabilities. `seed` drives LIME's random samples (the
    segmentation does not depend on it). `progress` gets the fraction done.
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
        segmentation_fn=lambda picture: segment(picture, segmentation), **targets)
    label = result.top_labels[0] if label is None else label
    weights = np.zeros(result.segments.max() + 1, np.float32)
    for superpixel, weight in result.local_exp[label]:
        weights[superpixel] = weight
    return Explanation(int(label), result.segments.astype(np.int32), weights, float(result.score),
                       time.perf_counter() - start)


def jaccard(first, second) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets agree completely (1.0)."""
    first, second = set(first), set(second)
    return len(first & second) / len(first | second) if first | second else 1.0


def stability(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
              seeds=(0, 1), top: int = 5, **settings) -> float:
    """How little LIME's answer depends on its random samples: the mean Jaccard overlap of the
    `top` supporting superpixels between runs with these seeds (every pair; same segmentation).

    1.0: every seed picks the same superpixels. Too few samples for the number of superpixels
    make the surrogate's weights, and so the picked regions, vary from seed to seed.
    """
    tops = [explain_lime(image, predict_fn, seed=seed, **settings).supporting(top)
            for seed in seeds]
    return float(np.mean([jaccard(a, b) for a, b in itertools.combinations(tops, 2)]))


def _no_gradcam(run: Run) -> str | None:
    """Why Grad-CAM cannot explain this run's model, or None when it can."""
    model = run.info.get("model")
    spec = zoo.MODELS.get(model)
    if spec is not None and spec.kind != "keras":
        return f"{model} is not a neural network"
    if model == "fusion":
        return "a fusion has one last convolutional layer per backbone, side by side"
    return None


def methods_for(run: Run) -> list[str]:
    """The methods that can explain this run's model."""
    return [method for method in METHODS if method != "gradcam" or _no_gradcam(run) is None]


def explain(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
            label: int | None = None, method: str = "lime", keras_model=None,
            progress: Callable[[float], None] | None = None,
            **settings) -> Explanation | Heatmap:
    """Explain `label` (default: `predict_fn`'s top label) by `method`.

    Grad-CAM follows gradients, so it also needs `keras_model` (the network `predict_fn` runs);
    `settings` go to the method's function (`explain_lime`, `saliency.occlusion` or
    `saliency.grad_cam`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "lime":
        return explain_lime(image, predict_fn, label, progress=progress, **settings)
    if method == "gradcam" and keras_model is None:
        raise ValueError("Grad-CAM follows a neural network's gradients, and this model is not "
                         "a neural network: use LIME or occlusion")
    image = np.asarray(image, np.float32)
    start = time.perf_counter()
    if label is None:
        label = int(np.argmax(predict_fn(image[None])[0]))
    if method == "gradcam":
        values = saliency.grad_cam(keras_model, image, label, **settings)
    else:
        values = saliency.occlusion(predict_fn, image, label, **settings)
    return Heatmap(label, values, time.perf_counter() - start)


def cache_path(run_id: str, image: np.ndarray, label: int | None, method: str,
               settings: dict) -> Path:
    """Where the explanation of this run, image (exact pixels), label, method and settings is."""
    digest = hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes())
    digest.update(json.dumps({"label": label, "method": method, **settings},
                             sort_keys=True).encode())
    return config.cache_dir() / "explanations" / run_id / f"{digest.hexdigest()[:20]}.npz"


def explain_cached(run_id: str, image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
                   label: int | None = None, method: str = "lime", keras_model=None,
                   progress: Callable[[float], None] | None = None,
                   **settings) -> Explanation | Heatmap:
    """`explain`, answered from the disk cache when this exact request was made before."""
    if method == "lime":
        settings = {**LIME_SETTINGS, **settings}  # one cache entry, however the settings are spelt
    path = cache_path(run_id, image, label, method, settings)
    kind = Explanation if method == "lime" else Heatmap
    try:
        with np.load(path, allow_pickle=False) as saved:
            return kind(**{name: saved[name] if saved[name].ndim else saved[name].item()
                           for name in saved.files}, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not computed yet, a damaged file or an older format: compute it (again)
    result = explain(image, predict_fn, label, method, keras_model, progress, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")  # sessions may race
    np.savez_compressed(partial, **{field.name: getattr(result, field.name)
                                    for field in fields(result) if field.name != "cached"})
    os.replace(partial, path)
    return result


def explain_file(run: Run | str, path: str | Path, method: str = "lime",
                 out: str | Path | None = None, city: str | None = None, **settings) -> dict:
    """Explain a run's answer for one image file (`cityclf explain`), or its probability of
    `city`, with the dashboard's predictor and cache. Writes a PNG (`out`, default
    ``<image name>.<method>.png`` in the current folder): a title saying what is explained,
    over the image as the model sees it beside the explanation.
    """
    run = run if isinstance(run, Run) else get_run(run)
    if method == "gradcam" and _no_gradcam(run):
        raise ValueError(f"Grad-CAM cannot explain run {run.id}: {_no_gradcam(run)}; "
                         "use lime or occlusion")
    if city is not None and city not in run.classes:
        raise ValueError(f"run {run.id} knows no city {city!r}; it knows: "
                         f"{', '.join(run.classes)}")
    image = prepare_image(load_rgb(path), run_preprocess(run))
    predictor = best_predictor(run)
    keras_model = load_predictor(run).model if method == "gradcam" else None
    probabilities = predictor.predict_proba(image[None])[0]
    label = int(np.argmax(probabilities)) if city is None else run.classes.index(city)
    result = explain_cached(run.id, image, predictor.predict_proba, label, method, keras_model,
                            **settings)
    out = Path(out or f"{Path(path).stem}.{method}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{run.classes[label]} {probabilities[label]:.0%} - {PNG_LEGENDS[method]} - "
             f"{run.info.get('name') or run.id}")
    _titled(np.hstack([_enlarge(image, PNG_WIDTH), result.overlay(image, width=PNG_WIDTH)]),
            title).save(out, format="PNG")
    return {"run": run.id, "image": str(path), "method": method, "label": label,
            "city": run.classes[label], "probability": float(probabilities[label]),
            "seconds": round(float(result.seconds), 3), "cached": result.cached, "out": str(out)}


def _titled(picture: np.ndarray, title: str) -> Image.Image:
    """`picture` under a white strip with `title` in it, so a shared PNG explains itself."""
    from PIL import ImageDraw, ImageFont
    strip = PNG_TITLE_PX
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + strip), "white")
    canvas.paste(Image.fromarray(picture), (0, strip))
    ImageDraw.Draw(canvas).text((8, strip // 2), title, fill="black", anchor="lm",
                                font=ImageFont.load_default(size=strip // 2))
    return canvas
