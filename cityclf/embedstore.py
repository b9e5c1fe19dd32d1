"""Embeddings on disk as an append-only set of shards, read through mmap.

One ``.npz`` per backbone, rewritten whole on every increment and loaded whole, stops working
long before MSLS (1.6 M images x 1280 floats = 8 GB as float32). Here a folder holds shards that
are written once and never changed: each is a float16 ``NAME.npy`` (rows) and a
``NAME.keys.json`` (the path, size and mtime_ns of each row), both fsync'ed under a temporary
name and renamed into place, the keys last. A shard is therefore visible only once whole, a
``kill -9`` leaves at worst an orphaned temporary or keyless ``.npy`` (ignored, removed once old),
and writers never share a file: NAME carries the time, pid and a random id, so two processes,
or two hosts on a shared filesystem, can append at once.

Readers index every keys file (path -> shard, row) and gather rows from memory-mapped shards, so
looking up N rows reads those rows, not the store; ``StoredRows`` streams them in bounded chunks.
A key is (path, size, mtime_ns): a file changed in place is a miss and gets a new row. When a path
appears in several shards the newest wins.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

Key = tuple[str, int, int]  # path, size in bytes, mtime_ns

SHARD_ROWS = 4096       # rows per shard: 10 MB of float16 at 1280-d, a few hundred for MSLS
CHUNK_ROWS = 8192       # rows per chunk when streaming: 40 MB of float32 at 1280-d
OPEN_SHARDS = 8         # memory maps kept open: bounds file handles and mapped pages
ORPHAN_AGE_S = 3600     # a temporary or keyless file this old belongs to a dead writer
KEYS_SUFFIX = ".keys.json"


def file_key(path: str | os.PathLike) -> Key | None:
    """The key of a file as it is now; None when it cannot be stat'ed (so it cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


def _publish(path: Path, write: Callable) -> None:
    """Write through ``write(handle)`` to a temporary name, fsync, then rename into place.

    Not ``fileio.write_bytes_atomic``: that one does not fsync (a power cut could publish an
    empty shard), and a shard's name is already unique, so its temporary one can be too.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make the renames themselves durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddingStore:
    """The shards of one folder: an index of every row, and float32 gathers from float16 rows."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.dim: int | None = None
        self._shards: list[Path] = []  # vectors files, by shard number
        self._seen: set[str] = set()   # keys files already indexed (or found unusable)
        self._index: dict[str, tuple[int, int, int, int]] = {}  # path -> size, mtime, shard, row
        self._vectors = lru_cache(maxsize=OPEN_SHARDS)(self._map)
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self) -> None:
        """Index the shards published since the last look (by this or any other writer)."""
        try:
            names = sorted(p.name for p in self.folder.iterdir() if p.name.endswith(KEYS_SUFFIX)
                           and not p.name.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            if name in self._seen:
                continue
            self._seen.add(name)
            vectors = self.folder / (name[:-len(KEYS_SUFFIX)] + ".npy")
            try:
                keys = json.loads((self.folder / name).read_text())
                rows, dim = np.load(vectors, mmap_mode="r").shape
                entries = list(zip(keys["paths"], keys["sizes"], keys["mtimes"], strict=True))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # damaged: a cache, so it is simply not there
            if rows != len(entries):
                continue
            if dim != self.dim:  # a backbone that changed under the same name: newest shards win
                self._index.clear()
                self.dim = dim
            shard = len(self._shards)
            self._shards.append(vectors)
            for row, (path, size, mtime) in enumerate(entries):
                self._index[path] = (size, mtime, shard, row)

    def locate(self, keys: Sequence[Key | None]) -> np.ndarray:
        """(n, 2) shard and row of each key; -1 where the store lacks it (or None)."""
        where = np.full((len(keys), 2), -1, np.int64)
        for i, key in enumerate(keys):
            entry = self._index.get(key[0]) if key else None
            if entry and entry[:2] == key[1:]:
                where[i] = entry[2:]
        return where

    def rows(self, keys: Sequence[Key | None]) -> StoredRows:
        """The rows of ``keys`` (zeros for missing ones), read lazily."""
        return StoredRows(self, self.locate(keys))

    def gather(self, where: np.ndarray) -> np.ndarray:
        """float32 rows at ``where`` (from ``locate``), zeros where it is -1."""
        out = np.zeros((len(where), self.dim or 0), np.float32)
        shards = where[:, 0]
        for shard in np.unique(shards[shards >= 0]):
            at = np.flatnonzero(shards == shard)
            at = at[np.argsort(where[at, 1], kind="stable")]  # ascending rows: sequential reads
            out[at] = self._vectors(int(shard))[where[at, 1]]
        return out

    def _map(self, shard: int) -> np.ndarray:
        return np.load(self._shards[shard], mmap_mode="r")

    def writer(self, shard_rows: int = SHARD_ROWS) -> ShardWriter:
        return ShardWriter(self.folder, shard_rows)


def as_array(rows) -> np.ndarray:
    """A row source (StoredRows, SideBySide) or an array, as one float array in memory."""
    return rows.read() if hasattr(rows, "read") else np.asarray(rows)


class StoredRows:
    """Rows of a store by position: subset with ``[...]``, stream with ``chunks()``, or ``read()``
    them all. Holds only where each row lives, never the rows."""

    def __init__(self, store: EmbeddingStore, where: np.ndarray):
        self.store, self.where = store, where

    def __len__(self) -> int:
        return len(self.where)

    @property
    def dim(self) -> int:
        return self.store.dim or 0

    @property
    def found(self) -> np.ndarray:
        """Which rows the store has (the others read as zeros)."""
        return self.where[:, 0] >= 0

    def __getitem__(self, index) -> StoredRows:
        return StoredRows(self.store, self.where[index])

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """float32 (≤ chunk_rows, dim) arrays, in order."""
        for start in range(0, len(self.where), chunk_rows):
            yield self.store.gather(self.where[start:start + chunk_rows])

    def read(self) -> np.ndarray:
        """Every row as one float32 array: for data that fits in memory."""
        return self.store.gather(self.where)


class SideBySide:
    """Several row sources of the same images read as one, their columns side by side (a fusion
    head's input: one store per backbone)."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts[0])

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    def __getitem__(self, index) -> SideBySide:
        return SideBySide([part[index] for part in self.parts])

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        for blocks in zip(*(part.chunks(chunk_rows) for part in self.parts)):
            yield np.hstack(blocks)

    def read(self) -> np.ndarray:
        return np.hstack([part.read() for part in self.parts])


class ShardWriter:
    """Appends rows; every ``shard_rows`` rows (and on close) they become one new shard.

    Use as a context manager: leaving it, even by an exception, publishes the rows so far.
    """

    def __init__(self, folder: Path, shard_rows: int = SHARD_ROWS):
        self.folder, self.shard_rows = Path(folder), shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self._keys: list[Key] = []
        self._rows: list[np.ndarray] = []
        remove_orphans(self.folder)

    def add(self, keys: Sequence[Key], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float16)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        start = 0
        while start < len(keys):  # never more than a shard buffered
            take = self.shard_rows - len(self._keys)
            self._keys.extend(keys[start:start + take])
            self._rows.append(vectors[start:start + take])
            start += take
            if len(self._keys) >= self.shard_rows:
                self.commit()

    def commit(self) -> None:
        """Publish the buffered rows as a shard: the vectors, then the keys that make it
        visible."""
        if not self._keys:
            return
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        rows = np.concatenate(self._rows)
        keys = {"paths": [k[0] for k in self._keys], "sizes": [k[1] for k in self._keys],
                "mtimes": [k[2] for k in self._keys]}
        _publish(self.folder / f"{name}.npy", lambda handle: np.save(handle, rows))
        _publish(self.folder / f"{name}{KEYS_SUFFIX}", lambda handle: handle.write(
            json.dumps(keys).encode()))
        _fsync_folder(self.folder)
        self._keys, self._rows = [], []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.commit()


def remove_orphans(folder: Path, age_s: float = ORPHAN_AGE_S) -> None:
    """Delete what dead writers left: temporaries and keyless vectors older than ``age_s`` (a
    live writer's are seconds old)."""
    limit = time.time() - age_s
    for path in folder.iterdir():
        keyless = path.suffix == ".npy" and not path.with_name(path.stem + KEYS_SUFFIX).exists()
        try:
            if (path.name.endswith(".tmp") or keyless) and path.stat().st_mtime < limit:
                path.unlink()
        except FileNotFoundError:  # another writer cleaned it first
            pass
