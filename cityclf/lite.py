"""Prediction without TensorFlow: a run's verified LiteRT model fed by numpy preprocessing.

Importing TensorFlow takes about 5 s here, and a forward pass of the fast path a few ms, so a
command that answers one photo spends nearly all its time loading a library it hardly uses. This
module answers the way ``inference.predict_files`` does (PIL decoding, ``pipeline.preprocess``,
the run's LiteRT model, its "none of these cities" gate) with nothing but numpy, PIL and LiteRT.

It is used only where it has been shown to give TensorFlow's answers: ``fast.ensure_fast`` runs
this module's preprocessing beside ``pipeline.preprocess`` on the run's own test photos and
records the outcome in fast.json (``numpy_ok``). Anything else (no such record, test-time
augmentation, a forest, a gate whose network is not converted yet) returns None and the caller
takes the TensorFlow path. Nothing here may import tensorflow or keras, directly or through
another cityclf module (cityclf.ood, which gives the gate's verdicts, included):
tests/test_cli_unix.py checks.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from .images import ImageError, load_rgb
from .runs import Run

# An equirectangular 360° panorama is exactly 2:1; squashed into a square it shows no street a
# model has seen. Its forward view (the middle, where the camera pointed) is a 90° x 67.5° crop
# about the horizon, close to an ordinary 4:3 photo, which also leaves out the rig's footer.
PANORAMA_ASPECT, PANORAMA_TOLERANCE = 2.0, 0.02
GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's
CHUNK = 32  # photos per forward pass: bounds memory for a folder of frames, as in inference


# ------------------------------------------------------------------------------ preprocessing

def view_window(height: int, width: int, crop_bottom: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of what the model sees, computed in float32 as
    pipeline.view_window computes it, so that both cut the same rows and columns."""
    h, w = np.float32(height), np.float32(width)
    if abs(w / h - np.float32(PANORAMA_ASPECT)) <= np.float32(PANORAMA_TOLERANCE):
        view_h, view_w = w * np.float32(3) / np.float32(16), w / np.float32(4)
        window = ((h - view_h) / np.float32(2), (w - view_w) / np.float32(2), view_h, view_w)
    else:
        window = (0, 0, h * np.float32(1 - crop_bottom), w)
    top, left, height, width = (int(np.float32(v)) for v in window)  # truncation, as a cast
    return max(top, 0), max(left, 0), max(height, 1), max(width, 1)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of TensorFlow's ``area`` resize: the share of each output pixel's
    box that each input pixel covers."""
    scale = n_in / n_out
    starts = np.arange(n_out)[:, None] * scale
    pixels = np.arange(n_in)[None]
    overlap = np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts)
    return np.clip(overlap, 0, None) / scale


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of TensorFlow's antialiased bilinear resize (scale_and_translate
    with a triangle kernel, widened by the shrink factor when shrinking), rows summing to 1."""
    scale = n_out / n_in
    widen = max(1.0, 1 / scale)
    centres = (np.arange(n_out)[:, None] + 0.5) / scale
    weights = np.maximum(0.0, 1 - np.abs(np.arange(n_in)[None] + 0.5 - centres) / widen)
    return weights / weights.sum(1, keepdims=True)


def _shrink_first_axis(weights: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``weights @ image`` along the first axis, reading only each output pixel's few input
    pixels (a kernel's width), which makes a 12-megapixel photo a matter of milliseconds."""
    nonzero = weights != 0
    first = nonzero.argmax(1)
    span = int((weights.shape[1] - nonzero[:, ::-1].argmax(1) - first).max())
    out = np.zeros((len(weights),) + image.shape[1:], np.float32)
    for step in range(span):
        index = np.minimum(first + step, weights.shape[1] - 1)
        share = np.where(first + step < weights.shape[1],
                         weights[np.arange(len(weights)), index], 0).astype(np.float32)
        out += share.reshape((-1,) + (1,) * (image.ndim - 1)) * image[index]
    return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, C) image to (size, size, C) float32 as pipeline.finish resizes: area
    averaging when shrinking both sides, antialiased bilinear otherwise."""
    height, width = image.shape[:2]
    weights = _area_weights if height >= size and width >= size else _triangle_weights
    rows = _shrink_first_axis(weights(height, size), image)  # (size, W, C)
    return _shrink_first_axis(weights(width, size), rows.swapaxes(0, 1)).swapaxes(0, 1)


def preprocess(image: np.ndarray, img_size: int, crop_bottom: float = 0.0,
               grayscale: bool = False) -> np.ndarray:
    """A decoded (H, W, 3) uint8 image as the model's float32 (S, S, 3) input in 0..255: the
    numpy twin of pipeline.preprocess (keyword arguments: a run's ``preprocess`` settings, so a
    setting this function does not know is a TypeError, never silently ignored)."""
    top, left, height, width = view_window(image.shape[0], image.shape[1], crop_bottom)
    image = image[top:top + height, left:left + width]
    if grayscale:  # grey first, as TensorFlow does; resized once, then repeated (the same)
        grey = sum(image[..., c] * GREY_WEIGHTS[c] for c in range(3))
        return np.repeat(np.clip(resize(grey[..., None], img_size), 0.0, 255.0), 3, axis=2)
    return np.clip(resize(image, img_size), 0.0, 255.0)


# ------------------------------------------------------------------------------ prediction

def lean_predictor(run: Run):
    """The run's fast predictor when fast.json vouches for both the LiteRT model and numpy
    preprocessing for its current model.keras; None otherwise (the caller uses TensorFlow,
    which also builds or upgrades the record)."""
    from . import fast
    info = fast.read_fast_info(run)
    if info is None or not info.ok or not info.numpy_ok:
        return None
    try:
        if _sha256(run.path / "model.keras") != info.keras_sha256:
            return None  # a new model: its record is stale
        flatbuffer = (run.path / fast.FAST_MODEL).read_bytes()
        if hashlib.sha256(flatbuffer).hexdigest() != info.tflite_sha256:
            return None
        return fast.FastPredictor(flatbuffer)
    except (OSError, fast.FastPathError):
        return None


def _lean_gate(run: Run):
    """(True, the run's gate or None) when its verdicts can be given without TensorFlow;
    (False, None) when the gate's network still has to be converted (by TensorFlow)."""
    from . import ood
    if (run.path / ood.GATE_FILE).exists() and not ood.gate_network_file().is_file():
        return False, None
    return True, ood.load_gate(run)


def top_cities(probs: np.ndarray, classes: list[str], top: int) -> list[tuple[str, float]]:
    """The `top` most probable cities, best first, as (city, probability) pairs."""
    order = np.argsort(probs)[::-1][:top]
    return [(classes[j], float(probs[j])) for j in order]


def combine_views(probabilities: np.ndarray) -> np.ndarray:
    """(..., N_VIEWS, C) probabilities of each view -> (..., C): their mean.

    Not the mean log-probability that combines the photos of a place
    (metrics.combine_probabilities): crops of one photo are not independent evidence, so one
    crop that cuts off the telling detail should not veto a city. Measured, the two agree within
    0.4 points of top-1 (bench/tta.py prints both).
    """
    return np.asarray(probabilities).mean(axis=-2)


def answer_files(predictor, gate, paths, prepare, classes: list[str], top: int):
    """One result dict per path (an unreadable file gets an `error`) and the read ones'
    probabilities, one row each: the loop both prediction paths share (cityclf.inference with
    TensorFlow, `predict` below without).

    `prepare` turns a decoded photo into its views, (V, S, S, 3): one view, or several crops
    whose probabilities are averaged (test-time augmentation, cityclf.tta). Each read result has
    its `top` cities, `ms` per photo and, with a `gate`, its "none of these cities" verdict
    `ood`, judged on the first view (what plain prediction sees).
    """
    results, where, probabilities, verdicts, pending, seconds = [], [], [], [], [], 0.0

    def flush():
        nonlocal seconds
        start = time.perf_counter()
        views = predictor.predict_proba(np.concatenate(pending))
        seconds += time.perf_counter() - start
        probabilities.extend(combine_views(
            np.asarray(views).reshape(len(pending), -1, len(classes))))
        if gate is not None:
            verdicts.extend(gate.assess(np.stack([stack[0] for stack in pending])))
        pending.clear()

    for path in paths:
        results.append({"path": str(path)})
        try:
            image = load_rgb(path)
        except ImageError as err:
            results[-1]["error"] = str(err)
            continue
        pending.append(prepare(image))
        where.append(len(results) - 1)
        if len(pending) == CHUNK:
            flush()
    if pending:
        flush()
    probabilities = np.asarray(probabilities).reshape(len(where), len(classes))
    for n, i in enumerate(where):
        results[i]["top"] = top_cities(probabilities[n], classes, top)
        results[i]["ms"] = round(1000 * seconds / len(where), 2)
        if verdicts:
            results[i]["ood"] = verdicts[n]
    return results, probabilities


def predict(run: Run, paths, top: int = 5, same_place: bool = False):
    """What ``inference.predict_files`` returns (``predict_place`` with `same_place`), or None
    when this run cannot be answered without TensorFlow."""
    predictor = lean_predictor(run)
    if predictor is None:
        return None
    usable, gate = _lean_gate(run)
    if not usable:
        return None
    settings = run.info["preprocess"]
    results, probabilities = answer_files(predictor, gate, paths,
                                          lambda image: preprocess(image, **settings)[None],
                                          run.classes, top)
    if not same_place:
        return results
    from .metrics import combine_probabilities
    place = (top_cities(combine_probabilities(probabilities), run.classes, top)
             if len(probabilities) else [])
    return {"images": results, "top": place, "n_images": len(probabilities)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
