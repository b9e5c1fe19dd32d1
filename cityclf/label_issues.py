"""Likely mislabelled training images, found by confident learning (the cleanlab library).

Confident learning compares each image's given city with out-of-fold probabilities: a model
that never saw the image thinks it belongs elsewhere with more confidence than that model
usually has for its given city. The model is the run's head, logistic regression at the run's C
on the run's cached embeddings, so thousands of images are checked in seconds once embedded.

Frames of one sequence are near copies taken in one city, and the folds use that. By default
folds are drawn image by image, so a frame's sequence-mates are in the training folds and
testify for its true city: one wrong frame stands out even where the model is weak (on the
demo, whose model is right 61 % of the time: precision 0.97, recall 0.81 on 5 % flipped labels,
where sequence folds flag seven times too many). A whole sequence filed under the wrong city is
learnt from its own frames that way and looks right: ``by="sequence"`` keeps each sequence in
one fold to find those, at the price of more false alarms from a weak model.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .runs import Run

FOLDS = 5


BY = ("image", "sequence")


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, groups, n_classes: int, C: float,
                              folds: int = FOLDS, by: str = "image") -> np.ndarray:
    """(n, n_classes) probabilities of each row from a head fitted without it (``by="image"``)
    or without its whole sequence (``by="sequence"``)."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    from .head import fit_head
    if by not in BY:
        raise ValueError(f"folds are drawn by {' or '.join(BY)}, not {by!r}")
    probabilities = np.zeros((len(y), n_classes))
    codes = pd.factorize(pd.Series(groups))[0]
    if by == "sequence":
        splitter = GroupKFold(n_splits=max(2, min(folds, len(set(codes)))))
    else:
        smallest = int(np.bincount(y)[np.unique(y)].min())
        splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True,
                                   random_state=0)
    for train, held in splitter.split(x, y, codes if by == "sequence" else None):
        fit = fit_head(x[train], y[train], x[held], y[held], n_classes, grid=(C,))
        probabilities[held] = fit.probabilities(x[held])
    return probabilities


def find_issues(x: np.ndarray, y: np.ndarray, groups, n_classes: int, C: float,
                folds: int = FOLDS, by: str = "image") -> pd.DataFrame:
    """Rows cleanlab flags as likely mislabelled, most likely first: row, given, suggested, the
    given city's probability (label quality) and the suggested one's."""
    from cleanlab.filter import find_label_issues
    probabilities = out_of_fold_probabilities(x, y, groups, n_classes, C, folds, by)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes with few examples
        rows = find_label_issues(y, probabilities, return_indices_ranked_by="self_confidence")
    return pd.DataFrame({"row": rows, "given": y[rows],
                         "suggested": probabilities[rows].argmax(1),
                         "given_probability": probabilities[rows, y[rows]].round(4),
                         "suggested_probability": probabilities[rows].max(1).round(4)})


def issues_file(run: Run, by: str = "image"):
    from .datasets import dataset_cache
    return dataset_cache(run.info["dataset"]["root"]) / f"label-issues-{run.id}-{by}.parquet"


def run_label_issues(run: Run, by: str = "image", progress: bool = True) -> pd.DataFrame:
    """Likely mislabelled images among the run's training and validation photos, by its own
    embeddings: path, sequence, given and suggested city, their probabilities, and how many
    frames of the same sequence are flagged. Saved beside the dataset's cache for the
    dashboard."""
    from . import active
    from .splits import group_keys
    training = active.run_training(run)
    fitted = training.split != "test"
    paths = training.paths[fitted]
    _, backbone, head = active.backbone_and_head(run)
    x, ok = active.features(run, backbone, paths, progress)
    paths, x, y = paths[ok], x[ok], training.labels[fitted][ok]
    from .datasets import scan
    manifest = scan(run.info["dataset"]["root"], progress=False).manifest.set_index("path")
    groups = group_keys(manifest.loc[paths].reset_index())
    found = find_issues(x, y, groups.to_numpy(), len(run.classes), head.C, by=by)
    cities = np.asarray(run.classes)
    table = pd.DataFrame({
        "path": paths[found["row"]], "sequence": groups.to_numpy()[found["row"]],
        "given": cities[found["given"]], "suggested": cities[found["suggested"]],
        "given_probability": found["given_probability"],
        "suggested_probability": found["suggested_probability"]})
    frames = groups.value_counts()
    table["flagged_in_sequence"] = table.groupby("sequence")["path"].transform("size")
    table["sequence_frames"] = table["sequence"].map(frames).astype(int)
    out = issues_file(run, by)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    return table


def read_label_issues(run: Run, by: str = "image") -> pd.DataFrame | None:
    """The saved label issues of a run, or None when they were never computed."""
    try:
        return pd.read_parquet(issues_file(run, by))
    except (OSError, ValueError):
        return None


def by_sequence(table: pd.DataFrame) -> pd.DataFrame:
    """One row per sequence with flagged frames (its likeliest issue first), with how many of its
    frames are flagged: a whole sequence flagged is a folder filed under the wrong city, one
    frame of many a slip."""
    first = table.drop_duplicates("sequence").reset_index(drop=True)
    return first.assign(caption=[
        f"filed under {row.given} · looks like {row.suggested} "
        f"({row.suggested_probability:.0%}) · {row.flagged_in_sequence} of "
        f"{row.sequence_frames} frames flagged" for row in first.itertuples()])
