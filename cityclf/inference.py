"""Using a trained run: load its model, predict photos, re-score it on any dataset."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import tta as _tta  # `tta` is the flag that asks for it
from . import zoo
from .datasets import scan
from .lite import answer_files, top_cities
from .metrics import combine_probabilities, predictions_table, save_metrics
from .pipeline import Preprocess, load_images, preprocess
from .runs import Run, RunError
from .scenes import attach_scenes
from .splits import load_split


def run_preprocess(run: Run) -> Preprocess:
    return Preprocess(**run.info["preprocess"])


def load_predictor(run: Run) -> zoo.ZooModel:
    """The run's model behind the zoo's uniform `predict_proba`.

    Keras models load in safe mode (no code from the file runs); the forest is a joblib file
    written by cityclf itself.
    """
    import keras
    info = run.info
    size, n_classes = info["preprocess"]["img_size"], len(info["classes"])
    try:
        if (run.path / "model.keras").exists():
            model = keras.saving.load_model(run.path / "model.keras", safe_mode=True, compile=False)
            return zoo.ZooModel(info["model"], "keras", size, n_classes, model=model)
        if (run.path / "model.joblib").exists():
            import joblib
            return zoo.ZooModel(info["model"], "sklearn", size, n_classes,
                                estimator=joblib.load(run.path / "model.joblib"))
    except Exception as err:  # noqa: BLE001 - any failure to load means an unusable file
        raise RunError(f"run {run.id}: model file is corrupt or unreadable "
                       f"({err.__class__.__name__})") from None
    raise RunError(f"run {run.id}: no model file (model.keras or model.joblib)")


def best_predictor(run: Run):
    """What predictions should use: the run's verified fast path (TFLite with XNNPACK, built
    on first use for older runs), or its Keras / forest model when it has none."""
    from .fast import load_fast_predictor
    return load_fast_predictor(run) or load_predictor(run)


def prepare_image(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """An RGB uint8 array through the same preprocessing as training (one code path)."""
    import tensorflow as tf
    return preprocess(tf.convert_to_tensor(image), pre).numpy()


def _predict(run: Run, paths, top: int, tta: bool) -> tuple[list[dict], np.ndarray]:
    """lite.answer_files with the run's best predictor and gate, preprocessing by TensorFlow."""
    from .ood import load_gate
    pre = run_preprocess(run)
    prepare = ((lambda image: _tta.views(image, pre).numpy()) if tta
               else (lambda image: prepare_image(image, pre)[None]))
    return answer_files(best_predictor(run), load_gate(run), paths, prepare, run.classes, top)


def predict_files(run: Run, paths, top: int = 5, tta: bool = False) -> list[dict]:
    """Top cities per image file; an unreadable file gets an `error` instead of a crash.

    `tta` averages the answers for several crops of each photo (cityclf.tta): about six times
    the model's work.
    """
    return _predict(run, paths, top, tta)[0]


def predict_place(run: Run, paths, top: int = 5, tta: bool = False) -> dict:
    """Photos of one place (a sequence, a folder of one street): each photo's top cities, and
    under `top` one answer for them all, by mean log-probability over the readable photos
    (metrics.combine_probabilities); `n_images` says how many that was (0: no answer)."""
    results, probabilities = _predict(run, paths, top, tta)
    place = (top_cities(combine_probabilities(probabilities), run.classes, top)
             if len(probabilities) else [])
    return {"images": results, "top": place, "n_images": len(probabilities)}


def evaluate(run: Run, data: str | Path | None = None, progress: bool = True,
             tta: bool = False) -> dict:
    """Score a run on its own test split, or on every image of another dataset.

    Predictions and metrics go to ``<run>/evaluations/<dataset id>/``, or with `tta` (several
    crops of each photo, see cityclf.tta) to ``<dataset id>-tta/``, so the plain evaluation is
    kept. Cities the run never learnt are reported under ``unknown_cities``, not crashed on.
    """
    own = data is None or Path(data).resolve() == Path(run.info["dataset"]["root"])
    dataset = scan(data or run.info["dataset"]["root"], progress=progress)
    table = dataset.manifest
    if own:
        method = run.info.get("split", {}).get("method", "sequence")
        table = load_split(dataset, method)
        table = table[table["split"] == "test"]
    pre, predictor = run_preprocess(run), best_predictor(run)
    if tta:
        views, rows, seconds = _tta.predict_paths(predictor, table["path"].to_numpy(), pre)
        probabilities = _tta.combine(views)
    else:
        images, rows = load_images(table["path"], pre)
        start = time.perf_counter()
        probabilities = (predictor.predict_proba(images) if len(images)
                         else np.zeros((0, len(run.classes))))
        seconds = time.perf_counter() - start
    ms = round(1000 * seconds / max(1, len(rows)), 3)
    out = run.path / "evaluations" / (f"{dataset.id}-tta" if tta else dataset.id)
    out.mkdir(parents=True, exist_ok=True)
    kept = table.iloc[rows]
    predictions_table(kept["path"].to_numpy(), kept["city"].to_numpy(), probabilities,
                      run.classes).to_parquet(out / "predictions.parquet", index=False)
    metrics = save_metrics(out / "predictions.parquet", run.classes,
                           attach_scenes(dataset.manifest, dataset), ms_per_image=ms,
                           extra={"tta": True, "views": _tta.N_VIEWS} if tta else None)
    return {"dataset": str(dataset.root), "out": str(out), **metrics,
            "unread": _unread(dataset, table, rows)}


def _unread(dataset, chosen, rows) -> list[str]:
    """One 'path: why' line per image of the dataset that could not be read: those the scan
    skipped as unreadable (files that are no image at all do not count) and those of the
    `chosen` ones that failed to decode (not among the decoded `rows`)."""
    skipped = dataset.skipped[dataset.skipped["reason"] != "not an image"]
    lines = [f"{Path(path).parent / reason}" for path, reason in zip(skipped["path"],
                                                                     skipped["reason"])]
    failed = np.setdiff1d(np.arange(len(chosen)), rows)
    return lines + [f"{path}: could not be decoded" for path in chosen["path"].iloc[failed]]
