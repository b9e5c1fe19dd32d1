"""The dashboard's state and loaders: the sidebar's session keys, and cached readers of datasets,
runs, models, predictions, thumbnails and the Dataset page's derived files.

Loaders are cached under keys that change with the files (folder mtimes), so a new scan or a new
run shows up on the next rerun without restarting the app. A missing dataset, a dataset without
runs or an unreadable run stops a page with a message that says how to fix it, never with a
traceback.
"""
from __future__ import annotations

import os
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from .. import config, public
from ..compare import compare_runs
from ..datasets import Dataset, DatasetError, dataset_id, known_datasets, scan
from ..images import ImageError, load_rgb
from ..inference import best_predictor, load_predictor, prepare_image, run_preprocess
from ..runs import Run, RunError, find_runs, get_run, leaderboard
from ..splits import UNUSED, load_split, split_path

# Session-state keys the sidebar sets and every page reads.
DATASET_ROOT, RUN_ID, COMPARE_RUN_ID = "dataset_root", "run_id", "compare_run_id"
RETURN_TO = "return_to_page"  # a page opened before the sidebar ran, to reopen after it
THUMBNAIL_PX = 224


def require_sidebar(page_file: str) -> None:
    """Send a page that runs without the entry point through it first, then back here.

    Because the pages live in `pages/`, Streamlit runs a page opened by its URL on its own (no
    sidebar, no session keys) until the entry point has called st.navigation once since the
    server started. Every page calls this first.

    In public mode a page that is not in public.PAGES goes to the entry point too, whatever the
    session holds, and is not reopened: the entry point then shows Predict. (Its navigation
    lists only public pages, but a page file run on its own, as above, would not know that.)
    """
    allowed = not public.is_public() or Path(page_file).name in public.PAGES
    if DATASET_ROOT not in st.session_state or not allowed:
        if allowed:
            st.session_state[RETURN_TO] = page_file
        st.switch_page("streamlit_app.py")


# ------------------------------------------------------------------------------ public mode

def publish(run_id: str) -> Run:
    """Public mode's stand-in for the sidebar: the published run and its dataset go to the
    session keys the pages read, fixed for every visitor. Stops the page with a message that
    tells nothing of the server when the run cannot be read."""
    try:
        run = get_run(run_id)
    except RunError:
        st.warning(public.UNAVAILABLE)
        st.stop()
    st.session_state[DATASET_ROOT] = run.info["dataset"]["root"]
    st.session_state[RUN_ID], st.session_state[COMPARE_RUN_ID] = run.id, None
    return run


def admit_photo(photo_id: str) -> str | None:
    """In public mode, count a new photo against the visitor's rate limits (each photo once,
    however often the page reruns); returns the message to show when it is over a limit.
    Always None for the owner's dashboard."""
    if not public.is_public():
        return None
    admitted = st.session_state.setdefault("public_admitted", set())
    if photo_id in admitted:
        return None
    session = st.session_state.setdefault("public_session", uuid.uuid4().hex)
    address = public.client_address(st.context.ip_address,
                                     st.context.headers.get("X-Forwarded-For"))
    refusal = public.admit(session, address)
    if refusal is None:
        admitted.add(photo_id)
    return refusal


# ---------------------------------------------------------------------------------- datasets

def dataset_choices() -> dict[str, str]:
    """Root -> label of every dataset the sidebar offers: the demo first, then scanned ones."""
    demo = str(config.demo_dir())
    choices = {demo: "demo (synthetic streets)"}
    for info in known_datasets():
        if info["root"] != demo:
            root = info["root"]
            choices[root] = f"{Path(root).name} ({info['layout']}) · {root}"
    return choices


def folder_stamp(root: str | Path, depth: int = 4) -> int:
    """The newest mtime of the folders down to `depth` below `root` (0 when it is missing).

    Adding, removing or renaming an image changes its folder's mtime, so this is a cheap cache
    key for a scan: folders at `depth` are looked at, not listed (MSLS keeps its images there).
    """
    newest, level = 0, [str(root)]
    for current in range(depth + 1):
        below = []
        for folder in level:
            try:
                newest = max(newest, os.stat(folder).st_mtime_ns)
                if current < depth:
                    with os.scandir(folder) as entries:
                        below += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        level = below
    return newest


# A resource, not data: a manifest can have millions of rows, and cache_data would copy it on
# every rerun. Pages only read it.
@st.cache_resource(show_spinner="Reading the dataset…", max_entries=4)
def _scanned(root: str, stamp: int) -> Dataset:
    try:
        return scan(root, progress=False)
    except DatasetError:
        raise
    except (ValueError, OSError) as err:  # unreadable metadata (a CSV), permissions, ...
        raise DatasetError(f"{root}: cannot be read ({err.__class__.__name__}: {err})") from None


def load_dataset(root: str | Path) -> Dataset:
    """The scanned dataset at `root`, re-scanned only when its folders change.

    Raises DatasetError, with a one-line reason, for any dataset that cannot be read.
    """
    return _scanned(str(Path(root).expanduser()), folder_stamp(Path(root).expanduser()))


def chosen_dataset() -> Dataset:
    """The sidebar's dataset, or stop the page with what to do when it cannot be read."""
    root = st.session_state.get(DATASET_ROOT) or str(config.demo_dir())
    try:
        return load_dataset(root)
    except DatasetError as err:
        if Path(root) == config.demo_dir() and not Path(root).exists():
            st.info("There is no demo dataset yet. Build it on the Home page, or run "
                    "`cityclf demo`.")
        else:
            st.warning(f"{err}. Pick another dataset in the sidebar, or check the folder with "
                       f"`cityclf data scan {root}`.")
        st.stop()


# -------------------------------------------------------------------------------------- runs

def _runs_stamp(models: Path) -> tuple:
    """Run folders and their mtimes: a run published, deleted or rewritten changes it."""
    if not models.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in models.iterdir() if p.is_dir()))


@st.cache_data(show_spinner=False)
def _all_runs(models: str, stamp: tuple) -> tuple[pd.DataFrame, dict[str, str]]:
    """The leaderboard of every readable run (with its dataset id), and why others are not."""
    found, problems = find_runs()
    rows = [leaderboard([run]).assign(dataset_id=run.info["dataset"]["id"],
                                      **interval_columns(run.metrics)) for run in found]
    table = pd.concat(rows, ignore_index=True) if rows else \
        leaderboard([]).assign(dataset_id=None, **interval_columns({}))
    return table, problems


INTERVAL_SCORES = ("top1", "top5", "macro_f1")


def interval_columns(metrics: dict) -> dict[str, float]:
    """`<score>_low` and `<score>_high` of the run's 95 % intervals; NaN for a run trained before
    intervals were recorded (or with a malformed entry), which the pages show as "–"."""
    found = metrics.get("intervals") if isinstance(metrics, dict) else None
    columns = {}
    for score in INTERVAL_SCORES:
        bounds = found.get(score) if isinstance(found, dict) else None
        ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and \
            all(isinstance(b, (int, float)) for b in bounds)
        columns[f"{score}_low"], columns[f"{score}_high"] = \
            (float(bounds[0]), float(bounds[1])) if ok else (np.nan, np.nan)
    return columns


def runs_table(root: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The leaderboard of the dataset at `root`, best first, and every unreadable run."""
    models = config.models_dir()
    table, problems = _all_runs(str(models), _runs_stamp(models))
    mine = table[table["dataset_id"] == dataset_id(root)]
    # Runs on a random split come last: neighbouring frames in train and test flatter them.
    mine = mine.assign(leaks=mine["split"] == "random").sort_values(
        ["leaks", "top1"], ascending=[True, False], na_position="last")
    return mine.drop(columns="leaks").reset_index(drop=True), problems


def run_labels(table: pd.DataFrame) -> dict[str, str]:
    """Run id -> its name, with the end of the id added where two runs share a name."""
    repeated = table["name"].duplicated(keep=False)
    return {run_id: f"{name} ({run_id[-6:]})" if twin else name
            for run_id, name, twin in zip(table["run_id"], table["name"], repeated)}


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _predictor(run_path: str, fast: bool):
    run = get_run(run_path)
    predictor = best_predictor(run) if fast else load_predictor(run)
    # TensorFlow builds its graphs on the first call; that one-off second should not count as
    # the time a prediction takes.
    blank = prepare_image(np.zeros((48, 64, 3), np.uint8), run_preprocess(run))
    predictor.predict_proba(blank[None])
    return predictor


def predictor(run: Run):
    """What predictions use (the fast path when the run has one), loaded once and warmed up."""
    return _predictor(str(run.path), True)


def keras_model(run: Run):
    """The run's own Keras (or forest) model, for looking inside it."""
    return _predictor(str(run.path), False)


def model_or_stop(run: Run, fast: bool = True):
    """The run's model for a page (fast path or Keras), or a warning and the end of the page."""
    try:
        return predictor(run) if fast else keras_model(run)
    except RunError as err:
        st.warning(public.UNAVAILABLE if public.is_public() else
                   f"{err}. Pick another run in the sidebar.")
        st.stop()


@st.cache_resource(show_spinner="Loading the photo check…", max_entries=4)
def _gate(run_path: str, stamp: int):
    from ..ood import load_gate
    return load_gate(run_path)


def gate(run: Run):
    """The run's out-of-distribution gate (cityclf.ood), loaded once per gate file; None for
    runs without one (trained before gates existed), which then show no verdict."""
    from ..ood import GATE_FILE
    return _gate(str(run.path), _mtime(run.path / GATE_FILE))


def verdict(run: Run, image: np.ndarray) -> dict | None:
    """The gate's verdict on one image already through the run's preprocessing, or None."""
    found = gate(run)
    if found is None:
        return None
    try:
        return found.assess(image[None])[0]
    except Exception:  # noqa: BLE001 - a verdict is extra: never let it break a page
        return None



@st.cache_data(show_spinner="Reading the split…", max_entries=4)
def _split_images(root: str, method: str, split: str, stamp: int) -> pd.DataFrame:
    table = load_split(load_dataset(root), method)
    return table.loc[table["split"] == split, ["path", "city"]].reset_index(drop=True)


def split_images(root: str, run: Run, split: str = "test") -> pd.DataFrame:
    """Path and city of the images in one split of the run's own split method."""
    method = run.info.get("split", {}).get("method", "sequence")
    return _split_images(str(root), method, split, folder_stamp(root))


def run_manifest(run: Run) -> pd.DataFrame | None:
    """The manifest of the dataset the run was trained on (for its sequences), or None when that
    dataset can no longer be read: callers then treat each image as its own sequence."""
    try:
        return load_dataset(run.info["dataset"]["root"]).manifest
    except (DatasetError, KeyError, TypeError, OSError):
        return None


@st.cache_data(show_spinner="Comparing the two runs…", max_entries=16)
def _comparison(path_a: str, path_b: str, stamps: tuple) -> dict:
    a, b = Run(Path(path_a)), Run(Path(path_b))
    return compare_runs(a, b, run_manifest(a))


def comparison(a: Run, b: Run) -> dict:
    """`cityclf.compare.compare_runs(a, b)` with the dataset's sequences, cached until either
    run's predictions change. Raises NotComparable (with the reason) or RunError."""
    stamps = tuple(_mtime(run.path / name) for run in (a, b)
                   for name in ("predictions.parquet", "run.json"))
    return _comparison(str(a.path), str(b.path), stamps)


def no_runs_message(root: str) -> str:
    """What to say, and which command to run, when a dataset has no run yet."""
    if Path(root) == config.demo_dir():
        return ("No run of this dataset yet. `cityclf demo` trains the demo's runs (and draws "
                "its images first if they are missing).")
    return ("No run of this dataset yet. Train one with "
            f"`cityclf train --data {root} --model mobilenet_v2 --img-size 224`.")


def chosen_run(key: str = RUN_ID) -> Run:
    """The sidebar's run (or compare run), or stop the page saying how to get one."""
    run_id = st.session_state.get(key)
    root = st.session_state.get(DATASET_ROOT) or str(config.demo_dir())
    if not run_id:
        st.info(public.UNAVAILABLE if public.is_public() else no_runs_message(root))
        st.stop()
    try:
        return get_run(run_id)
    except RunError as err:
        st.warning(public.UNAVAILABLE if public.is_public() else
                   f"{err}. Pick another run in the sidebar.")
        st.stop()


@st.cache_data(show_spinner="Reading predictions…", max_entries=16)
def _predictions(path: str, stamp: int) -> pd.DataFrame:
    return Run(Path(path)).predictions()


def predictions(run: Run) -> pd.DataFrame:
    """The run's per-image test predictions (cached until the file changes)."""
    file = run.path / "predictions.parquet"
    return _predictions(str(run.path), file.stat().st_mtime_ns if file.exists() else 0)


# ------------------------------------------------------------------------------------ images

@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, stamp: int) -> bytes | None:
    try:
        image = Image.fromarray(load_rgb(path))
    except ImageError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def thumbnail(path: str) -> bytes | None:
    """A small JPEG of the image (None when it cannot be read), so pages never send full photos."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _thumbnail(path, stamp)


# ------------------------------------------------------------------- the Dataset page's files
# Every loader is keyed by the mtime of the file it reads, so a new tagging or report shows up
# on the next rerun. Heavy modules (Keras) are imported only when these run.

def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def scenes_file(dataset: Dataset) -> Path:
    from ..scenes import cache_path
    return cache_path(dataset)


def quality_file(dataset: Dataset) -> Path:
    from ..quality import REPORT_FILE
    return dataset.cache / REPORT_FILE


@st.cache_resource(show_spinner=False, max_entries=4)
def _with_scenes(root: str, stamp: int, tags_stamp: int) -> pd.DataFrame:
    from ..scenes import attach_scenes
    dataset = load_dataset(root)
    return attach_scenes(dataset.manifest, dataset)


def manifest_with_scenes(dataset: Dataset) -> pd.DataFrame:
    """The manifest plus scene tags (when the dataset has been tagged); pages only read it."""
    return _with_scenes(str(dataset.root), folder_stamp(dataset.root),
                        _mtime(scenes_file(dataset)))


NO_SPLIT = "no split yet"


@st.cache_resource(show_spinner=False, max_entries=4)
def _with_split(root: str, stamp: int, tags_stamp: int, split_stamp: int) -> pd.DataFrame:
    dataset = load_dataset(root)
    manifest = manifest_with_scenes(dataset)
    try:  # read, never make (nor remake) a split here: that is training's or `data split`'s job
        splits = pd.read_parquet(split_path(dataset, "sequence"), columns=["path", "split"])
    except (OSError, ValueError, KeyError):
        return manifest.assign(split=NO_SPLIT)
    # Images added after the split was made count as train (as unused when the split samples
    # per city), as splits.load_split has it.
    added = UNUSED if (splits["split"] == UNUSED).any() else "train"
    return manifest.merge(splits.drop_duplicates("path"), on="path", how="left").assign(
        split=lambda m: m["split"].fillna(added).astype(str))


def manifest_with_split(dataset: Dataset) -> pd.DataFrame:
    """The manifest with scene tags and a `split` column (train, val, test or unused) from the
    dataset's saved sequence split, the one every run of the dataset is tested on; "no split yet"
    for a dataset no run or `cityclf data split` has split."""
    return _with_split(str(dataset.root), folder_stamp(dataset.root),
                       _mtime(scenes_file(dataset)), _mtime(split_path(dataset, "sequence")))


@st.cache_data(show_spinner="Reading the quality report…", max_entries=4)
def _quality(file: str, stamp: int) -> pd.DataFrame:
    return pd.read_parquet(file)


def read_quality(dataset: Dataset) -> pd.DataFrame | None:
    """The saved quality report, or None when it has not been computed (never computes it)."""
    file = quality_file(dataset)
    return _quality(str(file), _mtime(file)) if file.is_file() else None


@st.cache_data(show_spinner="Comparing image hashes…", max_entries=4)
def _pairs(root: str, report_stamp: int) -> pd.DataFrame:
    from ..quality import near_duplicates
    return near_duplicates(load_dataset(root))


def duplicate_pairs(dataset: Dataset) -> pd.DataFrame:
    """Near-duplicate pairs of the dataset, recomputed when the quality report changes."""
    return _pairs(str(dataset.root), _mtime(quality_file(dataset)))


@st.cache_data(show_spinner="Reconstructing…", max_entries=8)
def _reconstructions(root: str, model_stamp: int, paths: tuple[str, ...]):
    from ..quality import reconstructions
    return reconstructions(load_dataset(root), list(paths))


def outlier_reconstructions(dataset: Dataset, paths) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(originals, reconstructions, paths) by the autoencoder the quality report trained."""
    from ..quality import AUTOENCODER_FILE
    return _reconstructions(str(dataset.root), _mtime(dataset.cache / AUTOENCODER_FILE),
                            tuple(str(p) for p in paths))


@st.cache_data(show_spinner=False, max_entries=8)
def _embedding_map(root: str, stamp: int, tags_stamp: int, method: str,
                   sample: int) -> pd.DataFrame:
    from ..projector import embedding_map
    return embedding_map(load_dataset(root), method, sample=sample, progress=False)


def embedding_map_table(dataset: Dataset, method: str, sample: int = 2000) -> pd.DataFrame:
    """path, city, x, y[, scene] of up to `sample` images (cached per dataset and method)."""
    return _embedding_map(str(dataset.root), folder_stamp(dataset.root),
                          _mtime(scenes_file(dataset)), method, sample)
