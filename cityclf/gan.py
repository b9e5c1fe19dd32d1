"""Generated streets: a class-conditional GAN trained on a dataset's training split, as a run.

The networks and their recipe are in cityclf.gan_networks, the measures in cityclf.gan_quality.
Images are never flipped: a mirrored street drives on the other side of the road.

A GAN run is a run (cityclf.runs, ``kind: "gan"``): built in models/.partial, published by an
atomic rename, every setting in run.json, checkpointed every epoch (``eval_every`` steps) by
Keras' BackupAndRestore with a double checkpoint so that a kill -9 loses at most one epoch,
TensorBoard logs, and the generator exported as generator.keras. Quality is measured as it
trains: a Fréchet distance to real held-out images after every epoch, and at the end a
classifier run's top-1 on generated images.
"""
from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from io import BytesIO
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import config, gan_quality, runs
from .datasets import scan
from .fileio import write_bytes_atomic, write_json_atomic
from .gan_networks import ConditionalGAN, generate
from .pipeline import Preprocess, load_images, make_dataset
from .splits import load_split, split_info

SIZES = (32, 64, 128)  # square sizes the networks are built for (4 px doubled 3, 4 or 5 times)
# Chosen so that the demo (8 cities, 1,651 training images) trains at 64 px within 20 minutes
# on 2 CPU cores: 8.5 min on a quiet machine, 15 min beside other jobs (bench/gan.py). A GPU
# takes more steps, a larger batch and wider networks.
DEFAULT_STEPS, DEFAULT_BATCH, DEFAULT_WIDTH, DEFAULT_EVAL_EVERY = 2000, 32, 16, 100
MAX_EVAL_PER_CITY = 250  # held-out images per city the distance uses: bounds its cost on MSLS
SAMPLE_COLUMNS = 8  # samples per city in each grid
GENERATOR_FILE = "generator.keras"


@dataclass
class GanConfig:
    """Every setting of a GAN run; stored in run.json so that it can be resumed or repeated."""

    data: str
    img_size: int = 64
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH
    width: int = DEFAULT_WIDTH  # channels at the full image size; coarser layers have multiples
    lr: float = 2e-4
    eval_every: int = DEFAULT_EVAL_EVERY  # steps per epoch: one checkpoint and one distance each
    split: str = "sequence"
    seed: int = 0
    name: str | None = None
    classifier: str | None = None  # the run whose top-1 on generated images is recorded

    def __post_init__(self):
        if self.img_size not in SIZES:
            raise ValueError(f"img_size must be one of {', '.join(map(str, SIZES))} px, "
                             f"not {self.img_size}")
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 2 or self.width < 4:
            raise ValueError("steps and eval_every must be at least 1, batch_size 2, width 4")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, not {self.lr}")
        self.eval_every = min(self.eval_every, self.steps)
        self.steps = self.epochs * self.eval_every  # whole epochs: one checkpoint ends each
        self.data = str(Path(self.data).expanduser().resolve())

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.eval_every)

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# ------------------------------------------------------------------------------ sampling

@functools.lru_cache(maxsize=2)
def _load(path: str, stamp: int) -> keras.Model:
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def load_generator(run: runs.Run) -> keras.Model:
    """The run's exported generator, loaded once per file (safe mode: no code from the file)."""
    path = run.path / GENERATOR_FILE
    try:
        return _load(str(path), path.stat().st_mtime_ns)
    except Exception as err:  # noqa: BLE001 - any failure to load means an unusable file
        raise runs.RunError(f"run {run.id}: {GENERATOR_FILE} is missing or unreadable "
                            f"({err.__class__.__name__})") from None


def city_index(run: runs.Run, city: str) -> int:
    if city not in run.classes:
        raise ValueError(f"GAN run {run.id} knows no city {city!r}; it knows "
                         f"{', '.join(run.classes)}")
    return run.classes.index(city)


def sample(run: str | runs.Run, city: str, n: int = 16, seed: int = 0) -> np.ndarray:
    """n generated streets of `city` as (n, s, s, 3) uint8."""
    run = run if isinstance(run, runs.Run) else runs.get_run(run, kind="gan")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return generate(load_generator(run), np.full(n, city_index(run, city)), seed)


def sheet(images: np.ndarray, columns: int = SAMPLE_COLUMNS, gap: int = 2) -> np.ndarray:
    """Images side by side, `columns` to a row, on white, as one uint8 picture."""
    if columns < 1:
        raise ValueError(f"columns must be at least 1, not {columns}")
    n, size = len(images), images.shape[1]
    rows = math.ceil(n / columns)
    grid = np.full((rows * (size + gap) - gap, min(n, columns) * (size + gap) - gap, 3), 255,
                   np.uint8)
    for i, image in enumerate(images):
        top, left = (i // columns) * (size + gap), (i % columns) * (size + gap)
        grid[top:top + size, left:left + size] = image
    return grid


def save_picture(picture: np.ndarray, out: str | Path) -> Path:
    """A uint8 RGB array as a PNG or JPEG file (by its suffix), written atomically."""
    from PIL import Image
    out = Path(out)
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if out.suffix.lower() not in formats:
        raise ValueError(f"{out}: the picture is written as .png or .jpg, not {out.suffix!r}")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} is not a folder")
    buffer = BytesIO()
    Image.fromarray(picture).save(buffer, formats[out.suffix.lower()])
    write_bytes_atomic(out, buffer.getvalue())
    return out


# --------------------------------------------------------------------------- training images

def training_images(gan_run: str, cities: list[str], train_counts: dict[str, int],
                    ratio: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Generated images for `cityclf train --gan-augment`: round(ratio × real training images)
    of each city, as PNG files (path, city) and the record run.json keeps.

    The files live in the cache under the GAN run and seed, image i of a city always from the
    same noise, so a later run with the same seed and as many or fewer images reuses them."""
    run = runs.get_run(gan_run, kind="gan")
    if sorted(run.classes) != sorted(cities):
        raise ValueError(f"GAN run {run.id} was trained on other cities "
                         f"({', '.join(run.classes)}) than the dataset's ({', '.join(cities)}): "
                         "train a GAN on this dataset with `cityclf gan train --data ROOT`")
    per_city = {city: int(round(ratio * train_counts.get(city, 0))) for city in cities}
    folder = config.cache_dir() / "gan" / run.id / f"seed-{seed}"
    rows = []
    for city, count in per_city.items():
        files = [folder / city / f"{i:05d}.png" for i in range(count)]
        missing = [i for i, path in enumerate(files) if not path.is_file()]
        if missing:
            (folder / city).mkdir(parents=True, exist_ok=True)
            label = city_index(run, city)
            images = generate(load_generator(run), np.full(count, label),
                              seed=seed * 1000 + label)
            for i in missing:
                save_picture(images[i], files[i])
        rows += [(str(path), city) for path in files]
    record = {"run": run.id, "ratio": ratio, "seed": seed, "per_city": per_city,
              "n_images": sum(per_city.values()), "folder": str(folder)}
    return pd.DataFrame(rows, columns=["path", "city"]), record


# ------------------------------------------------------------------------------ training

def train_gan(cfg: GanConfig, progress: bool = True, resume: str | None = None) -> runs.Run:
    """Train `cfg` into a new GAN run (or continue the interrupted run `resume`), measure it
    and publish it."""
    started = time.perf_counter()
    dataset = scan(cfg.data, progress=progress)
    table = load_split(dataset, cfg.split)
    classes = sorted(table["city"].unique())
    labels = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    split, paths = table["split"].to_numpy(), table["path"].to_numpy()
    train_rows = np.flatnonzero(split == "train")
    empty = [c for i, c in enumerate(classes) if not (labels[train_rows] == i).any()]
    if empty or len(train_rows) < cfg.batch_size:
        raise ValueError(f"the {cfg.split} split of {dataset.root} has too few training images "
                         f"({', '.join(empty) or len(train_rows)}) for a GAN at batch size "
                         f"{cfg.batch_size}")
    if (split == "val").sum() < 2:
        raise ValueError(f"the {cfg.split} split of {dataset.root} has too few validation images "
                         "to measure generated ones against; re-split with "
                         "`cityclf data split ROOT --val F`")
    pre = Preprocess(cfg.img_size)
    work = runs.get_run(resume, partial=True, kind="gan").path if resume else \
        runs.start_run(cfg.name or f"gan {cfg.img_size}px")
    info = runs.Run(work).info if resume else {}
    if resume:  # where it continues from: the last checkpoint's epoch (0: none yet)
        info.setdefault("resumed_at_steps", []).append(_checkpoint_epoch(work) * cfg.eval_every)
    info.update({
        "run_id": work.name, "name": cfg.name or f"GAN {cfg.img_size}px", "model": "cgan",
        "kind": "gan", "created": info.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
        "status": "running", "config": asdict(cfg), "classes": classes, "preprocess": asdict(pre),
        "dataset": {"id": dataset.id, "root": str(dataset.root), "layout": dataset.layout,
                    "n_images": len(dataset.manifest)},
        "split": {**split_info(dataset, cfg.split), "counts": {
            name: int((split == name).sum()) for name in ("train", "val", "test")}},
        "seed": cfg.seed, "recipe": "conditional-BN generator, spectrally normalised projection "
                                    "discriminator, hinge loss"})
    write_json_atomic(work / "run.json", info)
    keras.utils.set_random_seed(cfg.seed)
    gan = ConditionalGAN(len(classes), cfg.img_size, cfg.width, cfg.seed)
    gan.compile(cfg.lr)
    if progress:  # a minute on 2 cores, without a bar of its own
        print(f"run {work.name}: embedding real images for the Fréchet distances", file=sys.stderr)
    eval_rows = _held_out(split, labels, "val", cfg.seed)
    real, decoded = load_images(paths[eval_rows], pre)
    real_labels = labels[eval_rows][decoded]
    real_embeddings = gan_quality.embed_images(real)
    if "quality" not in info:  # measured once: a resumed run keeps its first measurements
        info["quality"] = _references(gan, paths, labels, train_rows, real_embeddings,
                                      real_labels, classes, pre, cfg.seed)
        write_json_atomic(work / "run.json", info)
    data = make_dataset(paths[train_rows], labels[train_rows], pre, cfg.batch_size, shuffle=True,
                        seed=cfg.seed, drop_remainder=True).repeat()
    fixed = np.repeat(np.arange(len(classes)), SAMPLE_COLUMNS)
    (work / "samples").mkdir(exist_ok=True)
    import tensorflow as tf
    writer = tf.summary.create_file_writer(str(work / "tensorboard" / "quality"))
    log = gan_quality.DistanceLog(
        lambda cities: generate(gan.generator, cities, cfg.seed + 1), real_embeddings,
        real_labels, classes, cfg.eval_every, functools.partial(_log_row, work, classes),
        lambda step: _save_grid(generate(gan.generator, fixed, cfg.seed + 2), work, step),
        writer)
    fit_start = time.perf_counter()
    gan.fit(data, steps_per_epoch=cfg.eval_every, epochs=cfg.epochs, verbose=int(progress),
            shuffle=False,
            callbacks=[log, keras.callbacks.BackupAndRestore(str(work / "checkpoint"),
                                                             double_checkpoint=True,
                                                             delete_checkpoint=False),
                       keras.callbacks.TensorBoard(str(work / "tensorboard"))])
    train_seconds = time.perf_counter() - fit_start
    gan.generator.save(work / GENERATOR_FILE)
    history = _finish_history(work)
    final = history.iloc[-1]
    info["quality"]["final"] = gan_quality.summary(
        {city: final[f"frechet_{city}"] for city in classes if f"frechet_{city}" in final})
    info["quality"]["final"]["step"] = int(final["step"])
    test_rows = _held_out(split, labels, "test", cfg.seed)
    info["quality"]["classifier"] = _recognised(cfg, info["split"]["id"], gan.generator,
                                                paths[test_rows], labels[test_rows], classes)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)  # only needed to resume
    info.update(status="complete", steps_done=int(gan.g_optimizer.iterations),  # resumes too
                params={"generator": gan.generator.count_params(),
                        "discriminator": gan.discriminator.count_params()},
                timings={"train_seconds": round(train_seconds, 2),
                         "total_seconds": round(time.perf_counter() - started, 2)})
    write_json_atomic(work / "run.json", info)
    return runs.Run(runs.publish_run(work))


def resume_gan(run_id: str, progress: bool = True) -> runs.Run:
    """Continue an interrupted GAN run from its last checkpoint, with its own settings."""
    run = runs.get_run(run_id, partial=True, kind="gan")
    return train_gan(GanConfig.from_dict(run.info["config"]), progress, resume=run.id)


def _checkpoint_epoch(work: Path) -> int:
    """Epochs done at the checkpoint BackupAndRestore resumes from (its last readable one)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((work / "checkpoint" / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


def _held_out(split: np.ndarray, labels: np.ndarray, part: str, seed: int) -> np.ndarray:
    """Rows of one part of the split for measuring: up to MAX_EVAL_PER_CITY of each city."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero((split == part) & (labels == c)))[:MAX_EVAL_PER_CITY]
            for c in np.unique(labels)]
    return np.sort(np.concatenate(rows)).astype(int)


def _references(gan, paths, labels, train_rows, real_embeddings, real_labels, classes, pre,
                seed) -> dict:
    """The distances the trained GAN's is read against, at the held-out sample's size: the
    floor (two halves of the real training images) and the ceiling (the untrained generator)."""
    n_per_city = {c: int((real_labels == c).sum()) for c in range(len(classes))}
    first, second = gan_quality.halves(labels[train_rows], n_per_city, seed)
    chosen = train_rows[np.concatenate([first, second])]
    images, decoded = load_images(paths[chosen], pre)
    embeddings = gan_quality.embed_images(images)
    side = np.repeat([0, 1], [len(first), len(second)])[decoded]
    train_labels = labels[chosen][decoded]
    floor = gan_quality.city_distances(embeddings[side == 0], train_labels[side == 0],
                                       embeddings[side == 1], train_labels[side == 1], classes)
    fake = gan_quality.embed_images(generate(gan.generator, real_labels, seed + 1))
    untrained = gan_quality.city_distances(fake, real_labels, real_embeddings, real_labels,
                                           classes)
    return {"embedding": f"MobileNetV2 (ImageNet) pooled 1280-d; images at {pre.img_size} px "
                         "enlarged to 224 px; not the Inception FID",
            "n_per_city": {classes[c]: n for c, n in n_per_city.items()},
            "floor": floor, "untrained": untrained}


def _log_row(work: Path, classes: list[str], step: int, logs: dict, distances: dict) -> None:
    """One history row per epoch, appended (a resumed run repeats an epoch: the last wins)."""
    row = {"step": step, **logs,
           **{f"frechet_{city}": distances["per_city"].get(city) for city in classes}}
    path = work / ".history-gan.csv"
    pd.DataFrame([row]).to_csv(path, mode="a", header=not path.exists(), index=False)


def _finish_history(work: Path) -> pd.DataFrame:
    partial = work / ".history-gan.csv"
    # A kill can cut the last line short: skip it rather than fail the resumed run.
    history = pd.read_csv(partial, on_bad_lines="skip").drop_duplicates("step", keep="last")
    history.to_csv(work / "history.csv", index=False)
    partial.unlink()
    return history


def _save_grid(images: np.ndarray, work: Path, step: int) -> np.ndarray:
    grid = sheet(images, SAMPLE_COLUMNS)
    save_picture(grid, work / "samples" / f"step-{step:06d}.jpg")
    return grid


def _recognised(cfg, split_id, generator, paths, labels, classes) -> dict:
    """A classifier run's top-1 on generated images of each city, beside its top-1 on real test
    images brought to the GAN's size (what the classifier makes of so few pixels at all)."""
    try:
        run = _classifier(cfg.classifier, split_id, classes)
        real, decoded = load_images(paths, Preprocess(cfg.img_size))
        labels = labels[decoded]
        fake = generate(generator, labels, cfg.seed + 3)
        return {"run": run.id,
                "generated": gan_quality.classifier_top1(run, fake, labels, classes),
                "real": gan_quality.classifier_top1(run, real, labels, classes)}
    except ValueError as err:  # no usable classifier: the GAN stands, without this figure
        return {"error": str(err)}


def _classifier(run_id: str | None, split_id: str, classes: list[str]) -> runs.Run:
    """The named classifier run, or else the best one (top-1) that knows every city and was
    trained on the same split as the GAN, so that no image it is scored on was trained on."""
    if run_id:
        return runs.get_run(run_id)
    found = [run for run in runs.list_runs() if set(classes) <= set(run.classes)
             and run.info.get("split", {}).get("id") == split_id]
    if not found:
        raise ValueError("no classifier run on this dataset's split knows every city: train one "
                         "(`cityclf train --data ROOT`) to see if it recognises generated ones")
    return max(found, key=lambda run: run.metrics.get("top1") or 0)
