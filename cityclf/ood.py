""""None of these cities": an out-of-distribution verdict for every prediction.

A classifier answers with one of its cities whatever it is shown, so a coffee cup comes out
"amsterdam 99 %". The gate asks two questions its answer cannot, with one network shared by
every run whatever its model (forests and Keras alike): the offline ImageNet MobileNetV2 at
224 px, run through LiteRT, giving each photo its 1280-d pooled embedding and its 1000 ImageNet
probabilities.

- *Is it a street photo at all?* Its ImageNet belief is compared with those of the run's own
  training photos: the Bhattacharyya coefficient (sum of sqrt(p·q), 1 for identical beliefs) to
  its k-th most similar training photo. Mass on a fixed list of "street classes" would be easier
  to explain, but the classes a run's photos actually get depend on the photos (cartoon streets
  get "container ship" and "scoreboard"), and any list also holds classes that other things get
  (a rocket is half "obelisk"). Photos scoring below all but 1 % of the validation photos are
  "not street".
- *Is it like the photos the run was trained on?* The cosine distance of its L2-normalised
  embedding to the k-th nearest of a seeded sample of training embeddings (Sun et al. 2022,
  "Out-of-distribution detection with deep nearest neighbors"): no density model to fit, no
  Gaussian assumption (Mahalanobis) on features of photos that cluster by sequence. Photos
  farther than all but 5 % of the validation photos are "unfamiliar".

Thresholds are order statistics of validation photos' scores (never references themselves) with
split-conformal prediction's finite-sample correction: when a new photo is exchangeable with
them, the chance of a false alarm is at most the rate asked for, even for a few dozen validation
photos (then the threshold is their extreme). Frames of one sequence are alike, so on a small
dataset a whole sequence can fall on one side.

``fit_gate`` writes ``ood.npz`` (the reference sample, float16) and ``ood.json`` (thresholds,
counts, the npz's sha256) into the run folder; ``load_gate`` reads them.

    gate = load_gate(run)          # None for runs trained before gates existed
    gate.assess(images)            # [{"verdict": "ok" | "not_street" | "unfamiliar", ...}, ...]
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from . import config
from .fileio import write_bytes_atomic, write_json_atomic
from .lite import resize
from .weights import EMBEDDING_SIZE, IMAGENET_CLASSES

if TYPE_CHECKING:  # verdicts need no TensorFlow (cityclf.lite predicts without it)
    from .pipeline import Preprocess

log = logging.getLogger(__name__)

GATE_FILE, REFERENCE_FILE = "ood.json", "ood.npz"
VERSION = 1             # of the files' contents; a run with another version has no usable gate
GATE_SIZE = 224         # the gate network's input size, whatever the run's
NEIGHBOURS = 10         # k-th nearest reference (Sun et al.: k = 10 for 12,800 ImageNet references)
MAX_REFERENCE = 5000    # training photos kept as references (seeded sample)
MAX_CALIBRATION = 2000  # validation photos the thresholds are set on (seeded sample)
NOT_STREET_RATE = 0.01  # at most this share of photos like the validation ones is called
UNFAMILIAR_RATE = 0.05  # "not street" / "unfamiliar" (when they are exchangeable: conformal)
NAMED_BELIEF = 0.25     # an ImageNet class this probable is named in the message
SEED = 0
CHUNK = 256             # images resized and compared at a time: memory stays flat for big batches

MESSAGES = {
    "ok": "Like the street photos this model was trained on.",
    "unfamiliar": "Unlike the photos this model was trained on: treat the city as a guess.",
}


# ------------------------------------------------------------------------------ the network

def gate_network_file() -> Path:
    return config.cache_dir() / "weights" / f"ood-gate-mobilenet_v2-{GATE_SIZE}-v{VERSION}.tflite"


def _build_network(path: Path) -> None:
    """MobileNetV2 with its ImageNet top as one LiteRT model whose single output is the pooled
    embedding followed by the 1000 probabilities (one output: no ambiguity about output order)."""
    import keras

    from .backbones import mobilenet_v2
    from .fast import to_tflite
    full = mobilenet_v2((GATE_SIZE, GATE_SIZE, 3), include_top=True)
    both = keras.layers.Concatenate(name="gate")([full.get_layer("embedding").output, full.output])
    flatbuffer = to_tflite(keras.Model(full.input, both, name="ood_gate"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, flatbuffer)


@lru_cache(maxsize=2)
def _runner(path: str, stamp: int):
    from .fast import FastPredictor
    return FastPredictor(Path(path).read_bytes())


def gate_network():
    """The shared gate network, converted once per cityclf home (about 15 s) and cached."""
    from .fast import FastPathError
    path = gate_network_file()
    for attempt in range(2):
        if not path.is_file():
            _build_network(path)
        try:
            return _runner(str(path), path.stat().st_mtime_ns)
        except (FastPathError, OSError):
            if attempt:
                raise
            path.unlink(missing_ok=True)  # damaged cache: convert again


def gate_outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, s, s, 3) RGB 0..255 images of any size s -> L2-normalised embeddings (n, 1280) and
    ImageNet probabilities (n, 1000), resized to the gate's 224 px as the pipeline resizes."""
    network = gate_network()
    outputs = np.zeros((len(images), EMBEDDING_SIZE + len(IMAGENET_CLASSES)), np.float32)
    for start in range(0, len(images), CHUNK):
        chunk = np.asarray(images[start:start + CHUNK], np.float32)
        if chunk.shape[1:3] != (GATE_SIZE, GATE_SIZE):
            chunk = np.stack([resize(image, GATE_SIZE) for image in chunk])
        outputs[start:start + len(chunk)] = network.predict_proba(np.clip(chunk, 0, 255))
    embeddings = outputs[:, :EMBEDDING_SIZE]
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return embeddings, np.clip(outputs[:, EMBEDDING_SIZE:], 0, 1)


def _file_outputs(paths, pre: Preprocess, progress: bool, what: str):
    """gate_outputs of image files read through the run's own preprocessing; unreadable skipped."""
    from .pipeline import make_dataset
    embeddings, probabilities = [], []
    with tqdm(total=len(paths), desc=f"gate: {what}", unit="img", disable=not progress) as bar:
        for batch, _ in make_dataset(paths, pre=pre, batch_size=64, cache=False):
            vectors, probs = gate_outputs(batch.numpy())
            embeddings.append(vectors)
            probabilities.append(probs)
            bar.update(len(batch))
    if not embeddings:
        raise ValueError(f"the OOD gate found no readable {what} image")
    return np.concatenate(embeddings), np.concatenate(probabilities)


# ------------------------------------------------------------------------------ the scores

def _kth_largest(similarities: np.ndarray, k: int) -> np.ndarray:
    k = min(k, similarities.shape[1])
    return np.partition(similarities, -k, axis=1)[:, -k]


def _scores(embeddings, probabilities, reference_embeddings, reference_roots, k):
    """street_score (Bhattacharyya coefficient of ImageNet beliefs, 0..1, high = street-like)
    and distance (cosine, 0..2, high = unfamiliar) to the k-th nearest reference, per image."""
    street, distance = [], []
    for start in range(0, len(embeddings), CHUNK):
        part = slice(start, start + CHUNK)
        street.append(_kth_largest(np.sqrt(probabilities[part]) @ reference_roots.T, k))
        distance.append(1 - _kth_largest(embeddings[part] @ reference_embeddings.T, k))
    return np.concatenate(street).clip(0, 1), np.concatenate(distance).clip(0, 2)


def _conformal(scores: np.ndarray, rate: float) -> float:
    """The threshold new scores exceed with probability at most `rate` if they are exchangeable
    with `scores`: the ceil((n + 1)(1 - rate))-th smallest (the largest when n is small)."""
    n = len(scores)
    return float(np.sort(scores)[min(n, math.ceil((n + 1) * (1 - rate))) - 1])


def _sample(paths, n: int, rng) -> list[str]:
    paths = [str(p) for p in paths]
    return [paths[i] for i in sorted(rng.permutation(len(paths))[:n])]


# ------------------------------------------------------------------------------ fit and load

def fit_gate(work: Path, train_paths, val_paths, pre: Preprocess, progress: bool = True) -> dict:
    """Fit the run's gate on its own photos and write ood.npz + ood.json into `work`.

    References are a seeded sample of training photos; thresholds come from the validation
    photos' scores against them. Returns the JSON-ready summary that ood.json holds. Raises
    ValueError when no training or validation image can be read.
    """
    start, work = time.perf_counter(), Path(work)
    rng = np.random.default_rng(SEED)
    train, val = _sample(train_paths, MAX_REFERENCE, rng), _sample(val_paths, MAX_CALIBRATION, rng)
    embeddings, probabilities = _file_outputs(train, pre, progress, "training")
    val_embeddings, val_probabilities = _file_outputs(val, pre, progress, "validation")
    reference_embeddings = embeddings.astype(np.float16)
    reference_roots = np.sqrt(probabilities).astype(np.float16)
    street, distance = _scores(val_embeddings, val_probabilities, reference_embeddings.astype(
        np.float32), reference_roots.astype(np.float32), NEIGHBOURS)
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=reference_embeddings, roots=reference_roots)
    data = buffer.getvalue()
    summary = {
        "version": VERSION,
        "network": f"MobileNetV2 (offline ImageNet) at {GATE_SIZE} px via LiteRT",
        "neighbours": NEIGHBOURS,
        "street_min": round(-_conformal(-street, NOT_STREET_RATE), 6),
        "distance_max": round(_conformal(distance, UNFAMILIAR_RATE), 6),
        "not_street_rate": NOT_STREET_RATE, "unfamiliar_rate": UNFAMILIAR_RATE,
        "reference_images": len(reference_embeddings), "calibration_images": len(street),
        "seconds": round(time.perf_counter() - start, 2),
        "npz_sha256": hashlib.sha256(data).hexdigest(),
    }
    verdicts = _verdicts(street, distance, summary)
    summary["validation_verdicts"] = {name: int((verdicts == name).sum())
                                      for name in ("ok", "not_street", "unfamiliar")}
    write_bytes_atomic(work / REFERENCE_FILE, data)  # the json last: it vouches for the npz
    write_json_atomic(work / GATE_FILE, summary)
    return summary


def _verdicts(street: np.ndarray, distance: np.ndarray, info: dict) -> np.ndarray:
    return np.where(street < info["street_min"], "not_street",
                    np.where(distance > info["distance_max"], "unfamiliar", "ok"))


class Gate:
    """A run's fitted gate: verdicts for images already through the run's preprocessing."""

    def __init__(self, info: dict, embeddings: np.ndarray, roots: np.ndarray):
        self.info = info
        self._embeddings = embeddings.astype(np.float32)
        self._roots = roots.astype(np.float32)

    def assess(self, images: np.ndarray) -> list[dict]:
        """One verdict per (n, s, s, 3) RGB 0..255 image: verdict, street_score, distance and
        a one-sentence message for a user."""
        if not len(images):
            return []
        embeddings, probabilities = gate_outputs(images)
        street, distance = _scores(embeddings, probabilities, self._embeddings, self._roots,
                                   int(self.info["neighbours"]))
        return [{"verdict": str(verdict), "street_score": float(s), "distance": float(d),
                 "message": _message(str(verdict), probs)}
                for verdict, s, d, probs in zip(_verdicts(street, distance, self.info), street,
                                                distance, probabilities)]


def _message(verdict: str, probabilities: np.ndarray) -> str:
    if verdict != "not_street":
        return MESSAGES[verdict]
    top = int(np.argmax(probabilities))
    name, share = IMAGENET_CLASSES[top], f"{100 * probabilities[top]:.0f} %"
    if probabilities[top] < NAMED_BELIEF:
        return (f"Not a street photo: it looks like nothing this model was trained on "
                f"(an ImageNet classifier's best guess: {name}, {share}).")
    article = "an" if name[0].lower() in "aeiou" else "a"
    return f"Not a street photo: it looks like {article} {name} ({share})."


def load_gate(run) -> Gate | None:
    """The run's gate (a Run or a run folder), or None when it has none or its files are
    unreadable, inconsistent or from another version: predictions then come without a verdict."""
    folder = Path(getattr(run, "path", run))
    try:
        info = json.loads((folder / GATE_FILE).read_text())
        data = (folder / REFERENCE_FILE).read_bytes()
        if info.get("version") != VERSION or hashlib.sha256(data).hexdigest() != info["npz_sha256"]:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            embeddings, roots = saved["embeddings"], saved["roots"]
        if embeddings.shape[1:] != (EMBEDDING_SIZE,) or roots.shape != (
                len(embeddings), len(IMAGENET_CLASSES)) or not len(embeddings):
            return None
        for key in ("street_min", "distance_max", "neighbours"):
            float(info[key])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        gate_network()
    except Exception as err:  # noqa: BLE001 - no gate network means no verdicts, not a crash
        log.warning("the OOD gate network is unavailable (%s: %s)", err.__class__.__name__, err)
        return None
    return Gate(info, embeddings, roots)
