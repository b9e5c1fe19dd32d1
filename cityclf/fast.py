"""Fast inference: each Keras run's model as a float32 LiteRT flatbuffer run by XNNPACK.

On this 2-core machine TensorFlow's ``model.predict`` manages about 100 MobileNetV2 images/s
(224 px) at batch 32 and takes about 55 ms for a single image; the same graph in LiteRT does
about 4x the images/s and one image in a few ms, which is what makes LIME and occlusion maps
interactive (figures: bench/inference.py). A run's fast path is built once
(``model.tflite``), checked against the Keras model on the run's own test images, and recorded
in ``fast.json``. Whenever conversion, verification or loading fails, the reason goes into
``fast.json`` and callers fall back to Keras: the fast path is an optimisation, never a
requirement. The same record says whether cityclf.lite's numpy preprocessing gives
TensorFlow's inputs on the run's photos, which lets the command line predict without
importing TensorFlow at all; so this module imports TensorFlow only where it converts or checks.

    predictor = load_fast_predictor(run) or inference.load_predictor(run)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat

import numpy as np

from . import config
from .fileio import write_bytes_atomic, write_json_atomic
from .images import ImageError, load_rgb
from .runs import Run, RunError

FAST_MODEL = "model.tflite"
FAST_INFO = "fast.json"
TOLERANCE = 1e-3  # max abs probability difference a float32 conversion must stay under
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else os.cpu_count() or 1)  # interpreters per predictor: one per usable core
MAX_CHECK_IMAGES = 256  # enough to catch a wrong conversion, few enough to keep training's end short
MAX_NUMPY_CHECK_IMAGES = 64  # of those, for numpy preprocessing (TF's eager ops: ~10 ms each)


class FastPathError(RuntimeError):
    """A fast model that cannot be used; the message says why in one line."""


@dataclass
class FastInfo:
    """What ``fast.json`` records: whether the fast path is usable, and the evidence."""

    ok: bool
    reason: str | None  # why it is not usable (None when ok)
    keras_sha256: str  # the model.keras this record is about; a new model means a new check
    tflite_sha256: str | None = None
    images: int = 0
    verified_on: str | None = None
    max_abs_diff: float | None = None
    top1_identical: bool | None = None
    keras_ms_per_image: float | None = None
    fast_ms_per_image: float | None = None
    convert_seconds: float | None = None
    created: str | None = None
    # cityclf.lite's numpy preprocessing against pipeline.preprocess, both through the fast
    # model, on the run's test photos. numpy_ok None: not checked yet (fast.json of an older
    # cityclf; ensure_fast adds it); only True lets predictions skip TensorFlow.
    numpy_ok: bool | None = None
    numpy_images: int = 0
    numpy_preprocess_max_diff: float | None = None  # grey levels, 0..255 scale
    numpy_max_abs_diff: float | None = None  # probabilities
    numpy_top1_identical: bool | None = None


def to_tflite(model) -> bytes:
    """A Keras 3 model as a float32 TFLite flatbuffer (no quantisation, so probabilities agree).

    Through a SavedModel export: the documented Keras 3 route. A concrete function converted
    directly loses the variables (the interpreter returns NaN).
    """
    import tensorflow as tf
    with tempfile.TemporaryDirectory(prefix="cityclf-export-") as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(folder).convert()


class FastPredictor:
    """LiteRT interpreters behind the zoo's ``predict_proba``: one single-threaded interpreter per
    core, each invoking its share of the images one at a time.

    On 2 cores that gives about 10 % more images/s than one 2-thread interpreter and more than
    resizing the input to the batch (both measured in bench/inference.py). A lock serialises
    callers, since an interpreter must not be used from two threads at once (the dashboard shares
    one predictor between sessions).
    """

    def __init__(self, flatbuffer: bytes, workers: int = THREADS):
        from ai_edge_litert.interpreter import Interpreter
        try:
            self._interpreters = [Interpreter(model_content=flatbuffer, num_threads=1)
                                  for _ in range(workers)]
            for interpreter in self._interpreters:
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise FastPathError(f"LiteRT cannot load the model ({err.__class__.__name__}: "
                                f"{_first_line(err)})") from None
        source, = self._interpreters[0].get_input_details()
        target, = self._interpreters[0].get_output_details()
        self._input, self._output = source["index"], target["index"]
        self.img_size = int(source["shape"][1])
        self.n_classes = int(target["shape"][-1])
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cityclf-litert")
        self._lock = threading.Lock()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(n, s, s, 3) RGB 0..255 -> (n, n_classes) probabilities, like ZooModel's."""
        images = np.asarray(images, dtype=np.float32)
        probabilities = np.empty((len(images), self.n_classes), np.float32)
        shares = np.array_split(np.arange(len(images)), len(self._interpreters))
        with self._lock:  # invoke releases the GIL, so the shares run on all cores at once
            list(self._pool.map(self._invoke, self._interpreters, shares, repeat(images),
                                repeat(probabilities)))
        return probabilities

    def _invoke(self, interpreter, share, images, probabilities) -> None:
        for i in share:
            interpreter.set_tensor(self._input, images[i][None])
            interpreter.invoke()
            probabilities[i] = interpreter.get_tensor(self._output)[0]


EMBEDDING_TOLERANCE = 1e-3  # max abs embedding difference, relative to the largest value


def fast_backbone(backbone, key: str) -> FastPredictor | None:
    """A frozen backbone through LiteRT, for embedding many images at 3-4x Keras' images/s.

    Converted once per backbone and input size into the cache, after a check against Keras on
    random images. None (callers use Keras) when conversion, the check or loading fails.
    """
    size = backbone.input_shape[1]
    path = config.cache_dir() / "fast" / f"{key}-{size}px.tflite"
    try:
        if path.is_file():
            return FastPredictor(path.read_bytes())
        flatbuffer = to_tflite(backbone)
        predictor = FastPredictor(flatbuffer)
        images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
        expected = backbone.predict(images, verbose=0)
        if np.abs(expected - predictor.predict_proba(images)).max() > \
                EMBEDDING_TOLERANCE * max(1.0, float(np.abs(expected).max())):
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, flatbuffer)
        return predictor
    except Exception:  # noqa: BLE001 - an optimisation only: Keras remains
        path.unlink(missing_ok=True)
        return None


def ensure_fast(run: Run, rebuild: bool = False) -> FastInfo | None:
    """The run's fast path, converted and verified now unless ``fast.json`` already covers its
    current model.keras. None for runs without a Keras model (the forest has nothing to convert).

    A failed attempt is recorded too and not retried on every use (conversion is deterministic
    and takes seconds); ``rebuild=True`` retries.
    """
    keras_file = run.path / "model.keras"
    if not keras_file.exists():
        return None
    keras_sha = _sha256(keras_file.read_bytes())
    recorded = read_fast_info(run)
    if recorded and recorded.keras_sha256 == keras_sha and not rebuild:
        if recorded.ok and recorded.numpy_ok is None:  # a record from before cityclf.lite
            _upgrade(run, recorded)
        return recorded
    info = _build(run, keras_sha)
    if not info.ok:
        (run.path / FAST_MODEL).unlink(missing_ok=True)
    write_json_atomic(run.path / FAST_INFO, asdict(info))
    return info


def load_fast_predictor(run: Run) -> FastPredictor | None:
    """The run's verified fast predictor, or None when callers should use Keras (the reason is
    in fast.json). Builds the fast path first for runs trained before it existed. A damaged
    model.tflite is recorded as unusable; ``ensure_fast(run, rebuild=True)`` makes a new one."""
    info = ensure_fast(run)
    if info is None or not info.ok:
        return None
    try:
        flatbuffer = (run.path / FAST_MODEL).read_bytes()
        if _sha256(flatbuffer) != info.tflite_sha256:
            raise FastPathError(f"{FAST_MODEL} differs from the verified file")
        return FastPredictor(flatbuffer)
    except (OSError, FastPathError) as err:
        info.ok, info.reason = False, f"{FAST_MODEL} unusable: {err}"
        write_json_atomic(run.path / FAST_INFO, asdict(info))
        return None


def read_fast_info(run: Run) -> FastInfo | None:
    """What fast.json says, or None if there is no readable record (so it gets rebuilt)."""
    try:
        return FastInfo(**json.loads((run.path / FAST_INFO).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _build(run: Run, keras_sha: str) -> FastInfo:
    """Convert, then compare with Keras on the run's test images; write model.tflite if agreed,
    and check numpy preprocessing with it."""
    from .inference import load_predictor
    info = FastInfo(False, None, keras_sha, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    # Whatever breaks (an op the converter lacks, a model that will not load), Keras remains.
    try:
        model = load_predictor(run).model
        start = time.perf_counter()
        flatbuffer = to_tflite(model)
        info.convert_seconds = round(time.perf_counter() - start, 2)
        predictor = FastPredictor(flatbuffer)
    except Exception as err:  # noqa: BLE001
        info.reason = f"conversion failed: {err.__class__.__name__}: {_first_line(err)}"
        return info
    try:
        images, info.verified_on, paths = _check_images(run)
        _verify(model, predictor, images, info)
    except Exception as err:  # noqa: BLE001
        info.reason = f"verification failed: {err.__class__.__name__}: {_first_line(err)}"
        return info
    info.tflite_sha256 = _sha256(flatbuffer)
    info.ok = info.max_abs_diff < TOLERANCE and info.top1_identical
    if info.ok:
        write_bytes_atomic(run.path / FAST_MODEL, flatbuffer)
        _verify_numpy(run, predictor, paths, info)
    else:
        info.reason = (f"verification failed: max abs difference {info.max_abs_diff:.2g} "
                       f"(limit {TOLERANCE:g}), top-1 identical: {info.top1_identical}")
    return info


def _verify(model, predictor: FastPredictor, images: np.ndarray, info: FastInfo) -> None:
    """Both models on the same images: their largest probability difference, top-1 agreement
    and speed go into ``info``."""
    start = time.perf_counter()
    expected = model.predict(images, batch_size=32, verbose=0)
    info.keras_ms_per_image = round(1000 * (time.perf_counter() - start) / len(images), 3)
    start = time.perf_counter()
    got = predictor.predict_proba(images)
    info.fast_ms_per_image = round(1000 * (time.perf_counter() - start) / len(images), 3)
    info.images = len(images)
    info.max_abs_diff = float(np.abs(expected - got).max())
    info.top1_identical = bool((expected.argmax(1) == got.argmax(1)).all())


def _verify_numpy(run: Run, predictor: FastPredictor, paths, info: FastInfo) -> None:
    """cityclf.lite's preprocessing beside pipeline.preprocess on the run's test photos (decoded
    by PIL, as prediction decodes them), both through the fast model: their largest input and
    probability differences and top-1 agreement go into ``info``, and ``numpy_ok`` says whether
    predictions may skip TensorFlow. Not ok without real photos to check on."""
    from . import lite
    from .inference import prepare_image, run_preprocess
    info.numpy_ok = False
    try:
        pre, theirs, ours = run_preprocess(run), [], []
        for path in _spread(paths, MAX_NUMPY_CHECK_IMAGES):
            try:
                image = load_rgb(path)
            except ImageError:
                continue
            theirs.append(prepare_image(image, pre))
            ours.append(lite.preprocess(image, **asdict(pre)))
        if not ours:
            return
        expected = predictor.predict_proba(np.stack(theirs))
        got = predictor.predict_proba(np.stack(ours))
    except Exception:  # noqa: BLE001 - only the TensorFlow-free shortcut is lost
        return
    info.numpy_images = len(ours)
    info.numpy_preprocess_max_diff = float(np.abs(np.stack(theirs) - np.stack(ours)).max())
    info.numpy_max_abs_diff = float(np.abs(expected - got).max())
    info.numpy_top1_identical = bool((expected.argmax(1) == got.argmax(1)).all())
    info.numpy_ok = info.numpy_max_abs_diff < TOLERANCE and info.numpy_top1_identical


def _upgrade(run: Run, info: FastInfo) -> None:
    """Add the numpy check to a verified record that lacks it, with the verified model.tflite
    (no conversion: a second or two of TensorFlow's eager ops, once)."""
    try:
        flatbuffer = (run.path / FAST_MODEL).read_bytes()
        if _sha256(flatbuffer) != info.tflite_sha256:
            return
        predictor = FastPredictor(flatbuffer)
    except (OSError, FastPathError):
        return  # load_fast_predictor records what is wrong with model.tflite
    try:
        paths = _check_paths(run)
    except (RunError, KeyError):
        paths = []  # nothing to check on: recorded as not ok
    _verify_numpy(run, predictor, paths, info)
    write_json_atomic(run.path / FAST_INFO, asdict(info))


def _spread(items, n: int):
    """At most `n` of `items`, evenly spread from first to last."""
    return items[np.linspace(0, len(items) - 1, min(len(items), n)).astype(int)] \
        if len(items) else items


def _check_paths(run: Run) -> np.ndarray:
    """Up to MAX_CHECK_IMAGES of the run's test photos, spread evenly over its predictions."""
    return _spread(run.predictions()["path"].to_numpy(), MAX_CHECK_IMAGES)


def _check_images(run: Run) -> tuple[np.ndarray, str, np.ndarray]:
    """Up to MAX_CHECK_IMAGES of the run's test images as the pipeline loads them, what they
    are, and their paths; seeded noise (and no paths) if they are gone (a moved dataset), which
    still shows whether the two models compute the same function."""
    from .inference import run_preprocess
    from .pipeline import load_images
    pre = run_preprocess(run)
    try:
        chosen = _check_paths(run)
        images, _ = load_images(chosen, pre)
        if len(images):
            return images, "test split", chosen
        reason = "none readable"
    except (RunError, OSError, KeyError) as err:
        reason = str(err)
    noise = np.random.default_rng(0).uniform(0, 255, (32, pre.img_size, pre.img_size, 3))
    return (noise.astype(np.float32), f"random images (test images unavailable: {reason})",
            np.array([], object))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
