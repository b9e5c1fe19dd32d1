"""The fitting stages of a training run, apart from the run's bookkeeping (cityclf.train).

Keras fitting with its callbacks (history that survives resumes, double checkpoints,
TensorBoard); the transfer stages of the recipes: the exact head on cached embeddings
(cityclf.head), then fine-tuning the top of a backbone on cached cut features (cityclf.finetune)
when the plan asks, the data suffices and the budget allows; and training through the image
pipeline.
"""
from __future__ import annotations

import csv
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from . import finetune
from .embeddings import embed_rows
from .embedstore import SideBySide, as_array
from .head import fit_head, fit_head_streaming, needs_streaming, set_head_weights
from .pipeline import Augment, make_dataset

if TYPE_CHECKING:  # only for annotations: cityclf.train imports this module
    from .train import TrainConfig

OPTIMIZERS = ("adam", "sgd", "rmsprop")
FINE_TUNE_LR_FACTOR = 0.1
# Below this many training photos per city fine-tuning is not tried: the top of a backbone has
# ~2 M weights. It paid on real photos (+5.6 points, ~4,700 per city) and on the demo (~210 per
# city: top-1 0.610 -> 0.645, bench/finetune.py); the validation check guards every case above.
MIN_FINE_TUNE_PER_CITY = 100
# An epoch of fine-tuning on cached cut features, in passes of the cut-feature extraction over
# the same images (measured on the demo: about 1.2; the extraction runs in LiteRT).
FINE_TUNE_EPOCH_COST = 1.5


def make_optimizer(name: str, lr: float):
    return {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
            "rmsprop": keras.optimizers.RMSprop}[name](learning_rate=lr)


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


class KnownSteps(keras.callbacks.ProgbarLogger):
    """Keras' progress bar told the epoch's length: the pipeline skips undecodable files, so
    tf.data cannot know it, and Keras would print "Unknown" steps through the first epoch. A
    skipped file leaves the bar a step short of its total, no more."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def set_params(self, params):
        super().set_params({**params, "steps": params.get("steps") or self.steps})


def epoch_steps(n_images: int, batch_size: int, drop_remainder: bool) -> int:
    return n_images // batch_size if drop_remainder else math.ceil(n_images / batch_size)


def callbacks(work: Path, stage: str, patience: int):
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


def compile_model(model, cfg: TrainConfig, lr: float, n_classes: int) -> None:
    model.compile(optimizer=make_optimizer(cfg.optimizer, lr),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
                      k=min(5, n_classes), name="top5")])


def embedding_dim(zoo_model) -> int:
    """Columns of the head's input: every backbone's embedding side by side."""
    return sum(int(part.output.shape[-1]) for _, part in zoo_model.parts)


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
    elif needs_streaming(n_train, embedding_dim(zoo_model)):
        choices["fine_tune"] = (f"skipped: {n_train} training images, too many for their cut "
                                "features in memory (the head streams its embeddings)")
    else:
        choices["fine_tune"] = f"top of {zoo_model.parts[0][0]} on cached features"
        choices["fine_tune_part"] = 0
    return choices


def train_transfer(zoo_model, cfg, dataset_id, paths, labels, parts, work, progress,
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
    # Each backbone's embeddings stay in its store (read lazily) unless it is fine-tuned.
    blocks, ok, features = [], np.ones(len(fit_rows), bool), None
    for i, (name, part) in enumerate(zoo_model.parts):
        if i == tuned:
            features, vectors, readable, speed = finetune.cut_features(
                part, paths[fit_rows], cfg.preprocess, cfg.batch_size, progress)
            choices["fine_tune_feature_images_per_s"] = round(speed, 1)
        else:
            vectors, readable = embed_rows(part, f"{name}-{cfg.weights}", dataset_id,
                                           paths[fit_rows], cfg.preprocess, cfg.batch_size,
                                           progress)
        blocks.append(vectors)
        ok &= readable
    seconds = round(time.perf_counter() - start, 2)
    if tuned is not None:  # fine-tuning feeds the other parts' embeddings too: in memory (plan)
        blocks = [as_array(b) for b in blocks]
    y = labels[fit_rows]
    train_ok, val_ok = ok & is_train, ok & ~is_train

    def fit():
        if needs_streaming(int(train_ok.sum()), embedding_dim(zoo_model)):
            x = SideBySide(blocks) if len(blocks) > 1 else blocks[0]  # none fine-tuned (plan)
            result = fit_head_streaming(x[train_ok], y[train_ok], x[val_ok], y[val_ok],
                                        zoo_model.n_classes, balanced=cfg.class_weights)
        else:
            x = np.hstack([as_array(b) for b in blocks])
            result = fit_head(x[train_ok], y[train_ok], x[val_ok], y[val_ok],
                              zoo_model.n_classes, balanced=cfg.class_weights)
        set_head_weights(zoo_model.head, result)
        return result

    head_fit = fit()
    best = head_fit.chosen
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
            after = tuned_fit.chosen
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
    compile_model(model, cfg, cfg.lr * FINE_TUNE_LR_FACTOR, zoo_model.n_classes)
    stop = finetune.Deadline(deadline)
    model.fit([x[train_ok] for x in inputs], y[train_ok],
              validation_data=([x[val_ok] for x in inputs], y[val_ok]),
              class_weight=class_weights(cfg, y[train_ok], zoo_model.n_classes),
              epochs=cfg.fine_tune_epochs, batch_size=cfg.batch_size, verbose=int(progress),
              callbacks=callbacks(work, "finetune", cfg.patience) + [stop])
    choices["fine_tune_result"] = {"stopped_by_budget": stop.stopped_early}
    for layer in top.layers:
        layer.trainable = False
    return top


def class_weights(cfg: TrainConfig, y: np.ndarray, n_classes: int) -> dict[int, float] | None:
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


def fit_images(zoo_model, cfg, paths, labels, parts, work, stage, lr, epochs, progress) -> None:
    """Train the whole Keras model through the image pipeline (with augmentation if asked)."""
    import tensorflow as tf
    pre = cfg.preprocess
    even = cfg.strategy is not None  # replicas need batches they can split evenly
    # Several hosts share each batch of `cfg.batch_size` images (the global batch); the
    # datasets are made of paths, not files, so they are split by element, not by file. Every
    # host shuffles alike (same seed), so each image lands on one host per epoch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = make_dataset(paths[parts["train"]], labels[parts["train"]], pre, cfg.batch_size,
                            augmentation=Augment() if cfg.augment else None, shuffle=True,
                            seed=cfg.seed, drop_remainder=even).with_options(options)
    val_ds = make_dataset(paths[parts["val"]], labels[parts["val"]], pre, cfg.batch_size,
                          drop_remainder=even).with_options(options)
    compile_model(zoo_model.model, cfg, lr, zoo_model.n_classes)
    with warnings.catch_warnings():
        # The pipeline may skip undecodable files, so its length is unknown to tf.data (the bar
        # is told it: KnownSteps); Keras warns about that, harmlessly.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        zoo_model.model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False,
                            class_weight=class_weights(cfg, labels[parts["train"]],
                                                        zoo_model.n_classes),
                            verbose=int(progress),
                            callbacks=[*callbacks(work, stage, cfg.patience), KnownSteps(
                                epoch_steps(len(parts["train"]), cfg.batch_size, even))])
