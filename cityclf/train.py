"""Training: a dataset and a zoo member in, a published, comparable run out.

Every run uses the dataset's saved split (the test images are never seen while training or
choosing epochs), records every setting, and is scored from its own predictions file. Transfer
models train in two stages: the head on cached embeddings of the frozen backbone (fast), then
optionally the top backbone layers; the stages themselves are in cityclf.stages.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import __version__, fast, ood, runs, zoo
from .datasets import scan
from .fileio import write_json_atomic
from .metrics import predictions_table, save_metrics
from .pipeline import Preprocess, load_images
from .quality import flagged_paths
from .scenes import attach_scenes
from .splits import load_split, split_info
from .stages import FINE_TUNE_LR_FACTOR, OPTIMIZERS, STAGES, fit_images, plan, train_transfer

STRATEGIES = ("mirrored", "multiworker")
RECIPES = ("auto", "fast", "manual")
# The default recipe's model: two offline backbones side by side, at the larger one's native size.
AUTO_MODEL, FAST_MODEL = "fusion", "mobilenet_v2"
BUDGET_RESERVE = 0.25  # share of the budget kept for testing, the fast path and the OOD gate


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


def distribution_scope(strategy: str | None):
    """The scope models are built and compiled in: tf.distribute for several devices or hosts."""
    if strategy is None:
        return contextlib.nullcontext()
    import tensorflow as tf
    chosen = (tf.distribute.MirroredStrategy() if strategy == "mirrored"
              else tf.distribute.MultiWorkerMirroredStrategy())
    return chosen.scope()


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
                timings["embed_seconds"] = train_transfer(
                    zoo_model, cfg, dataset.id, paths, labels, parts, work, progress,
                    deadline, info["recipe"])
                if cfg.fine_tune_layers:
                    zoo_model.unfreeze_top(cfg.fine_tune_layers)
                    fit_images(zoo_model, cfg, paths, labels, parts, work, "finetune",
                                cfg.lr * FINE_TUNE_LR_FACTOR, cfg.fine_tune_epochs, progress)
            else:
                if zoo_model.backbone is not None:  # a transfer member from scratch: train it all
                    zoo_model.backbone.trainable = True
                fit_images(zoo_model, cfg, paths, labels, parts, work, "train", cfg.lr,
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
