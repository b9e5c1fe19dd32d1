"""Dataset discovery: turn a folder of street photos into one manifest table.

Two layouts are read: Mapillary Street-Level Sequences (``train_val/<city>/{query,database}/`` with
its CSVs) and plain one-folder-per-city trees. Both give the same columns, so everything downstream
(splits, training, EDA) works on either. The manifest is cached as Parquet keyed by file size and
mtime, so re-scanning an unchanged tree opens no image.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import config
from .images import ImageError, image_size, is_image_name

MANIFEST_COLUMNS = ["path", "city", "key", "sequence_key", "frame_number", "captured_at", "lat",
                    "lon", "night", "control_panel", "view_direction", "width", "height"]
MSLS_SPLITS = ("train_val", "test")
MSLS_SUBSETS = ("query", "database")
MSLS_CSVS = {  # file -> the columns cityclf takes from it
    "raw.csv": ["lon", "lat", "captured_at", "pano"],
    "seq_info.csv": ["sequence_key", "frame_number"],
    "postprocessed.csv": ["control_panel", "night", "view_direction"],
}
CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset root that cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    """A scanned dataset: where it is, its manifest, and what was skipped (path, reason)."""

    root: Path
    layout: str
    manifest: pd.DataFrame
    skipped: pd.DataFrame
    opened: int = 0  # images whose header was read in this scan (0 when the cache held them all)

    @property
    def id(self) -> str:
        return dataset_id(self.root)

    @property
    def cache(self) -> Path:
        return dataset_cache(self.root)

    @property
    def cities(self) -> list[str]:
        return sorted(self.manifest["city"].unique())

    def summary(self) -> pd.DataFrame:
        """Images and sequences per city, the table ``cityclf data scan`` prints."""
        m = self.manifest
        table = m.groupby("city").agg(images=("path", "size"),
                                      sequences=("sequence_key", "nunique"))
        return table.sort_index()


def dataset_id(root: str | Path) -> str:
    """A readable, stable id for a dataset root: its folder name plus a hash of its location."""
    root = Path(root).resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-") or "dataset"
    return f"{slug}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def dataset_cache(root: str | Path) -> Path:
    """Where the manifest and splits of a dataset are kept (never inside the user's data)."""
    return config.cache_dir() / "datasets" / dataset_id(root)


def detect_layout(root: Path) -> str:
    """'msls' when the root has MSLS's train_val/ or test/ city folders, else 'folders'."""
    for split in MSLS_SPLITS:
        split_dir = root / split
        if split_dir.is_dir() and any((city / sub).is_dir() for city in split_dir.iterdir()
                                      if city.is_dir() for sub in MSLS_SUBSETS):
            return "msls"
    return "folders"


def _walk_files(folder: Path):
    """Every file below `folder`, sorted, following no symlinked folders (no loops)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _files_folders(root: Path) -> pd.DataFrame:
    """One row per file of a folder-per-city tree: the city is the top folder."""
    rows = []
    for city_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in _walk_files(city_dir):
            rows.append({"path": str(path), "city": city_dir.name,
                         "key": path.relative_to(root).as_posix()})
    return pd.DataFrame(rows, columns=["path", "city", "key"])


def _read_msls_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """An MSLS CSV (leading unnamed index column) reduced to key + the wanted columns."""
    table = pd.read_csv(path, index_col=0, dtype={"key": str, "sequence_key": str})
    return table[["key"] + [c for c in columns if c in table.columns]]


def _files_msls(root: Path) -> pd.DataFrame:
    """One row per image of an MSLS tree, joined with its CSVs on `key`."""
    parts = []
    for split in MSLS_SPLITS:
        for city_dir in sorted((root / split).glob("*/")):
            for subset in MSLS_SUBSETS:
                folder = city_dir / subset
                if not (folder / "images").is_dir():
                    continue
                files = pd.DataFrame({"path": [str(p) for p in _walk_files(folder / "images")]})
                if files.empty:
                    continue
                files["key"] = [Path(p).stem for p in files["path"]]
                for csv, columns in MSLS_CSVS.items():
                    if (folder / csv).is_file():
                        files = files.merge(_read_msls_csv(folder / csv, columns), on="key",
                                            how="left")
                files["city"], files["msls_split"], files["subset"] = city_dir.name, split, subset
                parts.append(files)
    if not parts:
        return pd.DataFrame(columns=["path", "city", "key"])
    table = pd.concat(parts, ignore_index=True)
    if "captured_at" in table:
        table["captured_at"] = pd.to_datetime(table["captured_at"], unit="ms")
    return table


def _stat(paths: pd.Series) -> pd.DataFrame:
    sizes, mtimes = [], []
    for path in paths:
        st = os.stat(path)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    return pd.DataFrame({"size": sizes, "mtime_ns": mtimes}, index=paths.index)


def _read_cache(cache: Path) -> pd.DataFrame | None:
    """The previous scan's file table, or None when missing, unreadable or of another version."""
    meta = cache / "dataset.json"
    try:
        if json.loads(meta.read_text()).get("version") != CACHE_VERSION:
            return None
        return pd.read_parquet(cache / "files.parquet")
    except (OSError, ValueError, KeyError):
        return None


def _write_atomic_parquet(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def scan(root: str | Path, progress: bool = True, drop_panoramas: bool = True) -> Dataset:
    """Scan a dataset root into a manifest, re-using the cached scan for unchanged files."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    root = root.resolve()
    layout = detect_layout(root)
    files = _files_msls(root) if layout == "msls" else _files_folders(root)
    is_image = files["path"].map(is_image_name).astype(bool)
    not_images = files.loc[~is_image, "path"]
    files = files[is_image].reset_index(drop=True)

    files = files.join(_stat(files["path"])) if len(files) else files.assign(size=0, mtime_ns=0)
    cache = dataset_cache(root)
    previous = _read_cache(cache)
    if previous is not None:
        files = files.merge(previous[["path", "size", "mtime_ns", "width", "height", "error"]],
                            on=["path", "size", "mtime_ns"], how="left")
    else:
        files = files.assign(width=pd.NA, height=pd.NA, error=pd.NA)
    todo = files.index[files["width"].isna() & files["error"].isna()]
    for i in tqdm(todo, desc=f"scanning {root.name}", unit="img", disable=not progress or not len(todo)):
        try:
            files.loc[i, ["width", "height"]] = image_size(files.at[i, "path"])
        except ImageError as err:
            files.loc[i, "error"] = str(err)

    cache.mkdir(parents=True, exist_ok=True)
    _write_atomic_parquet(files.astype({"width": "Int64", "height": "Int64", "error": "string"}),
                          cache / "files.parquet")
    (cache / "dataset.json").write_text(json.dumps(
        {"version": CACHE_VERSION, "root": str(root), "layout": layout, "id": dataset_id(root)}))

    unreadable = files[files["error"].notna()]
    manifest = files[files["error"].isna()]
    skipped = pd.concat([pd.DataFrame({"path": unreadable["path"], "reason": unreadable["error"]}),
                         pd.DataFrame({"path": not_images, "reason": "not an image"})],
                        ignore_index=True)
    if drop_panoramas and "pano" in manifest:
        manifest = manifest[manifest["pano"].fillna(False).astype(bool) == False]  # noqa: E712
    if manifest.empty:
        raise DatasetError(f"{root}: no readable images found ({len(skipped)} files skipped)")
    return Dataset(root, layout, _normalise(manifest), skipped, opened=len(todo))


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    """The manifest columns in a fixed order and dtype; fields a layout lacks stay missing."""
    out = table.reindex(columns=MANIFEST_COLUMNS + [c for c in table.columns
                                                  if c not in MANIFEST_COLUMNS])
    out["captured_at"] = pd.to_datetime(out["captured_at"])
    for column in ("night", "control_panel"):
        out[column] = out[column].astype("boolean")
    out["frame_number"] = out["frame_number"].astype("Int64")
    out["width"], out["height"] = out["width"].astype(int), out["height"].astype(int)
    return out.drop(columns=["size", "mtime_ns", "error"]).reset_index(drop=True)


def known_datasets() -> list[dict]:
    """Datasets scanned before under this home (id, root, layout), for pickers."""
    found = []
    for meta in sorted((config.cache_dir() / "datasets").glob("*/dataset.json")):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if Path(info.get("root", "")).is_dir():
            found.append(info)
    return found
