"""A pool: a folder of the user's own unlabelled photos, and the labels they give them.

The labels are the user's work, so they are kept like a database would keep them: every label
is written at once, under a lock, by writing the whole file anew and renaming it into place.
A browser refresh, a server restart, a kill or two tabs labelling at the same time can cost no
label, and a reader never sees half a file. The file is a plain CSV (path, city, when) beside
the pool's cache; the last label given to a photo wins.

One labelled photo in five (chosen by its path, so always the same ones) is held out: never
trained on, it measures what the labels bought (accuracy against labels spent).
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import config
from .fileio import write_bytes_atomic, write_json_atomic
from .images import IMAGE_SUFFIXES, is_image_name

NONE_OF_THESE = "none of these"  # a photo of a city the run does not know, or of no city
SKIP = "skip"                    # seen, not labelled: it leaves the queue
NOT_CITIES = (NONE_OF_THESE, SKIP)
LABEL_COLUMNS = ["path", "city", "when"]
HELD_OUT_EVERY = 5


class PoolError(ValueError):
    """A pool folder or label that cannot be used; the message says why in one line."""


def pools_dir() -> Path:
    return config.cache_dir() / "pools"


def pool_id(folder: str | Path) -> str:
    resolved = Path(folder).expanduser().resolve()
    return f"{resolved.name[:30] or 'pool'}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Pool:
    folder: Path

    @classmethod
    def open(cls, folder: str | Path) -> "Pool":
        """The pool of `folder`, which must be a readable folder holding at least one image."""
        path = Path(str(folder).strip()).expanduser()
        if not str(folder).strip():
            raise PoolError("no pool folder given")
        if not path.is_dir():
            raise PoolError(f"{path} is not a folder")
        pool = cls(path.resolve())
        if not pool.photos():
            raise PoolError(f"{path} holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))})")
        pool.cache.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pool.cache / "pool.json", {"folder": str(pool.folder)})
        return pool

    @property
    def id(self) -> str:
        return pool_id(self.folder)

    @property
    def cache(self) -> Path:
        return pools_dir() / self.id

    @property
    def labels_file(self) -> Path:
        return self.cache / "labels.csv"

    def photos(self) -> list[str]:
        """Image files below the folder, sorted; hidden files and folders are left out."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [f"{dirpath}/{name}" for name in sorted(filenames)
                      if is_image_name(name) and not name.startswith(".")]
        return found

    # ------------------------------------------------------------------------------ labels

    def label_log(self) -> pd.DataFrame:
        """Every label given, in order (a photo relabelled appears twice)."""
        try:
            text = self.labels_file.read_text()
        except FileNotFoundError:
            return pd.DataFrame(columns=LABEL_COLUMNS)
        rows = [row for row in csv.DictReader(io.StringIO(text)) if row.get("path")]
        return pd.DataFrame(rows, columns=LABEL_COLUMNS)

    def labels(self) -> pd.DataFrame:
        """The current label of each labelled photo (the last one given), in labelling order,
        with `held_out` marking the photos kept for measuring."""
        log = self.label_log()
        current = log.drop_duplicates("path", keep="last").reset_index(drop=True)
        return current.assign(held_out=current["path"].map(is_held_out).astype(bool))

    def add_label(self, path: str, city: str) -> None:
        """Record `city` (a city, NONE_OF_THESE or SKIP) for one photo of this pool."""
        path = str(path)
        if not city or "\n" in city:
            raise PoolError("a label must be a city name, 'none of these' or 'skip'")
        if not path.startswith(f"{self.folder}/"):
            raise PoolError(f"{Path(path).name} is not a photo of the pool {self.folder}")
        self.cache.mkdir(parents=True, exist_ok=True)
        with self._locked():
            log = self.label_log()
            row = pd.DataFrame([{"path": path, "city": city,
                                 "when": time.strftime("%Y-%m-%dT%H:%M:%S")}])
            table = pd.concat([log, row], ignore_index=True) if len(log) else row
            write_bytes_atomic(self.labels_file, table.to_csv(index=False).encode())

    @contextmanager
    def _locked(self):
        """One writer at a time, across threads, tabs and processes: an exclusive lock on a
        lock file (the labels file itself is replaced on every write)."""
        with open(self.cache / ".labels.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def is_held_out(path: str) -> bool:
    """Whether a labelled photo is kept out of training to measure the labels' worth."""
    return int(hashlib.sha1(str(path).encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def known_pools() -> list[Pool]:
    """Pools added before whose folder still exists, most recently used first."""
    found = []
    folders = sorted(pools_dir().glob("*/pool.json"), key=lambda p: -p.stat().st_mtime) \
        if pools_dir().is_dir() else []
    for record in folders:
        try:
            folder = Path(json.loads(record.read_text())["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if folder.is_dir():
            found.append(Pool(folder))
    return found
