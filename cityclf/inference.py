"""Using a trained run: load its model, predict photos, re-score it on any dataset."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import zoo
from .datasets import scan
from .images import ImageError, load_rgb
from .metrics import predictions_table, save_metrics
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


def predict_files(run: Run, paths, top: int = 5) -> list[dict]:
    """Top cities per image file; an unreadable file gets an `error` instead of a crash."""
    predictor, pre = best_predictor(run), run_preprocess(run)
    results, batch, where = [], [], []
    for path in paths:
        try:
            batch.append(prepare_image(load_rgb(path), pre))
            where.append(len(results))
            results.append({"path": str(path)})
        except ImageError as err:
            results.append({"path": str(path), "error": str(err)})
    if batch:
        start = time.perf_counter()
        probabilities = predictor.predict_proba(np.stack(batch))
        ms = 1000 * (time.perf_counter() - start) / len(batch)
        for i, probs in zip(where, probabilities):
            order = np.argsort(probs)[::-1][:top]
            results[i]["top"] = [(run.classes[j], float(probs[j])) for j in order]
            results[i]["ms"] = round(ms, 2)
    return results


def evaluate(run: Run, data: str | Path | None = None, progress: bool = True) -> dict:
    """Score a run on its own test split, or on every image of another dataset.

    Predictions and metrics go to ``<run>/evaluations/<dataset id>/``. Cities the run never
    learnt are reported under ``unknown_cities``, not crashed on.
    """
    own = data is None or Path(data).resolve() == Path(run.info["dataset"]["root"])
    dataset = scan(data or run.info["dataset"]["root"], progress=progress)
    table = dataset.manifest
    if own:
        method = run.info.get("split", {}).get("method", "sequence")
        table = load_split(dataset, method)
        table = table[table["split"] == "test"]
    pre, predictor = run_preprocess(run), best_predictor(run)
    images, rows = load_images(table["path"], pre)
    start = time.perf_counter()
    probabilities = predictor.predict_proba(images) if len(images) else np.zeros((0, len(run.classes)))
    ms = round(1000 * (time.perf_counter() - start) / max(1, len(images)), 3)
    out = run.path / "evaluations" / dataset.id
    out.mkdir(parents=True, exist_ok=True)
    kept = table.iloc[rows]
    predictions_table(kept["path"].to_numpy(), kept["city"].to_numpy(), probabilities,
                      run.classes).to_parquet(out / "predictions.parquet", index=False)
    metrics = save_metrics(out / "predictions.parquet", run.classes,
                           attach_scenes(dataset.manifest, dataset), ms_per_image=ms)
    return {"dataset": str(dataset.root), "out": str(out), **metrics}
