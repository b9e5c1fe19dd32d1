"""Training: a dataset and a zoo member in, a published, comparable run out.

Every run uses the dataset's saved split (the test images are never seen while training or
choosing epochs), records every setting, and is scored from its own predictions file. Transfer
models train in two stages: the head on cached embeddings of the frozen backbone (fast), then
optionally the top backbone layers through the full image pipeline at a lower learning rate.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import itertools
import platform
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import __version__, fast, finetune, ood, runs, zoo
from .datasets import scan
from .embeddings import embed
from .head import fit_head, set_head_weights
from .fileio import write_json_atomic
from .metrics import predictions_table, save_metrics
from .pipeline import Augment, Preprocess, load_images, make_dataset
from .quality import flagged_paths
from .scenes import attach_scenes
from .splits import load_split, split_info

OPTIMIZERS = ("adam", "sgd", "rmsprop")
STRATEGIES = ("mirrored", "multiworker")
FINE_TUNE_LR_FACTOR = 0.1
RECIPES = ("auto", "fast", "manual")
# The default recipe's model: two offline backbones side by side, at the larger one's native size.
AUTO_MODEL, FAST_MODEL = "fusion", "mobilenet_v2"
# Below this many training photos per city fine-tuning is not tried: the top of a backbone has
# ~2 M weights. It paid on real photos (+5.6 points, ~4,700 per city) and on the demo (~210 per
# city: top-1 0.610 -> 0.645, bench/finetune.py); the validation check guards every case above.
MIN_FINE_TUNE_PER_CITY = 100
BUDGET_RESERVE = 0.25  # share of the budget kept for testing, the fast path and the OOD gate
# An epoch of fine-tuning on cached cut features, in passes of the cut-feature extraction over
# the same images (measured on the demo: about 1.2; the extraction runs in LiteRT).
FINE_TUNE_EPOCH_COST = 1.5


@dataclass
class TrainConfig:
    """Every setting of a training run; stored in run.json so a run can be resumed or repeated."""

    data: str
    model: str | None = None  # None: the recipe chooses
    img_size: int | None = None  # None: the model's default size
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    crop_bottom: float = 0.0
    grayscale: bool = False
    augment: bool = False
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 3
    split: str = "sequence"
    name: str | None = None
    seed: int = 0
    weights: str | None = "imagenet"
    patience: int = 3
    strategy: str | None = None
    study: str | None = None
    drop_outliers: bool = False
    recipe: str | None = None  # auto (the default without a model), fast, or manual
    members: list[str] | None = None  # fusion's backbones (None: zoo.DEFAULT_FUSION)
    class_weights: bool = False  # weigh every city alike, however many images each has
    budget_minutes: float = 14.0  # the auto recipe fine-tunes only within this

    def __post_init__(self):
        self.recipe = self.recipe or ("manual" if self.model else "auto")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}")
        self.model = self.model or {"auto": AUTO_MODEL, "fast": FAST_MODEL}.get(self.recipe)
        if self.model not in zoo.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(zoo.MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.strategy not in (None, *STRATEGIES):
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be at least 1 and lr positive")
        self.img_size = self.img_size or zoo.MODELS[self.model].default_img_size
        self.data = str(Path(self.data).expanduser().resolve())

    @property
    def build_options(self) -> dict:
        """Extra arguments of the zoo member's builder."""
        if zoo.MODELS[self.model].kind == "sklearn":
            return {"seed": self.seed, "class_weight": "balanced" if self.class_weights else None}
        return {"members": self.members} if self.model == "fusion" and self.members else {}

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.img_size, self.crop_bottom, self.grayscale)

    @property
    def two_stage(self) -> bool:
        """Transfer members with pretrained weights: head on cached embeddings first."""
        return zoo.MODELS[self.model].transfer and self.weights == "imagenet"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def make_optimizer(name: str, lr: float):
    return {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
            "rmsprop": keras.optimizers.RMSprop}[name](learning_rate=lr)


def distribution_scope(strategy: str | None):
    """The scope models are built and compiled in: tf.distribute for several devices or hosts."""
    if strategy is None:
        return contextlib.nullcontext()
    import tensorflow as tf
    chosen = (tf.distribute.MirroredStrategy() if strategy == "mirrored"
              else tf.distribute.MultiWorkerMirroredStrategy())
    return chosen.scope()


class HistoryLogger(keras.callbacks.Callback):
    """Appends one row per epoch to a stage's history file; appending survives resumes."""

    def __init__(self, path: Path, stage: str):
        super().__init__()
        self.path, self.stage, self.started = path, stage, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"stage": self.stage, "epoch": epoch + 1,
               "seconds": round(time.perf_counter() - self.started, 3),
               **{k: float(v) for k, v in (logs or {}).items()}}
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


STAGES = ("head", "train", "finetune")  # the order stages run in


def _callbacks(work: Path, stage: str, patience: int):
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                      restore_best_weights=True),
        # The log before the checkpoint: a kill between the two repeats an epoch on resume (the
        # repeat replaces its row) instead of leaving it out of the history.
        HistoryLogger(work / f".history-{stage}.csv", stage),
        # Two checkpoints: a kill while one is written leaves the previous one to resume from.
        keras.callbacks.BackupAndRestore(str(work / "checkpoint" / stage), double_checkpoint=True),
        keras.callbacks.TensorBoard(log_dir=str(work / "tensorboard" / stage)),
    ]


def _compile(model, cfg: TrainConfig, lr: float, n_classes: int) -> None:
    model.compile(optimizer=make_optimizer(cfg.optimizer, lr),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
                      k=min(5, n_classes), name="top5")])


def _ms_per_image(zoo_model, images: np.ndarray, repeats: int = 3) -> float:
    """Inference time of the deployed model on a batch, after a warm-up call."""
    zoo_model.predict_proba(images[:2])
    best = min(_timed(zoo_model.predict_proba, images) for _ in range(repeats))
    return round(1000 * best / len(images), 3)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _versions() -> dict:
    import sklearn
    import tensorflow as tf
    return {"cityclf": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def train(cfg: TrainConfig, progress: bool = True, resume: str | None = None) -> runs.Run:
    """Train `cfg` into a new run (or continue the interrupted run `resume`) and publish it."""
    started = time.perf_counter()
    dataset = scan(cfg.data, progress=progress)
    table = load_split(dataset, cfg.split)
    classes = sorted(table["city"].unique())
    labels = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    split = table["split"].to_numpy()
    # Outliers leave training and validation only: the test set stays the same for every run.
    dropped = table["path"].isin(flagged_paths(dataset, progress)).to_numpy() & (split != "test") \
        if cfg.drop_outliers else np.zeros(len(table), bool)
    parts = {name: np.flatnonzero((split == name) & ~dropped) for name in ("train", "val", "test")}
    empty = [name for name, rows in parts.items() if not len(rows)]
    if empty:
        raise ValueError(f"the {cfg.split} split of {dataset.root} has no {' or '.join(empty)} images; "
                         "re-split with `cityclf data split ROOT --val F --test F`")
    pre = cfg.preprocess
    spec = zoo.MODELS[cfg.model]
    keras.utils.set_random_seed(cfg.seed)
    random.seed(cfg.seed)

    deadline = time.monotonic() + 60 * cfg.budget_minutes * (1 - BUDGET_RESERVE)
    work = runs.get_run(resume, partial=True).path if resume else runs.start_run(cfg.name or cfg.model)
    info = {
        "run_id": work.name, "name": cfg.name or f"{cfg.model} {cfg.img_size}px", "model": cfg.model, "kind": spec.kind,
        "transfer": spec.transfer, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
        "config": asdict(cfg), "classes": classes, "preprocess": asdict(pre),
        "dataset": {"id": dataset.id, "root": str(dataset.root), "layout": dataset.layout,
                    "n_images": len(dataset.manifest)},
        "split": {**split_info(dataset, cfg.split),
                  "counts": {name: int(len(rows)) for name, rows in parts.items()}},
        "seed": cfg.seed, "study": cfg.study, "versions": _versions(),
        "dropped_outliers": int(dropped.sum()),
    }
    write_json_atomic(work / "run.json", info)
    paths = table["path"].to_numpy()
    timings = {}
    try:
        with distribution_scope(cfg.strategy):
            zoo_model = zoo.build(cfg.model, len(classes), cfg.img_size, weights=cfg.weights,
                                  **cfg.build_options)
            info["recipe"] = plan(cfg, zoo_model, len(parts["train"]), len(classes))
            fit_start = time.perf_counter()
            if spec.kind == "sklearn":
                images, rows = load_images(paths[parts["train"]], pre)
                zoo_model.estimator.fit(images, labels[parts["train"]][rows])
            elif cfg.two_stage:
                timings["embed_seconds"] = _train_transfer(
                    zoo_model, cfg, dataset.id, paths, labels, parts, work, progress,
                    deadline, info["recipe"])
                if cfg.fine_tune_layers:
                    zoo_model.unfreeze_top(cfg.fine_tune_layers)
                    _fit_images(zoo_model, cfg, paths, labels, parts, work, "finetune",
                                cfg.lr * FINE_TUNE_LR_FACTOR, cfg.fine_tune_epochs, progress)
            else:
                if zoo_model.backbone is not None:  # a transfer member from scratch: train it all
                    zoo_model.backbone.trainable = True
                _fit_images(zoo_model, cfg, paths, labels, parts, work, "train", cfg.lr,
                            cfg.epochs, progress)
            timings["train_seconds"] = round(time.perf_counter() - fit_start, 2)

        eval_start = time.perf_counter()
        test_images, rows = load_images(paths[parts["test"]], pre)
        probabilities = zoo_model.predict_proba(test_images, batch_size=cfg.batch_size)
        test_rows = parts["test"][rows]
        predictions = predictions_table(paths[test_rows], table["city"].to_numpy()[test_rows],
                                        probabilities, classes)
        predictions.to_parquet(work / "predictions.parquet", index=False)
        ms = _ms_per_image(zoo_model, test_images[:32])
        save_metrics(work / "predictions.parquet", classes, attach_scenes(dataset.manifest, dataset),
                     ms_per_image=ms)
        timings["eval_seconds"] = round(time.perf_counter() - eval_start, 2)

        _save_model(zoo_model, work)
        info["ood"] = _fit_gate(work, paths, parts, pre, progress)
        if zoo_model.kind == "keras":
            timings["fast_path"] = fast.ensure_fast(runs.Run(work)).ok  # verified against Keras
        _finish_history(work)
        shutil.rmtree(work / "checkpoint", ignore_errors=True)  # only needed to resume
        (work / "transfer.weights.h5").unlink(missing_ok=True)
        info.update(status="complete", params=zoo_model.params, timings={
            **timings, "total_seconds": round(time.perf_counter() - started, 2)},
            val_accuracy=_best_val_accuracy(work))
        write_json_atomic(work / "run.json", info)
        _write_hparams(work, cfg, info["val_accuracy"])
    except OSError as err:
        if err.errno == errno.ENOSPC:  # a checkpoint written on a full disk cannot be trusted
            runs.discard_run(work)
            raise OSError(err.errno, f"disk full while writing run {work.name}; its partial "
                                     "folder was removed, free some space and train again") from None
        raise
    return runs.Run(runs.publish_run(work))


def plan(cfg: TrainConfig, zoo_model, n_train: int, n_classes: int) -> dict:
    """What the recipe chose, and why, for run.json. The auto recipe fine-tunes the top of the
    first backbone on cached features when there are enough photos per city (and later, when the
    budget allows and the validation loss improves)."""
    choices = {"recipe": cfg.recipe, "model": cfg.model, "img_size": cfg.img_size,
               "backbones": [name for name, _ in zoo_model.parts],
               "budget_minutes": cfg.budget_minutes}
    if cfg.recipe != "auto" or not cfg.two_stage:
        choices["fine_tune"] = f"not in the {cfg.recipe} recipe" if cfg.recipe != "auto" \
            else "no pretrained backbone"
    elif n_train / n_classes < MIN_FINE_TUNE_PER_CITY:
        choices["fine_tune"] = (f"skipped: {n_train / n_classes:.0f} training images per city, "
                                f"fewer than {MIN_FINE_TUNE_PER_CITY}")
    else:
        choices["fine_tune"] = f"top of {zoo_model.parts[0][0]} on cached features"
        choices["fine_tune_part"] = 0
    return choices


def _train_transfer(zoo_model, cfg, dataset_id, paths, labels, parts, work, progress,
                    deadline: float, choices: dict) -> float:
    """The head on cached embeddings (solved exactly, see cityclf.head); then, when the recipe
    asks and the budget allows, the top of one backbone on cached cut features, kept only if the
    validation loss improves. Returns the seconds spent embedding."""
    done = work / "transfer.weights.h5"
    if done.exists():  # resumed after these stages had finished
        zoo_model.model.load_weights(done)
        return 0.0
    fit_rows = np.concatenate([parts["train"], parts["val"]])
    is_train = np.arange(len(fit_rows)) < len(parts["train"])
    tuned = choices.get("fine_tune_part")
    start = time.perf_counter()
    blocks, ok, features = [], np.ones(len(fit_rows), bool), None
    for i, (name, part) in enumerate(zoo_model.parts):
        if i == tuned:
            features, vectors, readable, speed = finetune.cut_features(
                part, paths[fit_rows], cfg.preprocess, cfg.batch_size, progress)
            choices["fine_tune_feature_images_per_s"] = round(speed, 1)
        else:
            vectors, readable = embed(part, f"{name}-{cfg.weights}", dataset_id, paths[fit_rows],
                                      cfg.preprocess, cfg.batch_size, progress)
        blocks.append(vectors)
        ok &= readable
    seconds = round(time.perf_counter() - start, 2)
    y = labels[fit_rows]
    train_ok, val_ok = ok & is_train, ok & ~is_train

    def fit():
        x = np.hstack(blocks)
        result = fit_head(x[train_ok], y[train_ok], x[val_ok], y[val_ok], zoo_model.n_classes,
                          balanced=cfg.class_weights)
        set_head_weights(zoo_model.head, result)
        return result

    head_fit = fit()
    best = min(head_fit.search, key=lambda row: row["val_loss"])
    _log_stage(work, "head", best)
    choices["head"] = head_fit.summary()
    if tuned is not None:
        # Kept only if it pays: the head solved again on the tuned embeddings must beat the
        # head on the frozen ones, both on validation log-loss with C chosen alike. (Fine-tuned
        # softmax outputs are overconfident, so comparing them as they come would be unfair.)
        before, frozen = [w.numpy() for w in zoo_model.model.weights], blocks[tuned]
        top = _fine_tune(zoo_model, cfg, features, blocks, tuned, y, train_ok, val_ok, work,
                         progress, deadline, choices)
        if top is not None:
            blocks[tuned] = top.predict(features, batch_size=64, verbose=0)
            tuned_fit = fit()
            after = min(tuned_fit.search, key=lambda row: row["val_loss"])
            kept = after["val_loss"] < best["val_loss"]
            choices["fine_tune_result"].update(
                kept=kept, val_loss=after["val_loss"], val_accuracy=after["val_accuracy"],
                head_only_val_loss=best["val_loss"], head_only_val_accuracy=best["val_accuracy"])
            if kept:
                choices["head"] = tuned_fit.summary()
            else:
                blocks[tuned] = frozen
                for variable, value in zip(zoo_model.model.weights, before):
                    variable.assign(value)
    partial = done.with_name(".transfer.partial.weights.h5")
    zoo_model.model.save_weights(partial)
    partial.replace(done)  # a kill mid-write must not leave a stage marker with bad weights
    return seconds


def _fine_tune(zoo_model, cfg, features, blocks, tuned, y, train_ok, val_ok, work, progress,
               deadline, choices):
    """Train the top of part ``tuned`` and the head on cached features; returns the trained
    top model, or None when the budget leaves no time for an epoch."""
    speed = choices.get("fine_tune_feature_images_per_s") or 1.0
    estimate = FINE_TUNE_EPOCH_COST * train_ok.sum() / speed
    if time.monotonic() + estimate > deadline:
        choices["fine_tune_result"] = {"kept": False,
                                       "skipped": f"budget: one epoch would take ~{estimate:.0f} s"}
        return None
    _, top = finetune.split(zoo_model.parts[tuned][1])
    choices["fine_tune_layers_trained"] = finetune.make_trainable(top)
    model = finetune.stacked_model(top, zoo_model.head, tuned, [b.shape[1] for b in blocks])
    inputs = [features] + [b for i, b in enumerate(blocks) if i != tuned]
    _compile(model, cfg, cfg.lr * FINE_TUNE_LR_FACTOR, zoo_model.n_classes)
    stop = finetune.Deadline(deadline)
    model.fit([x[train_ok] for x in inputs], y[train_ok],
              validation_data=([x[val_ok] for x in inputs], y[val_ok]),
              class_weight=_class_weights(cfg, y[train_ok], zoo_model.n_classes),
              epochs=cfg.fine_tune_epochs, batch_size=cfg.batch_size, verbose=int(progress),
              callbacks=_callbacks(work, "finetune", cfg.patience) + [stop])
    choices["fine_tune_result"] = {"stopped_by_budget": stop.stopped_early}
    for layer in top.layers:
        layer.trainable = False
    return top


def _class_weights(cfg: TrainConfig, y: np.ndarray, n_classes: int) -> dict[int, float] | None:
    """Keras' class_weight for ``--class-weights``: n / (k * count) per city, as scikit-learn's
    "balanced" (every class a key, as Keras wants; 1 for a city without training images)."""
    if not cfg.class_weights:
        return None
    counts = np.bincount(y, minlength=n_classes)
    present = int((counts > 0).sum())
    return {c: len(y) / (present * n) if n else 1.0 for c, n in enumerate(counts.tolist())}


def _log_stage(work: Path, stage: str, row: dict) -> None:
    """One history row for a stage solved in one step (the head's chosen C)."""
    logger = HistoryLogger(work / f".history-{stage}.csv", stage)
    logger.on_epoch_begin(0)
    logger.on_epoch_end(0, {k: v for k, v in row.items() if k != "C"})


def _fit_images(zoo_model, cfg, paths, labels, parts, work, stage, lr, epochs, progress) -> None:
    """Train the whole Keras model through the image pipeline (with augmentation if asked)."""
    pre = cfg.preprocess
    even = cfg.strategy is not None  # replicas need batches they can split evenly
    train_ds = make_dataset(paths[parts["train"]], labels[parts["train"]], pre, cfg.batch_size,
                            augmentation=Augment() if cfg.augment else None, shuffle=True,
                            seed=cfg.seed, drop_remainder=even)
    val_ds = make_dataset(paths[parts["val"]], labels[parts["val"]], pre, cfg.batch_size,
                          drop_remainder=even)
    _compile(zoo_model.model, cfg, lr, zoo_model.n_classes)
    with warnings.catch_warnings():
        # The pipeline may skip undecodable files, so its length is unknown until the first
        # epoch ends; Keras warns about that, harmlessly.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        zoo_model.model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False,
                            class_weight=_class_weights(cfg, labels[parts["train"]],
                                                        zoo_model.n_classes),
                            verbose=int(progress), callbacks=_callbacks(work, stage, cfg.patience))


def _fit_gate(work: Path, paths, parts, pre, progress) -> dict:
    """The run's "none of these cities" gate (cityclf.ood), fitted on its own photos. A run
    without one still predicts, so a failure is recorded, not raised."""
    try:
        return ood.fit_gate(work, paths[parts["train"]], paths[parts["val"]], pre, progress)
    except ValueError as err:
        return {"error": str(err)}


def _save_model(zoo_model, work: Path) -> None:
    if zoo_model.kind == "sklearn":
        import joblib
        joblib.dump(zoo_model.estimator, work / "model.joblib")
    else:
        zoo_model.model.save(work / "model.keras")


def _finish_history(work: Path) -> None:
    """history.csv: every stage's epochs in order, the last record of an epoch winning on resume."""
    files = [work / f".history-{stage}.csv" for stage in STAGES]
    # A kill can cut the last line short: skip it rather than fail the resumed run.
    parts = [pd.read_csv(p, on_bad_lines="skip") for p in files if p.exists()]
    if parts:
        history = pd.concat(parts).drop_duplicates(["stage", "epoch"], keep="last")
        history.to_csv(work / "history.csv", index=False)
    for p in files:
        p.unlink(missing_ok=True)


def _best_val_accuracy(work: Path) -> float | None:
    path = work / "history.csv"
    if not path.exists():
        return None
    history = pd.read_csv(path)
    return float(history["val_accuracy"].max()) if "val_accuracy" in history else None


def _write_hparams(work: Path, cfg: TrainConfig, val_accuracy: float | None) -> None:
    """The TensorBoard HParams plugin's record: this run's settings and its best val accuracy."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp
    values = {k: v for k, v in asdict(cfg).items()
              if isinstance(v, (int, float, str, bool)) and k not in ("data", "name", "study")}
    with tf.summary.create_file_writer(str(work / "tensorboard" / "hparams")).as_default():
        hp.hparams(values, trial_id=work.name)
        if val_accuracy is not None:
            tf.summary.scalar("val_accuracy", val_accuracy, step=1)


def tune(base: TrainConfig, grid: dict[str, list], trials: int | None = None, seed: int = 0,
         progress: bool = True) -> list[runs.Run]:
    """One run per point of the grid (or `trials` points drawn from it), grouped in one study."""
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    if trials is not None and trials < len(points):
        points = random.Random(seed).sample(points, trials)
    study = runs.new_run_id(f"study-{base.model}")
    done = []
    for i, point in enumerate(points, 1):
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        print(f"trial {i}/{len(points)}: {label}")
        cfg = replace(base, **point, study=study, name=f"{base.name or base.model} [{label}]")
        done.append(train(cfg, progress=progress))
    return done
