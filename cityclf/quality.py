"""Data quality: images a model should not learn from, and images that leak between splits.

Three independent checks, combined by ``quality_report``:

* rules: too dark, too bright, blurred, mostly one colour, extreme aspect ratio, tiny. Each flag
  keeps the statistic it was decided on, so a page can say "sharpness 4.1 < 10".
* a small convolutional autoencoder (the proof of concept's method): images it reconstructs
  worst are unlike the rest of the dataset (the top 2 % are flagged as outliers).
* perceptual hashes: near-identical images. Consecutive frames of one sequence are expected to
  be; the same scene in two splits is a leak that inflates test accuracy.
"""
from __future__ import annotations

import math
import os

import cv2
import keras
import numpy as np
import pandas as pd
from keras import layers
from tqdm.auto import tqdm

from .datasets import Dataset, _stat
from .images import ImageError, load_rgb
from .pipeline import Preprocess, load_images, make_dataset
from .splits import group_keys, load_split

# Rule thresholds. Statistics are measured in grey at most 256 px wide, so that they do not depend
# on image size. Night frames are dark and soft but still streets: the demo's measure 24-47 in
# brightness and 20+ in sharpness (daylight: 70+ and 89+); only frames far beyond are flagged.
RULES_SIDE = 256
TOO_DARK = 20            # mean grey level (0..255) below this: too dark
TOO_BRIGHT = 225         # ... above this: too bright (overexposed, a white frame)
BLURRED = 10             # variance of the Laplacian below this: blurred (or featureless)
UNIFORM_SHARE = 0.9      # share of pixels within UNIFORM_TOLERANCE of the median grey above this
UNIFORM_TOLERANCE = 10   # ... : mostly one colour (a lens cap, a wall, a blank frame)
EXTREME_ASPECT = 3.0     # long side / short side above this: a strip, not a street view
TINY = 64                # shorter side in px below this: too small to show a street

# Each flag, the statistic it is decided on, and how: (flag, statistic, "<" or ">", threshold).
RULES = [("too_dark", "brightness", "<", TOO_DARK), ("too_bright", "brightness", ">", TOO_BRIGHT),
         ("blurred", "sharpness", "<", BLURRED),
         ("mostly_uniform", "uniform_share", ">", UNIFORM_SHARE),
         ("extreme_aspect", "aspect", ">", EXTREME_ASPECT), ("tiny", "short_side", "<", TINY)]
FLAGS = [flag for flag, *_ in RULES]

AUTOENCODER_FILE = "autoencoder.keras"
AUTOENCODER_BATCH = 32
MIN_EPOCHS = 8           # the demo's 2400 images: 600 batches, about 30 s on 2 cores
MIN_STEPS = 300          # batches the autoencoder is trained on at least
HASH_PREPROCESS = Preprocess(32, grayscale=True)
NEAR_DUPLICATE = 6       # pHash bits (of 64) that may differ between near-duplicates
HASH_BLOCK = 16_000_000  # hash comparisons held in memory at once
REPORT_FILE = "quality.parquet"


def pixel_statistics(path: str) -> tuple[float, float, float]:
    """brightness, sharpness (variance of the Laplacian), uniform_share of one image file.

    Measured in grey at most RULES_SIDE px on the long side, never enlarged: enlarging blurs.
    """
    grey = cv2.cvtColor(load_rgb(path), cv2.COLOR_RGB2GRAY)
    scale = RULES_SIDE / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    grey = grey.astype(np.float32)
    return (float(grey.mean()), float(cv2.Laplacian(grey, cv2.CV_32F).var()),
            float((np.abs(grey - np.median(grey)) <= UNIFORM_TOLERANCE).mean()))


def rule_flags(data: Dataset | pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """path, each rule's statistic and flag, and `unreadable` for files that do not decode."""
    manifest = data.manifest if isinstance(data, Dataset) else data
    statistics = []
    for path in tqdm(manifest["path"], desc="quality rules", unit="img", disable=not progress):
        try:
            statistics.append(pixel_statistics(path))
        except ImageError:
            statistics.append((np.nan,) * 3)
    table = pd.DataFrame(statistics, columns=["brightness", "sharpness", "uniform_share"])
    table.insert(0, "path", manifest["path"].to_numpy())
    sides = manifest[["width", "height"]].to_numpy(dtype=float)
    table["aspect"] = sides.max(axis=1) / np.maximum(sides.min(axis=1), 1)
    table["short_side"] = sides.min(axis=1)
    for flag, statistic, op, threshold in RULES:
        values = table[statistic]
        table[flag] = (values < threshold) if op == "<" else (values > threshold)
    table["unreadable"] = table["brightness"].isna()
    return table


def flag_reasons(row) -> list[str]:
    """Why one row of `rule_flags` is flagged, e.g. ["sharpness 4.1 < 10"]."""
    return [f"{statistic} {row[statistic]:.3g} {op} {threshold:g}"
            for flag, statistic, op, threshold in RULES if row[flag]] + \
        (["unreadable"] if row.get("unreadable") else [])


def build_autoencoder(img_size: int) -> keras.Model:
    """Three strided convolutions down to an (img_size/8)² × 32 code, and back up."""
    inputs = keras.Input((img_size, img_size, 3))
    x = inputs
    for filters in (16, 32, 32):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    for filters in (32, 32, 16):
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(3, 3, padding="same", activation="sigmoid")(x)
    model = keras.Model(inputs, outputs, name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _autoencoder_images(paths, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    images, rows = load_images(paths, Preprocess(img_size))
    return images / 255.0, rows


def autoencoder_outliers(dataset: Dataset, img_size: int = 64, epochs: int | None = None,
                         fraction: float = 0.02, seed: int = 0,
                         progress: bool = True) -> pd.DataFrame:
    """path, reconstruction_error (MSE on 0..1 pixels), outlier (the worst `fraction`).

    `epochs` defaults to MIN_EPOCHS, or more when the dataset is too small to give MIN_STEPS
    batches in those: an undertrained autoencoder blurs everything, noise and streets alike.
    The autoencoder is saved in the dataset's cache for `reconstructions`.
    """
    paths = dataset.manifest["path"].tolist()
    images, rows = _autoencoder_images(paths, img_size)
    batches = math.ceil(len(images) / AUTOENCODER_BATCH)
    epochs = epochs or max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(batches, 1)))
    keras.utils.set_random_seed(seed)
    model = build_autoencoder(img_size)
    model.fit(images, images, epochs=epochs, batch_size=AUTOENCODER_BATCH, shuffle=True,
              verbose=int(progress))
    dataset.cache.mkdir(parents=True, exist_ok=True)
    model.save(dataset.cache / AUTOENCODER_FILE)
    errors = np.full(len(paths), np.nan)
    errors[rows] = ((model.predict(images, batch_size=64, verbose=0) - images) ** 2) \
        .mean(axis=(1, 2, 3))
    worst = np.argsort(-np.nan_to_num(errors, nan=-1))[:math.ceil(fraction * len(rows))]
    outlier = np.zeros(len(paths), bool)
    outlier[worst] = True
    return pd.DataFrame({"path": paths, "reconstruction_error": errors, "outlier": outlier})


def reconstructions(dataset: Dataset, paths) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(originals, reconstructions) as uint8 images, and the paths that decoded, for display.

    Uses the autoencoder saved by `autoencoder_outliers`, training it first if there is none.
    """
    file = dataset.cache / AUTOENCODER_FILE
    if not file.is_file():
        autoencoder_outliers(dataset, progress=False)
    model = keras.models.load_model(file)
    paths = [str(p) for p in paths]
    images, rows = _autoencoder_images(paths, model.input_shape[1])
    rebuilt = model.predict(images, verbose=0) if len(images) else images
    return _to_uint8(images), _to_uint8(rebuilt), [paths[i] for i in rows]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(images * 255, 0, 255).round().astype(np.uint8)


def perceptual_hashes(paths) -> tuple[np.ndarray, np.ndarray]:
    """64-bit pHashes (the signs of the 8×8 lowest DCT frequencies) and the rows that decoded."""
    bits, rows = [], []
    for images, batch_rows in make_dataset(paths, pre=HASH_PREPROCESS, batch_size=256,
                                           cache=False):
        for grey, row in zip(images.numpy()[..., 0], batch_rows.numpy()):
            low = cv2.dct(grey)[:8, :8].ravel()
            bits.append(low > np.median(low[1:]))  # the DC term (mean brightness) is no structure
            rows.append(row)
    packed = np.packbits(np.array(bits, bool).reshape(-1, 64), axis=1)
    return packed.view(">u8").ravel().astype(np.uint64), np.array(rows, int)


def near_duplicates(dataset: Dataset, split_table: pd.DataFrame | None = None,
                    threshold: int = NEAR_DUPLICATE) -> pd.DataFrame:
    """Pairs of near-identical images: path_a, path_b, distance (differing hash bits),
    split_a, split_b, same_sequence.

    `split_table` (path, split) defaults to the dataset's saved sequence split.
    """
    manifest = dataset.manifest
    splits = load_split(dataset) if split_table is None else split_table
    hashes, rows = perceptual_hashes(manifest["path"])
    found, step = [], max(1, HASH_BLOCK // max(len(hashes), 1))
    for start in range(0, len(hashes), step):  # all pairs i < j, a block of rows at a time
        block = hashes[start:start + step]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= threshold)
        keep = j > i + start
        found.append((i[keep] + start, j[keep], distance[i[keep], j[keep]]))
    a, b, distance = (np.concatenate(parts) for parts in zip(*found)) if found else ([], [], [])
    paths = manifest["path"].to_numpy()[rows]
    groups = group_keys(manifest).to_numpy()[rows]
    split_of = dict(zip(splits["path"], splits["split"]))
    pairs = pd.DataFrame({"path_a": paths[a], "path_b": paths[b],
                          "distance": np.asarray(distance, int)})
    pairs["split_a"] = pairs["path_a"].map(split_of).astype("string")
    pairs["split_b"] = pairs["path_b"].map(split_of).astype("string")
    pairs["same_sequence"] = groups[a] == groups[b]
    return pairs.sort_values(["distance", "path_a", "path_b"], ignore_index=True)


def duplicate_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Near-duplicate pairs per pair of splits: all, within one sequence (expected), and across
    sequences. Rows whose splits differ are leaks."""
    ordered = np.sort(pairs[["split_a", "split_b"]].astype(str).to_numpy(), axis=1) \
        if len(pairs) else np.zeros((0, 2), str)
    table = pd.DataFrame({"split_a": ordered[:, 0], "split_b": ordered[:, 1],
                          "same_sequence": pairs["same_sequence"].to_numpy()})
    counts = table.groupby(["split_a", "split_b"]).agg(
        pairs=("same_sequence", "size"), within_sequence=("same_sequence", "sum"))
    counts["across_sequences"] = counts["pairs"] - counts["within_sequence"]
    counts["cross_split"] = counts.index.get_level_values(0) != counts.index.get_level_values(1)
    return counts.reset_index()


def quality_report(dataset: Dataset, progress: bool = True) -> pd.DataFrame:
    """Per image: rule statistics and flags, reconstruction error and outlier, and near-duplicate
    counts (`duplicates` in other sequences, `leaks` in another split). Cached until a file
    changes."""
    stamps = pd.concat([dataset.manifest[["path"]], _stat(dataset.manifest["path"])], axis=1)
    path = dataset.cache / REPORT_FILE
    try:
        cached = pd.read_parquet(path)
        if cached[stamps.columns].equals(stamps.reset_index(drop=True)):
            return cached
    except (OSError, ValueError, KeyError):
        pass
    report = rule_flags(dataset, progress).merge(autoencoder_outliers(dataset, progress=progress),
                                                 on="path")
    pairs = near_duplicates(dataset)
    other = pairs[~pairs["same_sequence"]]
    both = pd.concat([other.rename(columns={"path_a": "path", "path_b": "other"}),
                      other.rename(columns={"path_b": "path", "path_a": "other"})])
    leaks = both[both["split_a"].ne(both["split_b"]).fillna(False)]
    report["duplicates"] = report["path"].map(both["path"].value_counts()).fillna(0).astype(int)
    report["leaks"] = report["path"].map(leaks["path"].value_counts()).fillna(0).astype(int)
    report = stamps.reset_index(drop=True).merge(report, on="path")
    dataset.cache.mkdir(parents=True, exist_ok=True)
    report.to_parquet(path.with_suffix(".tmp"), index=False)
    os.replace(path.with_suffix(".tmp"), path)
    return report


def flagged_paths(dataset: Dataset, progress: bool = True) -> set[str]:
    """Images to leave out of training (`--drop-outliers`): any rule flag or an outlier."""
    report = quality_report(dataset, progress)
    bad = report[FLAGS + ["unreadable", "outlier"]].fillna(False).astype(bool).any(axis=1)
    return set(report.loc[bad, "path"])
