"""The run registry: one folder per trained model under ``models/``.

A run is built in ``models/.partial/<run_id>/`` and renamed into ``models/<run_id>/`` only when
every file is written, so a crash never leaves a half-written run in the list, and an interrupted
run can be resumed from its folder. Everything shown about a run is read from its files.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from . import config

if TYPE_CHECKING:  # imported where used: predict without TensorFlow starts 0.4 s sooner
    import pandas as pd

PARTIAL = ".partial"
LEADERBOARD_COLUMNS = ["run_id", "name", "model", "img_size", "split", "params", "top1", "top5",
                       "macro_f1", "ece", "train_seconds", "ms_per_image", "study", "created",
                       "top1_low", "top1_high", "top5_low", "top5_high", "macro_f1_low",
                       "macro_f1_high"]
INTERVAL_SCORES = ("top1", "top5", "macro_f1")  # with 95 % sequence-bootstrap bounds
# What a run makes: a classifier (a city per photo, on the leaderboard) or a GAN (street images
# per city, cityclf.gan); run.json's "kind" is "gan" for the latter, the model's kind otherwise.
KINDS = ("classifier", "gan")


class RunError(ValueError):
    """A run that is missing or unusable; the message says why in one line."""


def partial_dir() -> Path:
    return config.models_dir() / PARTIAL


def new_run_id(label: str) -> str:
    """Sortable by time, readable, and unique even for two runs started in the same second."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(3)}"


def start_run(label: str) -> Path:
    """A fresh, empty folder for a run being trained (never an existing one)."""
    partial_dir().mkdir(parents=True, exist_ok=True)
    while True:
        path = partial_dir() / new_run_id(label)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def publish_run(work_dir: Path) -> Path:
    """Move a completed run into the registry in one atomic rename."""
    target = config.models_dir() / work_dir.name
    os.replace(work_dir, target)
    return target


def discard_run(work_dir: Path) -> None:
    """Remove a run that failed for good (bad settings, full disk); resumable ones are kept."""
    shutil.rmtree(work_dir, ignore_errors=True)


@dataclass
class Run:
    """A finished (or partial) run folder, read lazily."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @cached_property
    def info(self) -> dict:
        return _read_json(self.path / "run.json")

    @cached_property
    def metrics(self) -> dict:
        return _read_json(self.path / "metrics.json")

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def kind(self) -> str:
        """"gan" or "classifier" (see KINDS)."""
        return _kind(self.info)

    def predictions(self) -> pd.DataFrame:
        import pandas as pd
        try:
            return pd.read_parquet(self.path / "predictions.parquet")
        except (OSError, ValueError) as err:
            raise RunError(f"run {self.id}: predictions unreadable ({err.__class__.__name__})") from None

    def history(self) -> pd.DataFrame:
        """Per-epoch log; empty for a run without one (a forest) or with an unreadable one."""
        import pandas as pd
        try:
            return pd.read_csv(self.path / "history.csv")
        except (OSError, ValueError):
            return pd.DataFrame()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"run {path.parent.name}: {path.name} is missing") from None
    except (OSError, ValueError):
        raise RunError(f"run {path.parent.name}: {path.name} is corrupt") from None


REQUIRED_INFO = ("model", "classes", "preprocess", "dataset")
WRONG_KIND = {  # why a run of one kind cannot be used as the other, and what to use instead
    "classifier": "is a GAN: it makes street images (`cityclf gan sample {id} --city CITY`), it "
                  "does not tell cities apart",
    "gan": "is a city classifier, not a GAN (`cityclf gan train --data ROOT` trains one)",
}


def _kind(info: dict) -> str:
    return "gan" if info.get("kind") == "gan" else "classifier"


def get_run(run: str | Path, partial: bool = False, kind: str | None = "classifier") -> Run:
    """A run by id or folder path, checked enough that later reads will not surprise; of `kind`
    (a RunError says so otherwise), or of either kind with None."""
    if not str(run).strip():
        raise RunError("no run given (`cityclf runs` lists them)")
    path = Path(run)
    if not path.is_dir():
        path = _run_by_id(partial_dir() if partial else config.models_dir(), str(run))
    if not path.is_dir() or path.name == PARTIAL:
        where = "interrupted runs" if partial else "runs"
        raise RunError(f"no run {run!r} among the {where} in {path.parent} "
                       f"(`cityclf runs` lists them)")
    found = Run(path)
    missing = [key for key in REQUIRED_INFO if key not in found.info]
    if missing:
        raise RunError(f"run {found.id}: run.json lacks {', '.join(missing)}")
    if kind is not None and found.kind != kind:
        raise RunError(f"run {found.id} {WRONG_KIND[kind].format(id=found.id)}")
    return found


def _run_by_id(root: Path, run_id: str) -> Path:
    """The folder of run `run_id`, or of the one run whose id starts with it (ids are long)."""
    exact = root / run_id
    if exact.is_dir() or not root.is_dir():
        return exact
    matches = sorted(path for path in root.iterdir() if path.is_dir()
                     and path.name.startswith(run_id) and not path.name.startswith("."))
    if len(matches) > 1:
        raise RunError(f"{run_id!r} starts {len(matches)} run ids "
                       f"({', '.join(path.name for path in matches[:4])}...): give more of one")
    return matches[0] if matches else exact


def find_runs(dataset_id: str | None = None,
              kind: str = "classifier") -> tuple[list["Run"], dict[str, str]]:
    """Completed runs of `kind`, newest first, and why each unreadable run folder cannot be used.

    A broken folder is reported rather than silently hidden: the user should learn that a run
    exists and what is wrong with it. Runs of the other kind are left out, not reported.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    runs, problems = [], {}
    root = config.models_dir()
    for path in sorted(root.iterdir() if root.is_dir() else [], reverse=True):
        if not path.is_dir() or path.name.startswith("."):
            continue
        try:
            run = get_run(path, kind=None)
            if run.kind != kind:
                continue
            _check_listing(run)
            belongs = dataset_id is None or run.info["dataset"]["id"] == dataset_id
        except RunError as err:
            problems[path.name] = str(err)
            continue
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            problems[path.name] = (f"run {path.name}: run.json or metrics.json has unexpected "
                                   f"content ({err.__class__.__name__})")
            continue
        if belongs:
            runs.append(run)
    return runs, problems


def _check_listing(run: Run) -> None:
    """Read every field a listing of the run shows, so a broken run fails here, not there."""
    if run.kind == "classifier":
        leaderboard([run])
    elif not (run.path / "generator.keras").is_file():
        raise RunError(f"run {run.id}: generator.keras is missing")
    else:
        gan_table([run])


def list_runs(dataset_id: str | None = None) -> list["Run"]:
    """Completed classifier runs, newest first; unreadable folders are left out (see
    `find_runs`)."""
    return find_runs(dataset_id)[0]


def gan_runs(dataset_id: str | None = None) -> list["Run"]:
    """Completed GAN runs (cityclf.gan), newest first; unreadable ones are left out."""
    return find_runs(dataset_id, kind="gan")[0]


def interrupted_runs(kind: str | None = "classifier") -> list[str]:
    """Ids of runs of `kind` (None: any) that stopped before completing and can be resumed
    (`cityclf train --resume` for classifiers, `cityclf gan train --resume` for GANs)."""
    folder = partial_dir()
    found = sorted(p for p in folder.iterdir() if (p / "run.json").exists()) \
        if folder.is_dir() else []
    return [p.name for p in found if kind is None or _partial_kind(p) == kind]


def _partial_kind(path: Path) -> str:
    """The kind an interrupted run's run.json records; a classifier when it cannot be read
    (`cityclf train --resume` then says what is wrong with it)."""
    try:
        return _kind(json.loads((path / "run.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return "classifier"


def _bounds(metrics: dict) -> dict:
    """`<score>_low` and `<score>_high` from metrics.json's intervals; None for older runs."""
    intervals = metrics.get("intervals") or {}
    bounds = {}
    for score in INTERVAL_SCORES:
        low, high = intervals.get(score) or (None, None)
        bounds.update({f"{score}_low": low, f"{score}_high": high})
    return bounds


def leaderboard(runs: list[Run], sort: str = "top1") -> pd.DataFrame:
    """One row per run with the figures that make runs comparable."""
    import pandas as pd
    rows = []
    for run in runs:
        info, metrics = run.info, run.metrics
        rows.append({
            "run_id": run.id, "name": info.get("name") or run.id, "model": info["model"],
            "img_size": info["preprocess"]["img_size"], "split": info.get("split", {}).get("method"),
            "params": (info.get("params") or {}).get("total"), "top1": metrics.get("top1"),
            "top5": metrics.get("top5"), "macro_f1": (metrics.get("macro") or {}).get("f1"),
            "ece": metrics.get("ece"), "train_seconds": info.get("timings", {}).get("train_seconds"),
            "ms_per_image": metrics.get("ms_per_image"), "study": info.get("study"),
            "created": info.get("created"), **_bounds(metrics),
        })
    table = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if sort not in table.columns:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(LEADERBOARD_COLUMNS)}")
    ascending = sort in ("ms_per_image", "train_seconds", "ece", "name", "model", "run_id")
    return table.sort_values(sort, ascending=ascending, na_position="last").reset_index(drop=True)


GAN_COLUMNS = ["run_id", "name", "img_size", "steps", "frechet", "floor", "untrained",
               "classifier_top1", "real_top1", "train_seconds", "created"]


def gan_table(runs: list[Run]) -> pd.DataFrame:
    """One row per GAN run (cityclf.gan), as `leaderboard` for classifiers: its final Fréchet
    distance between generated and real held-out images (mean over cities) beside the floor
    (two halves of the real training images) and the untrained generator's (the ceiling), and
    a classifier's top-1 on generated images beside its top-1 on real ones at the GAN's size."""
    import pandas as pd
    rows = []
    for run in runs:
        info, quality = run.info, run.info["quality"]
        recognised = quality.get("classifier") or {}
        rows.append({
            "run_id": run.id, "name": info.get("name") or run.id,
            "img_size": info["preprocess"]["img_size"], "steps": info["config"]["steps"],
            "frechet": quality["final"]["mean"], "floor": quality["floor"]["mean"],
            "untrained": quality["untrained"]["mean"],
            "classifier_top1": (recognised.get("generated") or {}).get("mean"),
            "real_top1": (recognised.get("real") or {}).get("mean"),
            "train_seconds": info.get("timings", {}).get("train_seconds"),
            "created": info.get("created")})
    return pd.DataFrame(rows, columns=GAN_COLUMNS)
