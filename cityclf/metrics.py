"""Scores of a model run, computed only from its per-image predictions file.

Every run writes one row per test image (its top-5 cities and their probabilities); every number
reported about the run is derived from that file, so any metric can be recomputed, or added later,
without running the model again. Images of cities the model was not trained on (out-of-dataset
evaluation) cannot be scored against its classes: they are counted apart, per city.

Frames of one MSLS sequence show the same street, so beside the image-level scores the run is
also scored once per sequence, on its frames' answers combined by mean log-probability
(``sequence_top1``). The file keeps each image's five most probable cities only; the other
cities share what those five leave, equally (``probability_matrix``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .fileio import write_json_atomic
from .splits import group_keys

TOP_K = 5
PREDICTION_COLUMNS = (["path", "true_city"] + [f"top{r}" for r in range(1, TOP_K + 1)]
                      + [f"prob{r}" for r in range(1, TOP_K + 1)] + ["correct"])
GROUP_COLUMNS = ["scene", "night", "control_panel", "view_direction"]
CALIBRATION_BINS = 15
TOP_CONFUSIONS = 10
PROB_FLOOR = 1e-6  # log(0) = -inf: an underflowed probability counts as 1e-6, not as NaN or -inf
BOOTSTRAP_RESAMPLES = 1000  # enough for stable 2.5 % / 97.5 % percentiles
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0


def combine_probabilities(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Several photos of one place as one answer: the mean log-probability of each city, as
    probabilities again (the normalised geometric mean).

    A city one photo all but rules out stays unlikely, however sure one other photo is of it,
    while a city every photo finds plausible wins. Probabilities are floored at PROB_FLOOR.
    """
    log = np.log(np.maximum(np.asarray(probs, dtype=float), PROB_FLOOR)).mean(axis=axis)
    combined = np.exp(log - log.max(axis=-1, keepdims=True))
    return combined / combined.sum(axis=-1, keepdims=True)


def predictions_table(paths, true_cities, probs: np.ndarray, classes: list[str],
                      k: int = TOP_K) -> pd.DataFrame:
    """One row per image with its `k` most probable cities, best first.

    The columns are always PREDICTION_COLUMNS, so files of different runs line up; ranks beyond `k`
    or beyond the number of classes are None (city) and NaN (probability).
    """
    probs = np.asarray(probs, dtype=float)
    table = pd.DataFrame({"path": list(paths), "true_city": list(true_cities)})
    if probs.shape != (len(table), len(classes)):
        raise ValueError(f"probs has shape {probs.shape}, expected ({len(table)}, {len(classes)})")
    if not 1 <= k <= TOP_K:
        raise ValueError(f"k must be between 1 and {TOP_K}, not {k}")
    order = np.argsort(-probs, axis=1, kind="stable")
    names = np.asarray(classes, dtype=object)
    for rank in range(TOP_K):
        if rank < min(k, len(classes)):
            table[f"top{rank + 1}"] = names[order[:, rank]]
            table[f"prob{rank + 1}"] = probs[np.arange(len(table)), order[:, rank]]
        else:
            table[f"top{rank + 1}"] = pd.Series([None] * len(table), dtype=object)
            table[f"prob{rank + 1}"] = np.nan
    table["correct"] = (table["top1"] == table["true_city"]).astype(bool)
    return table[PREDICTION_COLUMNS]


def compute_metrics(predictions: pd.DataFrame, classes: list[str],
                    manifest: pd.DataFrame | None = None,
                    ms_per_image: float | None = None) -> dict:
    """All scores of a predictions table, as a JSON-ready dict (no numpy types, None for NaN)."""
    known = predictions["true_city"].isin(classes)
    unknown = predictions.loc[~known, "true_city"].value_counts().sort_index()
    result = {"n_images": int(known.sum()),
              "unknown_cities": {str(city): int(n) for city, n in unknown.items()},
              "ms_per_image": None if ms_per_image is None else float(ms_per_image)}
    scored = predictions[known].reset_index(drop=True)
    if scored.empty:
        empty = ["top1", "top5", "sequence_top1", "n_sequences", "macro", "per_city",
                 "confusion_matrix", "most_confused", "confused_pairs", "by_group", "ece",
                 "reliability", "intervals", "bootstrap"]
        return {**result, **dict.fromkeys(empty)}

    true = scored["true_city"].astype(object).tolist()
    predicted = scored["top1"].astype(object).tolist()
    correct = scored["correct"].astype(bool)
    in_top5 = _in_top5(scored)

    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=classes, zero_division=0)
    matrix = confusion_matrix(true, predicted, labels=classes)
    ece, reliability = _calibration(scored["prob1"].to_numpy(dtype=float), correct.to_numpy())
    sequence_hits = _sequence_hits(scored, classes, manifest)
    bootstrap = sequence_bootstrap(scored, classes, _sequence_keys(scored, manifest), manifest)
    bootstrap["intervals"]["sequence_top1"] = _pair(percentile_interval(
        _resampled_means(sequence_hits.to_numpy(dtype=float)))[:, 0])
    return {
        **result,
        "top1": float(correct.mean()),
        "top5": float(in_top5.mean()),
        "sequence_top1": float(sequence_hits.mean()),
        "n_sequences": int(len(sequence_hits)),
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                  "f1": float(f1.mean())},
        "per_city": {city: {"precision": float(p), "recall": float(r), "f1": float(f),
                            "support": int(s)}
                     for city, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.tolist()},
        "most_confused": _most_confused(matrix, classes),
        "confused_pairs": _confused_pairs(matrix, classes),
        "by_group": _by_group(scored["path"], correct, manifest),
        "ece": ece,
        "reliability": reliability,
        **bootstrap,
    }


def _in_top5(scored: pd.DataFrame) -> pd.Series:
    return pd.concat([scored[f"top{r}"].astype(object) == scored["true_city"].astype(object)
                      for r in range(1, TOP_K + 1)], axis=1).any(axis=1)


def probability_matrix(predictions: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """(n, len(classes)) probabilities rebuilt from a predictions table's top-5 columns.

    The file keeps only the five most probable cities of each image. The others share what those
    five leave, equally: the one guess that keeps the row summing to 1 and assumes nothing about
    which of them is likelier (each is below prob5 anyway). With five classes or fewer the
    matrix is exact.
    """
    ranks = [r for r in range(1, TOP_K + 1) if predictions[f"top{r}"].notna().any()]
    known = predictions[[f"prob{r}" for r in ranks]].to_numpy(dtype=float)
    left = np.clip(1 - np.nansum(known, axis=1), 0, None) / max(1, len(classes) - len(ranks))
    matrix = np.repeat(left[:, None], len(classes), axis=1)
    index = {city: i for i, city in enumerate(classes)}
    rows = np.arange(len(predictions))
    for r, prob in zip(ranks, known.T):
        column = predictions[f"top{r}"].map(index).to_numpy(dtype=float)
        ok = ~np.isnan(column) & ~np.isnan(prob)
        matrix[rows[ok], column[ok].astype(int)] = prob[ok]
    return matrix


def _sequence_keys(scored: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.Series:
    """Each scored image's sequence; an image without one, or not in the manifest, is its own."""
    sequence = pd.Series(pd.NA, index=scored.index, dtype="string")
    if manifest is not None and "sequence_key" in manifest:
        by_path = manifest.drop_duplicates("path").set_index("path")["sequence_key"]
        sequence = scored["path"].map(by_path).astype("string")
    return group_keys(pd.DataFrame({"path": scored["path"], "sequence_key": sequence}))


def _sequence_hits(scored: pd.DataFrame, classes: list[str],
                   manifest: pd.DataFrame | None) -> pd.Series:
    """Per sequence: whether its frames' combined answer is its city."""
    keys = _sequence_keys(scored, manifest)
    probs = probability_matrix(scored, classes)
    groups = scored.groupby([keys, scored["true_city"]]).indices  # positions of each one's frames
    return pd.Series([classes[combine_probabilities(probs[rows]).argmax()] == city
                      for (_, city), rows in groups.items()], dtype=bool)


def percentile_interval(samples: np.ndarray) -> np.ndarray:
    """The percentile interval of bootstrap samples along axis 0 (NaN samples left out: a
    resample without any image of a city has no recall for it)."""
    tail = 100 * (1 - BOOTSTRAP_LEVEL) / 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, said below
        return np.nanpercentile(samples, [tail, 100 - tail], axis=0)


def _pair(bounds: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in bounds]


def sequence_bootstrap(scored: pd.DataFrame, classes: list[str], groups: pd.Series,
                       manifest: pd.DataFrame | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> dict:
    """95 % intervals of every image-level score, from a bootstrap that resamples whole groups.

    Frames of one sequence are near copies, so they are not independent evidence: resampling
    images would give intervals as if a 7-frame sequence were 7 streets. Each resample draws as
    many groups as there are, with replacement, and every score is recomputed from per-group
    counts (one matrix product per score, so 1000 resamples take milliseconds). Seeded: the same
    predictions always get the same intervals.
    """
    codes, uniques = pd.factorize(groups)
    n_groups, index = len(uniques), {c: i for i, c in enumerate(classes)}
    true = scored["true_city"].map(index).to_numpy(dtype=int)
    predicted = scored["top1"].map(index).fillna(-1).to_numpy(dtype=int)
    in_top5 = _in_top5(scored).to_numpy()

    def per_group(values: np.ndarray) -> np.ndarray:
        """(n_groups, columns) sums of per-image values (a 1-d array is one column)."""
        values = values.reshape(len(values), -1).astype(float)
        out = np.zeros((n_groups, values.shape[1]))
        np.add.at(out, codes, values)
        return out

    eye = np.eye(len(classes))
    counts = per_group(np.ones(len(scored)))
    hits, hits5 = per_group(true == predicted), per_group(in_top5)
    true_per_city = per_group(eye[true])
    predicted_per_city = per_group(np.where(predicted[:, None] >= 0, eye[predicted], 0.0))
    tp_per_city = per_group(eye[true] * (true == predicted)[:, None])

    draws = bootstrap_draws(n_groups, resamples, seed)
    n = draws @ counts
    with np.errstate(all="ignore"):
        tp, true_n, pred_n = draws @ tp_per_city, draws @ true_per_city, draws @ predicted_per_city
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, np.nan)
        f1 = np.where(pred_n + true_n > 0, 2 * tp / (pred_n + true_n), 0.0)
    macro_f1 = np.nan_to_num(f1).mean(axis=1, keepdims=True)
    scores = {"top1": draws @ hits / n, "top5": draws @ hits5 / n, "macro_f1": macro_f1}
    intervals = {name: _pair(percentile_interval(values)[:, 0])
                 for name, values in scores.items()}
    bounds = {name: percentile_interval(values) for name, values in
              (("precision", precision), ("recall", recall), ("f1", f1))}
    intervals["per_city"] = {city: {name: _pair(b[:, j]) for name, b in bounds.items()}
                             for j, city in enumerate(classes)}
    intervals["by_group"] = _group_intervals(scored, manifest, codes, n_groups, draws)
    return {"intervals": intervals,
            "bootstrap": {"unit": "sequence", "groups": int(n_groups), "resamples": resamples,
                          "level": BOOTSTRAP_LEVEL, "seed": seed}}


def bootstrap_draws(units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn in each resample of `units` draws."""
    return np.random.default_rng(seed).multinomial(
        units, np.full(units, 1 / units), size=resamples).astype(float)


def _resampled_means(values: np.ndarray) -> np.ndarray:
    """(resamples, 1) bootstrap means of `values`, each value one unit."""
    draws = bootstrap_draws(len(values), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    return (draws @ values / len(values))[:, None]


def _group_intervals(scored, manifest, codes, n_groups, draws) -> dict:
    """Intervals of the per-condition accuracies (night, scene, ...), by the same resamples."""
    if manifest is None:
        return {}
    by_path = manifest.drop_duplicates("path").set_index("path")
    correct = scored["correct"].to_numpy(dtype=float)
    out = {}
    for column in GROUP_COLUMNS:
        if column not in by_path:
            continue
        values = scored["path"].map(by_path[column])
        if values.isna().all():
            continue
        out[column] = {}
        for value in values.dropna().unique():
            inside = (values == value).to_numpy(dtype=bool)
            hits, n = np.zeros(n_groups), np.zeros(n_groups)
            np.add.at(hits, codes[inside], correct[inside])
            np.add.at(n, codes[inside], 1.0)
            with np.errstate(all="ignore"):
                accuracy = (draws @ hits) / (draws @ n)
            out[column][str(value)] = _pair(percentile_interval(accuracy[:, None])[:, 0])
    return out


def _most_confused(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """The largest off-diagonal cells; rate is the share of the true city's images."""
    cells = [{"true": classes[i], "predicted": classes[j], "count": int(matrix[i, j]),
              "rate": float(matrix[i, j] / matrix[i].sum())}
             for i in range(len(classes)) for j in range(len(classes))
             if i != j and matrix[i, j] > 0]
    return sorted(cells, key=lambda cell: -cell["count"])[:TOP_CONFUSIONS]


def _confused_pairs(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """Confusions regardless of direction: cities the model cannot tell apart either way."""
    pairs = [{"a": classes[i], "b": classes[j], "count": int(matrix[i, j] + matrix[j, i])}
             for i in range(len(classes)) for j in range(i + 1, len(classes))
             if matrix[i, j] + matrix[j, i] > 0]
    return sorted(pairs, key=lambda pair: -pair["count"])[:TOP_CONFUSIONS]


def _by_group(paths: pd.Series, correct: pd.Series, manifest: pd.DataFrame | None) -> dict:
    """Top-1 accuracy per value of each condition the manifest records (night, scene, ...)."""
    if manifest is None:
        return {}
    by_path = manifest.drop_duplicates("path").set_index("path")
    groups = {}
    for column in GROUP_COLUMNS:
        if column not in by_path:
            continue
        values = paths.map(by_path[column])
        if values.isna().all():
            continue
        groups[column] = {str(value): {"top1": float(hits.mean()), "n": int(len(hits))}
                          for value, hits in correct.groupby(values)}
    return groups


def _calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width bins of prob1, and the bins for a plot."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bin_of = np.digitize(confidence, edges[1:-1])
    ece, bins = 0.0, []
    for b in range(CALIBRATION_BINS):
        inside = bin_of == b
        n = int(inside.sum())
        mean_confidence = accuracy = None
        if n:
            mean_confidence = float(confidence[inside].mean())
            accuracy = float(correct[inside].mean())
            ece += n / len(confidence) * abs(accuracy - mean_confidence)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                     "confidence": mean_confidence, "accuracy": accuracy, "n": n})
    return float(ece), bins


def save_metrics(predictions_path, classes: list[str], manifest: pd.DataFrame | None = None,
                 ms_per_image: float | None = None, extra: dict | None = None) -> dict:
    """Score a saved predictions parquet and write metrics.json beside it.

    `extra` records how the predictions were made where the file cannot tell (test-time
    augmentation). Written atomically, so a reader never sees a half-written metrics.json.
    """
    predictions_path = Path(predictions_path)
    metrics = compute_metrics(pd.read_parquet(predictions_path), classes, manifest, ms_per_image)
    metrics.update(extra or {})
    write_json_atomic(predictions_path.parent / "metrics.json", metrics)
    return metrics
