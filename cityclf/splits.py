"""Train / validation / test splits that do not leak.

MSLS images come in sequences of near-identical frames: a random split puts neighbouring frames in
train and test and inflates accuracy. Splits here are grouped by sequence (no sequence in two
splits), stratified by city, seeded, and saved beside the manifest so that every model of a dataset
is scored on the same test images. A ``random`` split exists only to measure that leak.

MSLS cities differ in size by more than 20x; ``per_city`` keeps about that many images of each
city (whole sequences, seeded) and marks the rest ``unused``, so that no city dominates.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import Dataset
from .fileio import write_json_atomic

SPLIT_NAMES = ("train", "val", "test")
UNUSED = "unused"  # left out by per-city sampling: in no split
METHODS = ("sequence", "random")


def group_keys(manifest: pd.DataFrame) -> pd.Series:
    """The unit that must not be divided: the sequence, or the image itself when there is none."""
    return manifest["sequence_key"].astype("string").fillna(manifest["path"].astype("string"))


def assign_splits(manifest: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  method: str = "sequence", per_city: int | None = None) -> pd.Series:
    """'train'/'val'/'test' per manifest row, about `val` and `test` of each city's images;
    with `per_city`, only about that many images of each city (whole groups) get a split and the
    others are 'unused'."""
    if method not in METHODS:
        raise ValueError(f"split method must be one of {METHODS}, not {method!r}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val ({val}) and test ({test}) must be fractions that sum to less than 1")
    if per_city is not None and per_city < 1:
        raise ValueError(f"per_city must be at least 1 image, not {per_city}")
    groups = group_keys(manifest) if method == "sequence" else manifest["path"].astype("string")
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[str, str], str] = {}
    for city, city_groups in groups.groupby(manifest["city"], sort=True):
        sizes = city_groups.value_counts(sort=False).sort_index()
        order = sizes.index[rng.permutation(len(sizes))]
        if per_city is not None:  # whole groups, in the shuffled order, up to about per_city
            kept = sizes[order].cumsum() - sizes[order] / 2 <= per_city
            kept.iloc[0] = True  # a city keeps at least one group
            chosen.update({(city, group): UNUSED for group in order[~kept.to_numpy()]})
            order = order[kept.to_numpy()]
        total = sizes[order].sum()
        targets = {"test": test * total, "val": val * total}
        filled = {"test": 0, "val": 0}
        # Walk the shuffled groups, filling test first, then val, by image count.
        for group in order:
            name = next((n for n in ("test", "val") if filled[n] + sizes[group] / 2 <= targets[n]),
                        "train")
            if name != "train":
                filled[name] += sizes[group]
                chosen[(city, group)] = name
    keys = pd.Series(list(zip(manifest["city"], groups)), index=manifest.index)
    return keys.map(lambda key: chosen.get(key, "train")).astype("string")


def split_path(dataset: Dataset, method: str = "sequence") -> Path:
    return dataset.cache / "splits" / f"{method}.parquet"


def save_split(dataset: Dataset, val: float = 0.15, test: float = 0.15, seed: int = 0,
               method: str = "sequence", per_city: int | None = None) -> pd.DataFrame:
    """Make and save the dataset's split for `method`; every later run of that method uses it."""
    table = pd.DataFrame({"path": dataset.manifest["path"], "split": assign_splits(
        dataset.manifest, val, test, seed, method, per_city)})
    path = split_path(dataset, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # unique: two runs may make it at once
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    meta = {"method": method, "val": val, "test": test, "seed": seed, "per_city": per_city,
            "id": split_id(table)}
    write_json_atomic(path.with_suffix(".json"), meta)
    return table


def split_id(table: pd.DataFrame) -> str:
    """A short fingerprint of which image is in which split, recorded by every run."""
    text = "\n".join(f"{p}\t{s}" for p, s in sorted(zip(table["path"], table["split"])))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_split(dataset: Dataset, method: str = "sequence") -> pd.DataFrame:
    """The manifest with a `split` column, making the default split on first use.

    Images added to the dataset after the split was made go to train, never to test, so that a
    growing dataset keeps its test set fixed (to 'unused' when the split samples per city, so
    that it stays balanced).
    """
    path = split_path(dataset, method)
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError):
        table = save_split(dataset, method=method)
    merged = dataset.manifest.merge(table, on="path", how="left")
    sampled = (table["split"] == UNUSED).any()
    merged["split"] = merged["split"].fillna(UNUSED if sampled else "train")
    return merged


def split_info(dataset: Dataset, method: str = "sequence") -> dict:
    """Method, fractions, seed and id of the saved split (making it if needed)."""
    path = split_path(dataset, method).with_suffix(".json")
    if not path.exists():
        save_split(dataset, method=method)
    return json.loads(path.read_text())
