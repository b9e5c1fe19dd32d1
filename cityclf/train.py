"""Training: a dataset and a zoo member in, a published, comparable run out.

Every run uses the dataset's saved split (the test images are never seen while training or
choosing epochs), records every setting, and is scored from its own predictions file. Transfer
models train in two stages: the head on cached embeddings of the frozen backbone (fast), then
optionally the top backbone layers; the stages themselves are in cityclf.stages.

With ``--strategy multiworker`` the hosts listed in TF_CONFIG train one run together (image
models step by step, transfer models by sharing the embedding); the chief, worker 0, alone
writes and publishes it.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import os
import platform
import random
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import __version__, fast, ood, runs, zoo
from .datasets import scan
from .embeddings import embed
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
# Workers are often started by hand, one host after another: wait this long for all of them.
JOIN_TIMEOUT_S = 600
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                     '"task": {"type": "worker", "index": I}}\' with I this host\'s place in the '
                     'list (0: the chief, which saves the run)')


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
    gan_augment: str | None = None  # a GAN run (cityclf.gan) whose images join training only
    gan_ratio: float = 0.25  # generated images per real training image of each city

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
        if self.gan_augment and not 0 < self.gan_ratio <= 10:
            raise ValueError(f"gan_ratio must be above 0 and at most 10, not {self.gan_ratio}")
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


@dataclass(frozen=True)
class Cluster:
    """This host's place among the workers of TF_CONFIG; worker 0 is the chief."""

    peers: tuple[str, ...]  # "host:port" of every worker
    rank: int

    @classmethod
    def from_env(cls) -> "Cluster":
        """The cluster of $TF_CONFIG; a ValueError that shows what it should look like."""
        problem = "is not set"
        if os.environ.get("TF_CONFIG"):
            try:
                spec = json.loads(os.environ["TF_CONFIG"])
                peers, task = tuple(spec["cluster"]["worker"]), spec["task"]
                if (task.get("type") == "worker" and 0 <= task["index"] < len(peers)
                        and all(":" in str(peer) for peer in peers)):
                    return cls(peers, task["index"])
                problem = "has no worker list with this task's index in it"
            except (ValueError, KeyError, TypeError, AttributeError):
                problem = "is not valid"
        raise ValueError(f"--strategy multiworker: TF_CONFIG {problem}; set "
                         f"{TF_CONFIG_EXAMPLE}")

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def unreachable(self) -> list[str]:
        """The other workers whose port does not answer (not started, killed, or host down)."""
        lost = []
        for i, peer in enumerate(self.peers):
            host, port = peer.rsplit(":", 1)
            if i != self.rank:
                try:
                    socket.create_connection((host, int(port)), timeout=2).close()
                except OSError:
                    lost.append(f"worker {i} ({peer}{', the chief' if i == 0 else ''})")
        return lost

    def wait_for_peers(self) -> None:
        """TF's start-up waits for every worker, forever and deaf to Ctrl-C and SIGTERM: wait
        here instead, where a missing worker can be named, answering on our own port meanwhile."""
        port = int(self.peers[self.rank].rsplit(":", 1)[1])
        try:
            listener = socket.create_server(("", port))
        except OSError as err:
            raise OSError(err.errno, f"worker {self.rank} cannot listen on port {port} of "
                                     f"TF_CONFIG: {err.strerror}") from None
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        with listener:
            while lost := self.unreachable():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{', '.join(lost)} did not start within {JOIN_TIMEOUT_S} s:"
                                       " run the same `cityclf train` on every host of TF_CONFIG")
                time.sleep(0.5)


@functools.cache
def _strategy(name: str | None, cluster: Cluster | None):
    """One tf.distribute strategy per process: TensorFlow configures multi-worker collectives
    once, at start-up (a study trains several runs in one process)."""
    if name is None:
        return None
    import tensorflow as tf
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()

    class MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            """Keras 3 reduces a whole (images, labels) batch in one call, and scalar logs along
            axis 0 (keras-team/keras#20585): this strategy takes one tensor of a rank at a time."""
            def one(v):
                rank = self.experimental_local_results(v)[0].shape.rank
                return super(MultiWorker, self).reduce(reduce_op, v, axis if rank else None)
            return tf.nest.map_structure(one, value)

    cluster.wait_for_peers()
    # A killed worker is noticed by TensorFlow's heartbeats (about 10 s), which abort collectives
    # everywhere; CommunicationOptions' per-collective timeout is for debugging (a thread each).
    return MultiWorker()


def _barrier(strategy) -> None:
    """Returns once every worker has called it (a sum over all of them)."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def all_workers():
        return strategy.reduce("SUM", strategy.run(tf.ones, ((),)), axis=None)

    all_workers()


def _embed_share(zoo_model, cfg: TrainConfig, dataset_id: str, paths, cluster: Cluster,
                 skip: int | None, progress: bool) -> None:
    """This worker's share of the embeddings train_transfer reads, into the shared cache (the
    part fine-tuned on cut features, `skip`, is not cached: the chief extracts those itself)."""
    share = paths[cluster.rank::len(cluster.peers)]
    for i, (name, part) in enumerate(zoo_model.parts):
        if i != skip:
            embed(part, f"{name}-{cfg.weights}", dataset_id, share, cfg.preprocess,
                  cfg.batch_size, progress)


def _ms_per_image(zoo_model, images: np.ndarray, repeats: int = 3) -> float:
    """Inference time of the deployed model on a batch, after a warm-up call."""
    zoo_model.predict_proba(images[:2])
    best = min(_timed(zoo_model.predict_proba, images) for _ in range(repeats))
    return round(1000 * best / len(images), 3)


def _latency(zoo_model, run: runs.Run, images: np.ndarray) -> tuple[float, dict]:
    """ms/image of what predictions use (the verified fast path when there is one, as
    inference.best_predictor chooses), timed alike for every run; Keras' time as a second
    figure, so one number means the same on the Leaderboard, in `cityclf runs` and on Predict."""
    fast_predictor = fast.load_fast_predictor(run) if zoo_model.kind == "keras" else None
    if fast_predictor is None:
        return _ms_per_image(zoo_model, images), {"ms_path": zoo_model.kind}
    return _ms_per_image(fast_predictor, images), {
        "ms_path": "fast", "keras_ms_per_image": _ms_per_image(zoo_model, images)}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _versions() -> dict:
    import sklearn
    import tensorflow as tf
    return {"cityclf": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def train(cfg: TrainConfig, progress: bool = True, resume: str | None = None) -> runs.Run | None:
    """Train `cfg` into a new run (or continue the interrupted run `resume`) and publish it.

    With ``--strategy multiworker`` every host runs this with its own TF_CONFIG: the chief
    (worker 0) publishes the run; the other workers return None and keep nothing."""
    started = time.perf_counter()
    if resume and cfg.strategy == "multiworker":
        raise ValueError(f"run {resume} was trained on several hosts and cannot be resumed: "
                         "train it again")
    cluster = Cluster.from_env() if cfg.strategy == "multiworker" else None
    strategy = _strategy(cfg.strategy, cluster)  # first: it configures TensorFlow's start-up
    chief = cluster is None or cluster.chief
    progress = progress and chief
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
    counts = {name: int(len(rows)) for name, rows in parts.items()}  # real images only
    real_train, generated = parts["train"], None
    if cfg.gan_augment:  # generated images join the training part, never validation or test
        table, parts["train"], generated = _with_generated(cfg, table, classes, parts["train"])
        labels = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pre = cfg.preprocess
    spec = zoo.MODELS[cfg.model]
    keras.utils.set_random_seed(cfg.seed)
    random.seed(cfg.seed)

    deadline = time.monotonic() + 60 * cfg.budget_minutes * (1 - BUDGET_RESERVE)
    if not chief:  # what Keras writes on a worker (checkpoints, logs) goes to a scratch folder
        work = Path(tempfile.mkdtemp(prefix="cityclf-worker-"))
    elif resume:
        work = runs.get_run(resume, partial=True).path
    else:
        work = runs.start_run(cfg.name or cfg.model)
    info = {
        "run_id": work.name, "name": cfg.name or f"{cfg.model} {cfg.img_size}px", "model": cfg.model, "kind": spec.kind,
        "transfer": spec.transfer, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
        "config": asdict(cfg), "classes": classes, "preprocess": asdict(pre),
        "dataset": {"id": dataset.id, "root": str(dataset.root), "layout": dataset.layout,
                    "n_images": len(dataset.manifest)},
        "split": {**split_info(dataset, cfg.split), "counts": counts},
        "seed": cfg.seed, "study": cfg.study, "versions": _versions(),
        "dropped_outliers": int(dropped.sum()), "gan_augment": generated,
    }
    write_json_atomic(work / "run.json", info)
    paths = table["path"].to_numpy()
    timings = {}
    build = functools.partial(zoo.build, cfg.model, len(classes), cfg.img_size,
                              weights=cfg.weights, **cfg.build_options)
    # Several hosts share the embedding of a two-stage transfer run, then the chief trains alone.
    distributed = strategy is not None and spec.kind == "keras" and not (cluster and cfg.two_stage)
    try:
        with strategy.scope() if distributed else contextlib.nullcontext():
            zoo_model = build()
            info["recipe"] = plan(cfg, zoo_model, len(parts["train"]), len(classes))
            fit_start = time.perf_counter()
            if spec.kind == "sklearn":
                if chief:
                    images, rows = load_images(paths[parts["train"]], pre)
                    zoo_model.estimator.fit(images, labels[parts["train"]][rows])
            elif cfg.two_stage:
                if cluster:
                    _embed_share(zoo_model, cfg, dataset.id,
                                 paths[np.concatenate([parts["train"], parts["val"]])], cluster,
                                 info["recipe"].get("fine_tune_part"), progress)
                    _barrier(strategy)  # every share is in the cache
                if chief:
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
        if not chief:
            runs.discard_run(work)
            _barrier(strategy)  # returns when the chief has published the run, raises if it failed
            return None
        if distributed and cluster:
            # A multi-worker model predicts and saves only with every worker taking part: the
            # chief evaluates and saves a copy of it, alone.
            local = build()
            local.model.set_weights(zoo_model.model.get_weights())
            zoo_model = local

        eval_start = time.perf_counter()
        test_images, rows = load_images(paths[parts["test"]], pre)
        probabilities = zoo_model.predict_proba(test_images, batch_size=cfg.batch_size)
        test_rows = parts["test"][rows]
        predictions = predictions_table(paths[test_rows], table["city"].to_numpy()[test_rows],
                                        probabilities, classes)
        predictions.to_parquet(work / "predictions.parquet", index=False)
        timings["eval_seconds"] = round(time.perf_counter() - eval_start, 2)

        _save_model(zoo_model, work)
        info["ood"] = _fit_gate(work, paths, {**parts, "train": real_train}, pre, progress)
        if zoo_model.kind == "keras":
            timings["fast_path"] = fast.ensure_fast(runs.Run(work)).ok  # verified against Keras
        ms, latency = _latency(zoo_model, runs.Run(work), test_images[:32])
        save_metrics(work / "predictions.parquet", classes, attach_scenes(dataset.manifest, dataset),
                     ms_per_image=ms, extra=latency)
        _finish_history(work)
        shutil.rmtree(work / "checkpoint", ignore_errors=True)  # only needed to resume
        (work / "transfer.weights.h5").unlink(missing_ok=True)
        info.update(status="complete", params=zoo_model.params, timings={
            **timings, "total_seconds": round(time.perf_counter() - started, 2)},
            val_accuracy=_best_val_accuracy(work))
        write_json_atomic(work / "run.json", info)
        _write_hparams(work, cfg, info["val_accuracy"])
    except BaseException as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            runs.discard_run(work)  # a checkpoint written on a full disk cannot be trusted
            raise OSError(err.errno, f"disk full while writing run {work.name}; its partial "
                                     "folder was removed, free some space and train again") from None
        if cluster:
            runs.discard_run(work)  # a multiworker run cannot be resumed: leave nothing behind
            if lost := cluster.unreachable():
                raise ConnectionError(
                    f"multiworker training stopped, unreachable (failed, killed, or its host "
                    f"down): {', '.join(lost)}; {f'run {work.name}' if chief else 'the run'} was "
                    "not saved") from err
        raise
    run = runs.Run(runs.publish_run(work))
    if cluster:
        import tensorflow as tf
        with contextlib.suppress(tf.errors.OpError):  # a worker lost now changes nothing
            _barrier(strategy)  # lets the workers finish
    return run


def _with_generated(cfg: TrainConfig, table: pd.DataFrame, classes: list[str],
                    train_rows: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The table with `cfg.gan_augment`'s generated images appended (split "train"), the
    training rows with theirs added, and the record run.json keeps (cityclf.gan)."""
    from .gan import training_images
    real_counts = table["city"].iloc[train_rows].value_counts().to_dict()
    images, record = training_images(cfg.gan_augment, classes, real_counts, cfg.gan_ratio,
                                     cfg.seed)
    rows = np.arange(len(table), len(table) + len(images))
    table = pd.concat([table, images.assign(split="train")], ignore_index=True)
    return table, np.concatenate([train_rows, rows]), record


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
    """One run per point of the grid (or `trials` points drawn from it), grouped in one study
    (none on the workers of ``--strategy multiworker``: their chief publishes the runs)."""
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
        if run := train(cfg, progress=progress):
            done.append(run)
    return done
