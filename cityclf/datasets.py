"""Dataset discovery: turn a folder of street photos into one manifest table.

Two layouts are read: Mapillary Street-Level Sequences (``train_val/<city>/{query,database}/`` with
its CSVs) and plain one-folder-per-city trees. Both give the same columns, so everything downstream
(splits, training, EDA) works on either. The manifest is cached as Parquet keyed by file size and
mtime, so re-scanning an unchanged tree opens no image. Built for MSLS's 1.6 M images: new images'
headers are read by one process per core, and the per-file bookkeeping is done on whole columns
(no Path object or pandas row per file).

A scan never fails on one bad file or folder: unreadable files go to ``Dataset.skipped`` with a
reason, and what is wrong with folders and CSVs (a folder that cannot be listed, a CSV without a
key column, a city without images) goes to ``Dataset.problems`` as one-line notes. Only a root
without a single usable image is an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from . import config
from .fileio import write_json_atomic
from .images import IMAGE_SUFFIXES, ImageError, image_size, is_image_name

MANIFEST_COLUMNS = ["path", "city", "key", "sequence_key", "frame_number", "captured_at", "lat",
                    "lon", "night", "control_panel", "view_direction", "width", "height"]
MSLS_SPLITS = ("train_val", "test")
MSLS_SUBSETS = ("query", "database")
MSLS_CSVS = {  # file -> the columns cityclf takes from it
    "raw.csv": ["lon", "lat", "captured_at", "pano"],
    "seq_info.csv": ["sequence_key", "frame_number"],
    "postprocessed.csv": ["control_panel", "night", "view_direction"],
}
MSLS_ALIASES = {"sequence_id": "sequence_key"}  # names some copies of MSLS use instead
MSLS_LOST = {  # what a subset without the file lacks, for the scan notes
    "raw.csv": "no GPS, capture times or panorama flags, so panoramas cannot be dropped",
    "postprocessed.csv": "no night, control-panel or view-direction flags",
}
NUMERIC_COLUMNS = ("lon", "lat", "frame_number")
BOOLEAN_COLUMNS = ("pano", "night", "control_panel")
CACHE_VERSION = 2  # 2: images.py's file size limit and clearer reasons
CACHE_COLUMNS = ["path", "size", "mtime_ns", "width", "height", "error"]
MIN_CITY_IMAGES = 4  # with the default 15 % test split, a city with fewer gets no test image
HEADER_CHUNK = 2000  # images per task of a parallel scan: ~0.1 s of work and one bar step
POOL_MIN_IMAGES = 2000  # fewer new images are read in-process (~0.1 s): not worth a pool's start


class DatasetError(ValueError):
    """A dataset root that cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    """A scanned dataset: its manifest, the files skipped (path, reason), and notes on problems."""

    root: Path
    layout: str
    manifest: pd.DataFrame
    skipped: pd.DataFrame
    opened: int = 0  # images whose header was read in this scan (0 when the cache held them all)
    problems: list[str] = field(default_factory=list)  # one line each, for the scan summary

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


def _walk_files(folder: Path, problems: list[str]) -> pd.Series:
    """The paths of every file below `folder`, sorted, following no symlinked folders (no loops).

    Made as strings, not Path objects, which would cost seconds at MSLS's 1.6 M files. A folder
    that cannot be listed is noted in `problems`: its images would otherwise vanish without a
    word (os.walk skips it silently).
    """
    def note(err: OSError) -> None:
        problems.append(f"{err.filename}: folder cannot be read ({err.strerror}); its images "
                        f"are missing")

    paths = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=note):
        dirnames.sort()
        paths += [f"{dirpath}/{name}" for name in sorted(filenames)]
    return pd.Series(paths, dtype="str")


def _links_back(folder: Path, root: Path) -> bool:
    """Whether a (symlinked) folder is the root or one of its ancestors: a loop, not a city."""
    target = folder.resolve()
    return target == root or target in root.parents


def _files_folders(root: Path, problems: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per file of a folder-per-city tree (the city is the top folder), and the cities."""
    parts, cities, loose = [], [], 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            loose += is_image_name(entry)
        elif _links_back(entry, root):
            problems.append(f"{entry.name}/ links back into the dataset (a loop); ignored")
        else:
            cities.append(entry.name)
            paths = _walk_files(entry, problems)
            parts.append(pd.DataFrame({"path": paths, "city": entry.name,
                                       "key": paths.str.slice(len(os.path.join(root, "")))}))
    if loose:
        problems.append(f"{loose} image(s) directly in {root.name}/ belong to no city folder; "
                        f"ignored")
    files = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["path", "city", "key"])
    return files, cities


def _where(csv: Path) -> str:
    """How notes name an MSLS CSV: split/city/subset/file."""
    return "/".join(csv.parts[-4:])


def _read_msls_csv(path: Path, columns: list[str], problems: list[str]) -> pd.DataFrame | None:
    """An MSLS CSV reduced to key + the wanted columns, or None (noted) when it is unusable."""
    where = _where(path)
    try:
        table = pd.read_csv(path, index_col=0,
                            dtype={"key": str, "sequence_key": str, "sequence_id": str})
    except (OSError, ValueError) as err:  # unreadable, empty, malformed, not UTF-8
        problems.append(f"{where}: cannot be read ({' '.join(str(err).split())}); ignored")
        return None
    if "key" not in table and table.index.name == "key":  # saved without the index column
        table = table.reset_index()
    if "key" not in table:
        problems.append(f"{where}: no key column; ignored")
        return None
    table = table.rename(columns={old: new for old, new in MSLS_ALIASES.items()
                                  if old in table and new not in table})
    missing = [c for c in columns if c not in table]
    if missing:
        problems.append(f"{where}: no {', '.join(missing)} column(s)")
    table = table[["key"] + [c for c in columns if c in table]]
    duplicated = table["key"].duplicated()
    if duplicated.any():
        problems.append(f"{where}: {duplicated.sum()} repeated key(s); the first row of each "
                        f"is used")
    return _coerce(table[~duplicated], where, problems)


def _coerce(table: pd.DataFrame, where: str, problems: list[str]) -> pd.DataFrame:
    """Numbers and flags parsed, values that are neither becoming missing (and noted)."""
    table = table.copy()
    for column in table.columns:
        if column in NUMERIC_COLUMNS:
            clean = pd.to_numeric(table[column], errors="coerce")
            if column == "frame_number":
                clean = clean.where(clean == clean.round())
        elif column == "captured_at":
            clean = _capture_times(table[column])
        elif column in BOOLEAN_COLUMNS and table[column].dtype == bool:
            continue  # pandas read a clean True/False column already (map costs ~1 µs a row)
        elif column in BOOLEAN_COLUMNS:
            clean = table[column].map({True: True, False: False, "True": True, "False": False})
        else:
            continue
        bad = clean.isna() & table[column].notna()
        if bad.any():
            problems.append(f"{where}: {bad.sum()} unreadable value(s) in {column}")
        table[column] = clean
    return table


def _capture_times(values: pd.Series) -> pd.Series:
    """MSLS's `captured_at` as UTC times: copies hold date texts ("2016-05-13", "20160513",
    "2016-05-13 14:20:31", ISO 8601 with a zone) or epoch numbers (milliseconds from 1973 on,
    else seconds), so each value is read by its form; anything else becomes missing."""
    numbers = pd.to_numeric(values, errors="coerce")
    digits = numbers.where((numbers >= 1e7) & (numbers < 1e8) & (numbers == numbers.round()))
    texts = values.astype("string").where(numbers.isna(), digits.astype("Int64").astype("string"))
    times = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
    epoch = numbers.where((numbers >= 1e8) & (numbers < 1e13))
    epoch = epoch.where(epoch >= 1e11, epoch * 1000)  # milliseconds now, whichever it was
    times = times.fillna(pd.to_datetime(epoch, unit="ms", utc=True))
    return times.dt.tz_convert(None).astype("datetime64[us]")


def _files_msls(root: Path, problems: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per image of an MSLS tree, joined with its CSVs on `key`, and the cities."""
    parts, cities = [], set()
    for split in MSLS_SPLITS:
        lacking = []  # per city with images: the MSLS_LOST files none of its subsets has
        for city_dir in sorted((root / split).glob("*/")):
            cities.add(city_dir.name)
            present, has_images = set(), False
            for subset in MSLS_SUBSETS:
                folder = city_dir / subset
                if not os.path.isdir(folder / "images"):
                    continue
                paths = _walk_files(folder / "images", problems)
                if paths.empty:
                    continue
                has_images = True
                # the key is the file's stem (pathlib's rule: the name up to its last dot)
                names = paths.str.replace(r"(?s)^.*/", "", regex=True)
                files = pd.DataFrame({"path": paths, "key": names.str.replace(
                    r"(?s)^(.+)\.[^.]+$", r"\1", regex=True)})
                for csv, columns in MSLS_CSVS.items():
                    if not os.path.isfile(folder / csv):
                        continue
                    present.add(csv)
                    table = _read_msls_csv(folder / csv, columns, problems)
                    if table is not None:
                        files = _join_csv(files, table, _where(folder / csv), problems)
                files["city"], files["msls_split"], files["subset"] = city_dir.name, split, subset
                parts.append(files)
            if has_images and not set(MSLS_LOST) <= present:
                lacking.append(set(MSLS_LOST) - present)
        _note_lacking(split, lacking, problems)
    if not parts:
        return pd.DataFrame(columns=["path", "city", "key"]), sorted(cities)
    return pd.concat(parts, ignore_index=True), sorted(cities)


def _note_lacking(split: str, lacking: list[set], problems: list[str]) -> None:
    """One note per split for the cities without raw.csv or postprocessed.csv: MSLS's test
    cities all come so, and a note per folder would bury the other notes."""
    if not lacking:
        return
    names = [csv for csv in MSLS_LOST if any(csv in files for files in lacking)]
    cities = "1 city has" if len(lacking) == 1 else f"{len(lacking)} cities have"
    as_in = " (as in MSLS's test subset)" if split == "test" else ""
    problems.append(f"{split}: {cities} no {' / '.join(names)}{as_in}: "
                    + "; ".join(MSLS_LOST[name] for name in names))


def _join_csv(files: pd.DataFrame, table: pd.DataFrame, where: str,
              problems: list[str]) -> pd.DataFrame:
    """The files with a CSV's columns joined on key (the CSV's keys are unique), noting rows of
    the CSV that match no image and images without a row. Joined through `_positions` rather
    than a merge on the key, which hashes a Python object per key (half a second a city)."""
    row = _positions(files["key"], table["key"])
    matched = np.zeros(len(table), bool)
    matched[row[row >= 0]] = True
    orphans = len(table) - matched.sum()
    if orphans:
        problems.append(f"{where}: {orphans} row(s) match no image")
    missing = (row < 0).sum()
    if missing:
        problems.append(f"{where}: no row for {missing} image(s); their fields stay empty")
    # reindexing by row numbers gives what a left merge gives: missing values where no row
    columns = table.drop(columns="key").reset_index(drop=True).reindex(row)
    return files.join(columns.set_axis(files.index))


def _stat(paths: pd.Series) -> pd.DataFrame:
    """Size and mtime of each file; -1 for a file that cannot be stat'ed (image_size says why)."""
    sizes, mtimes = np.full(len(paths), -1, np.int64), np.full(len(paths), -1, np.int64)
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except OSError:  # a broken link, a link loop, a file deleted since it was listed
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    return pd.DataFrame({"size": sizes, "mtime_ns": mtimes}, index=paths.index)


def _is_image(paths: pd.Series) -> pd.Series:
    """images.is_image_name of every path at once (called per file, it costs seconds at MSLS's
    1.6 M files): an image suffix, ignoring case, that is not the whole name (".jpg")."""
    lower = paths.str.lower()
    return (lower.str.endswith(tuple(IMAGE_SUFFIXES))
            & ~lower.str.endswith(tuple("/" + suffix for suffix in IMAGE_SUFFIXES))).astype(bool)


def _positions(values: pd.Series, among: pd.Series) -> np.ndarray:
    """Where each value is in `among` (-1: nowhere), hashed by Arrow: pandas' lookups make a
    Python object of every string, about 1 GB for a moment at MSLS's 1.6 M paths."""
    found = pc.index_in(pa.array(values), value_set=pa.array(among)).fill_null(-1)
    return np.array(found, dtype=np.int64)


def _usable_cores() -> int:
    """The cores this process may run on (a container or taskset can allow fewer than exist)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _headers(paths: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Width and height of each image (0 where unreadable) and the errors by position: one
    task of a scan, small to send back from a worker process."""
    widths, heights, errors = np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int64), {}
    for i, path in enumerate(paths):
        try:
            widths[i], heights[i] = image_size(path)
        except ImageError as err:
            errors[i] = str(err)
    return widths, heights, errors


def _read_headers(paths: pd.Series, workers: int, bar) -> tuple[np.ndarray, np.ndarray, dict]:
    """`_headers` of every path, in chunks over `workers` processes (in this one for few images).

    At most two chunks per worker are queued at a time, so only those chunks' paths exist as
    Python strings: the rest stay in pandas' compact column.
    """
    widths, heights = np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int64)
    errors = {}

    def take(start: int, result) -> None:
        w, h, e = result
        widths[start:start + len(w)], heights[start:start + len(w)] = w, h
        errors.update({start + i: message for i, message in e.items()})
        bar.update(len(w))

    def chunk(start: int) -> list[str]:
        return paths.iloc[start:start + HEADER_CHUNK].tolist()

    starts = range(0, len(paths), HEADER_CHUNK)
    workers = min(workers, len(starts))
    if workers <= 1 or len(paths) < POOL_MIN_IMAGES:
        for start in starts:
            take(start, _headers(chunk(start)))
    else:
        with ProcessPoolExecutor(workers) as pool:
            pending = {}
            for start in starts:
                if len(pending) >= 2 * workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        take(pending.pop(future), future.result())
                pending[pool.submit(_headers, chunk(start))] = start
            for future in wait(pending).done:
                take(pending[future], future.result())
    return widths, heights, errors


def _read_cache(cache: Path) -> pd.DataFrame | None:
    """The previous scan's file table, or None when missing, unreadable or of another version."""
    try:
        meta = json.loads((cache / "dataset.json").read_text())
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
            return None
        # only the columns a scan re-uses: the CSVs' columns, kept for the user, are re-read
        return pd.read_parquet(cache / "files.parquet", columns=CACHE_COLUMNS)
    except (OSError, ValueError):  # ValueError also when a column is missing
        return None


def _write_cache(cache: Path, files: pd.DataFrame, meta: dict) -> None:
    """The file table and its metadata, each written whole (a unique temporary, then a rename)."""
    cache.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=cache, prefix=".files.", suffix=".tmp")
    os.close(handle)
    os.chmod(tmp, 0o644)  # like any other file the user writes, not mkstemp's 0600
    try:
        files.to_parquet(tmp, index=False)
        os.replace(tmp, cache / "files.parquet")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_json_atomic(cache / "dataset.json", meta)


def scan(root: str | Path, progress: bool = True, drop_panoramas: bool = True,
         workers: int | None = None) -> Dataset:
    """Scan a dataset root into a manifest, re-using the cached scan for unchanged files.

    New images' headers are read by `workers` processes (None: one per usable core; 1: all in
    this process), since at MSLS's 1.6 M images that reading is most of a first scan.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    root = root.resolve()
    problems: list[str] = []
    try:
        layout = detect_layout(root)
        files, cities = (_files_msls if layout == "msls" else _files_folders)(root, problems)
    except OSError as err:
        raise DatasetError(f"{root}: cannot be read ({err.strerror or err})") from None
    is_image = _is_image(files["path"])
    not_images = files.loc[~is_image, "path"]
    if not is_image.all():  # a copy of the whole table, so only when there is a file to drop
        files = files[is_image].reset_index(drop=True)

    files = files.join(_stat(files["path"])) if len(files) else files.assign(size=0, mtime_ns=0)
    cache = dataset_cache(root)
    previous = _read_cache(cache)
    if previous is not None:  # the earlier scan's row of each file unchanged since
        at = _positions(files["path"], previous["path"])
        same = at >= 0
        for column in ("size", "mtime_ns"):
            same[same] &= previous[column].to_numpy()[at[same]] == files[column].to_numpy()[same]
        at[~same] = -1
        files = files.assign(**{c: previous[c].array.take(at, allow_fill=True)
                                for c in ("width", "height", "error")})
        del previous
    else:
        files = files.assign(width=pd.Series(pd.NA, files.index, "Int64"),
                             height=pd.Series(pd.NA, files.index, "Int64"),
                             error=pd.Series(pd.NA, files.index, "string"))
    todo = files.index[files["width"].isna() & files["error"].isna()]
    with tqdm(total=len(todo), desc=f"scanning {root.name}", unit="img",
              disable=not progress or not len(todo)) as bar:
        widths, heights, errors = _read_headers(files.loc[todo, "path"],
                                                workers or _usable_cores(), bar)
    failed = np.fromiter(errors, np.int64, len(errors))
    read = np.ones(len(todo), bool)
    read[failed] = False
    files.loc[todo[read], "width"], files.loc[todo[read], "height"] = widths[read], heights[read]
    files.loc[todo[failed], "error"] = list(errors.values())

    try:
        _write_cache(cache, files.astype({"width": "Int64", "height": "Int64", "error": "string"}),
                     {"version": CACHE_VERSION, "root": str(root), "layout": layout,
                      "id": dataset_id(root)})
    except OSError as err:  # a read-only home: the scan stands, the next one redoes it
        problems.append(f"scan cache not saved in {cache} ({err.strerror or err})")

    unreadable = files[files["error"].notna()]
    keep = files["error"].isna()
    if drop_panoramas and "pano" in files:
        keep &= files["pano"].fillna(False).astype(bool) == False  # noqa: E712
    manifest = files[keep]  # one copy of the largest table, which is then let go
    del files
    skipped = pd.concat([pd.DataFrame({"path": unreadable["path"], "reason": unreadable["error"]}),
                         pd.DataFrame({"path": not_images, "reason": "not an image"})],
                        ignore_index=True)
    if manifest.empty:
        first = f"; {len(problems)} problem(s), first: {problems[0]}" if problems else ""
        raise DatasetError(f"{root}: no readable images found ({len(skipped)} files skipped"
                           f"{first})")
    problems += _city_notes(manifest, cities)
    return Dataset(root, layout, _normalise(manifest), skipped, opened=len(todo),
                   problems=problems)


def _city_notes(manifest: pd.DataFrame, cities: list[str]) -> list[str]:
    """Cities with no usable image, or too few to be both trained and tested on."""
    counts = manifest["city"].value_counts()
    notes = [f"city {city}: no readable images" for city in cities if city not in counts]
    notes += [f"city {city}: only {n} image(s); too few to be in both training and test"
              for city, n in sorted(counts.items()) if n < MIN_CITY_IMAGES]
    return notes


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
        if isinstance(info, dict) and Path(str(info.get("root", ""))).is_dir():
            found.append(info)
    return found
