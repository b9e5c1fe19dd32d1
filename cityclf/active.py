"""Active learning on the user's own photos: which to label next, and a new run from the labels.

A transfer run is a backbone and a linear head. Every photo, the run's own and the user's, is
embedded once by the run's backbone (fine-tuned part included) into a cache, so retraining is
solving the head again on the run's training embeddings plus the labelled photos: seconds.

Choosing what to label is scikit-activeml's: margin uncertainty sampling, and Falcun, which
adds diversity (photos the model is unsure of in different ways), so that 30 frames of one
street do not fill a batch. The classifier it asks is the run's head refitted with the labels
given so far. Photos the run's gate calls "not a street photo" go last:
a label on them teaches nothing about cities.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import runs
from .embeddings import embed_rows
from .fileio import write_json_atomic
from .head import HeadFit, fit_head
from .pool import NONE_OF_THESE, Pool
from .runs import Run, RunError

BATCH = 40
STRATEGIES = ("random", "uncertainty", "uncertainty+diversity")
DEFAULT_STRATEGY = "uncertainty+diversity"
FEATURES_STORE = "run-features"  # one embedding store per run, keyed by the run's id
# Pseudo-labels: the lowest confidence at which the run's validation answers are still right
# this often (and at least this many validation photos are that confident).
PSEUDO_PRECISION, PSEUDO_MIN_SUPPORT = 0.95, 20
CURVE_POINTS = 6
VERDICT_CHUNK = 64


# ---------------------------------------------------------------------------- the run's parts

def backbone_and_head(run: Run):
    """The run's Keras model, its backbone (image -> embedding, fine-tuned layers included) and
    its head's weights; a RunError for runs without a transfer head (the forest, LeNet, a simple
    CNN). Loaded once per model file (a fusion model takes seconds)."""
    if not run.info.get("transfer"):
        raise RunError(f"run {run.id} ({run.info.get('model')}) has no transfer head to retrain: "
                       "active learning needs a run of a pretrained backbone")
    stamp = (run.path / "model.keras").stat().st_mtime_ns if (run.path / "model.keras").exists() \
        else 0
    return _load_parts(str(run.path), stamp, run.id)


@functools.lru_cache(maxsize=2)
def _load_parts(folder: str, stamp: int, run_id: str):
    import keras

    from .inference import load_predictor
    model = load_predictor(runs.get_run(folder)).model
    parts = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    head = next((part for part in parts if part.name == "head"), None)
    backbone = next((part for part in parts if part.name != "head"), None)
    if head is None or backbone is None:
        raise RunError(f"run {run_id}: its model has no backbone and head to separate")
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = dense.get_weights()
    return model, backbone, HeadFit(kernel, bias, head_C(runs.get_run(folder)))


def head_C(run: Run) -> float:
    """The L2 strength the run's head was solved at (the middle of the grid for older runs)."""
    return float(((run.info.get("recipe") or {}).get("head") or {}).get("C") or 0.01)


def features(run: Run, backbone, paths, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `paths` by the run's backbone (cached per run) and which could be read."""
    from .inference import run_preprocess
    rows, ok = embed_rows(backbone, run.id, FEATURES_STORE, list(paths), run_preprocess(run),
                          progress=progress)
    return rows.read(), ok


@dataclass
class Training:
    """The run's own training and validation photos, as its head was fitted on them."""

    paths: np.ndarray
    labels: np.ndarray  # class indices
    split: np.ndarray   # "train" / "val" / "test"


def run_training(run: Run) -> Training:
    """The run's dataset and split, cities as the run's class indices (images of cities the run
    does not know, added since, are left out)."""
    from .datasets import scan
    from .splits import load_split
    table = load_split(scan(run.info["dataset"]["root"], progress=False),
                       run.info.get("split", {}).get("method", "sequence"))
    index = {city: i for i, city in enumerate(run.classes)}
    table = table[table["city"].isin(index)]
    return Training(table["path"].to_numpy(), table["city"].map(index).to_numpy(int),
                    table["split"].to_numpy())


# ------------------------------------------------------------------------------ the pool's view

@dataclass
class PoolView:
    """What the run makes of each pool photo: its embedding, probabilities, verdict, label."""

    table: pd.DataFrame  # path, readable, top, prob, margin, verdict, message, label, held_out
    embeddings: np.ndarray
    probabilities: np.ndarray


def view_pool(run: Run, pool: Pool, progress: bool = True, on_step=None) -> PoolView:
    """Embed (cached), predict and check every photo of the pool with the run."""
    _, backbone, head = backbone_and_head(run)
    paths = pool.photos()
    if on_step:
        on_step("embedding the pool's photos", 0.1)
    vectors, ok = features(run, backbone, paths, progress)
    probabilities = head.probabilities(vectors)
    if on_step:
        on_step("checking which are street photos", 0.6)
    verdicts = _verdicts(run, pool, paths, progress)
    ranked = np.sort(probabilities, axis=1)
    table = pd.DataFrame({"path": paths, "readable": ok,
                          "top": np.asarray(run.classes)[probabilities.argmax(1)],
                          "prob": ranked[:, -1], "margin": ranked[:, -1] - ranked[:, -2]})
    table = table.merge(verdicts, on="path", how="left")
    table["readable"] &= table["error"].isna()
    labels = pool.labels()
    labels = labels.assign(label_order=np.arange(len(labels)))  # the order they were given in
    table = table.merge(labels[["path", "city", "held_out", "label_order"]].rename(
        columns={"city": "label"}), on="path", how="left")
    table["held_out"] = table["held_out"].fillna(False).astype(bool)
    return PoolView(table, vectors, probabilities)


def _verdicts(run: Run, pool: Pool, paths: list[str], progress: bool) -> pd.DataFrame:
    """The run's "none of these cities" verdict and read error per photo, cached per run and
    file (a photo replaced on disk is checked again)."""
    from .inference import predict_files
    cache = pool.cache / f"verdicts-{run.id}.parquet"
    stamps = [_stamp(path) for path in paths]
    try:
        known = pd.read_parquet(cache)
    except (OSError, ValueError):
        known = pd.DataFrame(columns=["path", "stamp", "verdict", "message", "error"])
    known = known[known["path"].isin(paths)]
    fresh = dict(zip(known["path"], known["stamp"]))
    todo = [p for p, s in zip(paths, stamps) if fresh.get(p) != s]
    rows = []
    for start in tqdm(range(0, len(todo), VERDICT_CHUNK), desc="checking photos",
                      disable=not progress or not todo):
        for result in predict_files(run, todo[start:start + VERDICT_CHUNK], top=1):
            ood = result.get("ood") or {}
            rows.append({"path": result["path"], "stamp": _stamp(result["path"]),
                         "verdict": ood.get("verdict", "ok" if "top" in result else None),
                         "message": ood.get("message"), "error": result.get("error")})
    if rows:
        known = pd.concat([known[~known["path"].isin(todo)], pd.DataFrame(rows)],
                          ignore_index=True)
        pool.cache.mkdir(parents=True, exist_ok=True)
        known.to_parquet(cache, index=False)
    return known.drop(columns="stamp")


def _stamp(path: str) -> str:
    try:
        stat = Path(path).stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    except OSError:
        return "missing"


# ------------------------------------------------------------------------------ what to label

def _classifier(C: float, n_classes: int, balanced: bool, seed: int):
    """The run's head as scikit-activeml wants a classifier: logistic regression at the run's
    C, on centred embeddings (the same optimum, reached 10-30x faster: cityclf.head)."""
    from skactiveml.classifier import SklearnClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(with_std=False),
                          LogisticRegression(C=C, max_iter=1000,
                                             class_weight="balanced" if balanced else None))
    return SklearnClassifier(model, classes=np.arange(n_classes), random_state=seed)


def query(known_x: np.ndarray, known_y: np.ndarray, candidates_x: np.ndarray, C: float,
          n_classes: int, strategy: str = DEFAULT_STRATEGY, batch: int = BATCH, seed: int = 0,
          balanced: bool = False) -> np.ndarray:
    """Indices into `candidates_x` of the next `batch` photos to label, most uncertain first.

    The classifier asked is fitted on the labelled rows (`known_x`, `known_y`); "uncertainty"
    takes the smallest margins between the two likeliest cities; "uncertainty+diversity" is
    Falcun (Gilhuber et al., 2024), which draws photos one by one with a chance growing with
    their uncertainty and their distance, in predicted probabilities, from those already drawn;
    "random" draws at random. (On the demo Falcun needed 240 labels for random's accuracy at
    400; Clue, k-means weighted by uncertainty, 280; plain uncertainty 320: bench/active.py.)"""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
    batch = min(batch, len(candidates_x))
    if batch == 0:
        return np.zeros(0, int)
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(candidates_x))[:batch]
    from skactiveml.pool import Falcun, UncertaintySampling, uncertainty_scores
    x = np.vstack([known_x, candidates_x]).astype(np.float64)
    y = np.concatenate([np.asarray(known_y, float), np.full(len(candidates_x), np.nan)])
    candidates = np.arange(len(known_x), len(x))
    clf = _classifier(C, n_classes, balanced, seed).fit(x, y)
    method = (UncertaintySampling(method="margin_sampling", random_state=seed)
              if strategy == "uncertainty" else Falcun(random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's chatter on tiny batches
        chosen = method.query(x, y, clf, fit_clf=False, candidates=candidates, batch_size=batch)
    chosen = np.asarray(chosen) - len(known_x)
    margins = uncertainty_scores(clf.predict_proba(candidates_x[chosen]), method="margin_sampling")
    return chosen[np.argsort(-margins, kind="stable")]


def next_batch(run: Run, pool: Pool, view: PoolView | None = None,
               strategy: str = DEFAULT_STRATEGY, batch: int = BATCH,
               progress: bool = True) -> list[str]:
    """The next photos of the pool to label with this run, best first (computed again once the
    previous batch is labelled); kept in the pool's cache so a reload shows the same queue."""
    view = view or view_pool(run, pool, progress)
    queue_file = pool.cache / f"queue-{run.id}.json"
    table = view.table
    waiting = table["readable"] & table["label"].isna()
    try:
        saved, open_paths = json.loads(queue_file.read_text()), set(table.loc[waiting, "path"])
        left = [p for p in saved["paths"] if p in open_paths]
        if left and saved.get("strategy") == strategy:
            return left
    except (OSError, ValueError, KeyError, TypeError):
        pass
    street = waiting & (table["verdict"] != "not_street")
    candidates = np.flatnonzero(street if street.any() else waiting)
    if not len(candidates):
        return []
    known_x, known_y = _known(run, view, progress)
    chosen = candidates[query(known_x, known_y, view.embeddings[candidates], head_C(run),
                              len(run.classes), strategy, batch,
                              balanced=bool(run.info["config"].get("class_weights")))]
    paths = table["path"].to_numpy()[chosen].tolist()
    write_json_atomic(queue_file, {"strategy": strategy, "paths": paths,
                                   "made": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return paths


def _known(run: Run, view: PoolView, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The run's training embeddings plus the pool's labelled training photos."""
    _, backbone, _ = backbone_and_head(run)
    training = run_training(run)
    train = training.split == "train"
    x, ok = features(run, backbone, training.paths[train], progress)
    labelled = _trainable(view.table, run.classes)
    index = {c: i for i, c in enumerate(run.classes)}
    return (np.vstack([x[ok], view.embeddings[labelled]]),
            np.concatenate([training.labels[train][ok],
                            view.table.loc[labelled, "label"].map(index).to_numpy(int)]))


def _trainable(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Rows of the pool labelled with one of the run's cities and not held out."""
    return np.flatnonzero(table["label"].isin(classes) & ~table["held_out"] & table["readable"])


# ------------------------------------------------------------------------------ a new run

def pseudo_threshold(probabilities: np.ndarray, truth: np.ndarray,
                     precision: float = PSEUDO_PRECISION,
                     min_support: int = PSEUDO_MIN_SUPPORT) -> float | None:
    """The lowest top probability above which the run's validation answers are right at least
    `precision` of the time (over at least `min_support` photos); None when none is."""
    confidence = probabilities.max(1)
    right = probabilities.argmax(1) == truth
    order = np.argsort(-confidence)
    running = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero((running >= precision) & (np.arange(1, len(order) + 1) >= min_support))
    return float(confidence[order][good[-1]]) if len(good) else None


def update(run: Run, pool: Pool, pseudo_labels: bool = False, progress: bool = True,
           on_step=None) -> Run:
    """A new run: the head solved again on the run's training embeddings plus the pool's
    labelled photos (at the run's C), tested on the run's own test split, registered with its
    parent, the labels file and accuracy against labels spent (on the held-out labels)."""
    started = time.perf_counter()
    steps = {}  # seconds from the start to each step, for run.json

    def step(message: str, fraction: float) -> None:
        steps[message] = round(time.perf_counter() - started, 2)
        if on_step:
            on_step(message, fraction)

    view = view_pool(run, pool, progress)
    labelled = _trainable(view.table, run.classes)
    model, backbone, parent_head = backbone_and_head(run)
    training = run_training(run)
    test_copies = _copies_of(view.table["path"].to_numpy()[labelled],
                             training.paths[training.split == "test"])
    labelled = labelled[~np.isin(view.table["path"].to_numpy()[labelled], list(test_copies))]
    if not len(labelled):
        raise ValueError(f"no photo of the pool {pool.folder} is labelled with one of the run's "
                         "cities yet (held-out ones excepted): label some first")
    step("embedding the run's own photos", 0.2)
    part = {name: training.split == name for name in ("train", "val", "test")}
    embedded = {name: features(run, backbone, training.paths[rows], progress)
                for name, rows in part.items()}
    index = {c: i for i, c in enumerate(run.classes)}
    pool_y = view.table.loc[labelled, "label"].map(index).to_numpy(int)
    train_x, ok = embedded["train"]
    train_x, train_y = train_x[ok], training.labels[part["train"]][ok]
    val_x, val_ok = embedded["val"]
    val_x, val_y = val_x[val_ok], training.labels[part["val"]][val_ok]
    C, balanced = head_C(run), bool(run.info["config"].get("class_weights"))

    step("solving the head", 0.5)
    x, y = np.vstack([train_x, view.embeddings[labelled]]), np.concatenate([train_y, pool_y])
    solve = functools.partial(fit_head, n_classes=len(run.classes), grid=(C,), balanced=balanced,
                              start=parent_head)  # from the run's head: a few labels move it little
    fit = solve(x, y, val_x, val_y)
    pseudo = None
    if pseudo_labels:
        fit, pseudo = _with_pseudo_labels(fit, view, x, y, val_x, val_y, solve)
    step("measuring against the held-out labels", 0.6)
    curve = learning_curve(train_x, train_y, view, labelled, pool_y, val_x, val_y, run, solve)

    step("testing the new run", 0.7)
    test_x, test_ok = embedded["test"]
    test_rows = np.flatnonzero(part["test"])[test_ok]
    return _publish_child(run, pool, model, fit, test_x[test_ok], test_rows, training, {
        "parent": run.id, "pool": str(pool.folder), "labels_file": str(pool.labels_file),
        "labels": int(len(labelled)), "held_out": int(view.table["held_out"].sum()),
        "none_of_these": int((view.table["label"] == NONE_OF_THESE).sum()),
        "left_out_as_test_copies": len(test_copies), "C": C, "pseudo_labels": pseudo,
        "curve": curve, "steps_started_at_s": steps}, step, started)


def _with_pseudo_labels(fit, view, x, y, val_x, val_y, solve):
    """The head solved again with confident unlabelled street photos added under their
    predicted city, above the threshold the validation photos justify."""
    threshold = pseudo_threshold(fit.probabilities(val_x), val_y)
    if threshold is None:
        return fit, {"added": 0, "threshold": None,
                     "why": f"no confidence reaches {PSEUDO_PRECISION:.0%} right on validation"}
    table = view.table
    unlabelled = np.flatnonzero(table["readable"] & table["label"].isna()
                                & (table["verdict"] == "ok"))
    probabilities = fit.probabilities(view.embeddings[unlabelled])
    sure = unlabelled[probabilities.max(1) >= threshold]
    guessed = fit.probabilities(view.embeddings[sure]).argmax(1)
    if len(sure):
        fit = solve(np.vstack([x, view.embeddings[sure]]), np.concatenate([y, guessed]),
                    val_x, val_y)
    return fit, {"added": int(len(sure)), "threshold": round(threshold, 4),
                 "precision_on_validation": PSEUDO_PRECISION}


def learning_curve(train_x, train_y, view: PoolView, labelled, pool_y, val_x, val_y, run: Run,
                   solve) -> list[dict]:
    """Accuracy on the held-out labelled photos after the first k labels (in the order they
    were given), for a few k from 0 (the run's own head) to all of them."""
    table = view.table
    check = np.flatnonzero(table["held_out"] & table["label"].isin(run.classes) & table["readable"])
    if not len(check):
        return []
    index = {c: i for i, c in enumerate(run.classes)}
    check_y = table.loc[check, "label"].map(index).to_numpy(int)
    ranks = np.argsort(table.loc[labelled, "label_order"].to_numpy(), kind="stable")
    points = []
    for k in sorted(set(np.linspace(0, len(labelled), CURVE_POINTS).round().astype(int))):
        chosen = ranks[:k]
        if k == 0:  # the run's own head
            probabilities = view.probabilities[check]
        else:
            fit = solve(np.vstack([train_x, view.embeddings[labelled][chosen]]),
                        np.concatenate([train_y, pool_y[chosen]]), val_x, val_y)
            probabilities = fit.probabilities(view.embeddings[check])
        points.append({"labels": int(k), "held_out": int(len(check)),
                       "accuracy": round(float((probabilities.argmax(1) == check_y).mean()), 4)})
    return points


def _copies_of(paths, test_paths) -> set[str]:
    """The pool photos that are byte-for-byte copies of a test photo of the run: they must not
    be trained on. Only test photos of a size some pool photo has are read."""
    sizes = {}
    for path in paths:
        sizes.setdefault(Path(path).stat().st_size, []).append(path)
    digests = {}
    for path in test_paths:
        try:
            size = Path(path).stat().st_size
        except OSError:
            continue
        if size in sizes:
            digests[_digest(path)] = path
    return {path for group in sizes.values() for path in group if _digest(path) in digests}


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _publish_child(parent: Run, pool: Pool, model, fit: HeadFit, test_x, test_rows,
                   training: Training, active: dict, step, started: float) -> Run:
    """Write the child run (the parent's model with the new head), score it, publish it."""
    from . import fast
    from .datasets import scan
    from .head import set_head_weights
    from .metrics import predictions_table, save_metrics
    from .scenes import attach_scenes
    # What the parent's training did that this head's does not (generated images, outliers
    # left out) is not inherited: the child trains on the parent's training split plus labels.
    info = {key: value for key, value in parent.info.items()
            if key not in ("run_id", "timings", "val_accuracy", "study", "gan_augment",
                           "dropped_outliers")}
    name = f"{parent.info.get('name') or parent.id} + {active['labels']} labels"
    work = runs.start_run(name)
    try:
        set_head_weights(model.get_layer("head"), fit)
        try:
            model.save(work / "model.keras")
        finally:  # the parent's model stays loaded (backbone_and_head) and must stay the parent's
            set_head_weights(model.get_layer("head"), backbone_and_head(parent)[2])
        for gate_file in ("ood.json", "ood.npz"):  # the parent's gate: the same photos of streets
            if (parent.path / gate_file).exists():
                shutil.copy2(parent.path / gate_file, work / gate_file)
        probabilities = fit.probabilities(test_x)
        cities = np.asarray(parent.classes)
        predictions_table(training.paths[test_rows], cities[training.labels[test_rows]],
                          probabilities, parent.classes).to_parquet(work / "predictions.parquet",
                                                                    index=False)
        step("converting the fast path", 0.85)
        fast_ok = fast.ensure_fast(Run(work)).ok
        dataset = scan(parent.info["dataset"]["root"], progress=False)
        metrics = parent.metrics
        save_metrics(work / "predictions.parquet", parent.classes,
                     attach_scenes(dataset.manifest, dataset),
                     ms_per_image=metrics.get("ms_per_image"),
                     extra={"ms_path": metrics.get("ms_path"), "ms_from_parent": True})
        active["seconds"] = round(time.perf_counter() - started, 2)
        info.update(run_id=work.name, name=name, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    parent=parent.id, active=active, status="complete",
                    recipe={**(parent.info.get("recipe") or {}), "head": fit.summary()},
                    timings={"train_seconds": active["seconds"], "fast_path": fast_ok})
        write_json_atomic(work / "run.json", info)
    except BaseException:
        runs.discard_run(work)
        raise
    return Run(runs.publish_run(work))
