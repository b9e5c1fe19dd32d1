"""Comparing two runs fairly: on the same test images, with the uncertainty of the difference.

Two runs' accuracies can only be subtracted when they were scored on the same images; a run
tested on a random split (which leaks sequences) looks 30+ points better than one tested on a
sequence split, and nothing in the two numbers says so. So a comparison first checks that both
runs were tested on the same dataset and split, and refuses otherwise. On the same images the
difference is paired: a bootstrap over whole sequences (both runs' answers for a sequence drawn
together) gives its interval, and McNemar's exact test (a binomial test on the images only one
run gets right) its p-value. McNemar counts images as independent evidence, which frames of one
sequence are not, so a difference is called significant only when both agree: p < 0.05 and a
sequence interval that excludes zero. (On the demo, EfficientNet-Lite0 − MobileNetV2 is −6.7
points with McNemar's p = 0.012, yet its interval over the 47 test sequences is −18.6 to +5.2.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .metrics import (BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_draws,
                      percentile_interval)
from .runs import Run
from .splits import group_keys


class NotComparable(ValueError):
    """Two runs whose test sets differ: their scores cannot be subtracted."""


def test_set(run: Run) -> dict:
    """What a run was scored on: its dataset and split (method and the split's id)."""
    info = run.info
    return {"dataset": info.get("dataset", {}).get("id"),
            "split": info.get("split", {}).get("method"),
            "split_id": info.get("split", {}).get("id")}


def why_not_comparable(a: Run, b: Run) -> str | None:
    """The reason the two runs' test scores cannot be compared, or None when they can."""
    sa, sb = test_set(a), test_set(b)
    if sa["dataset"] != sb["dataset"]:
        return f"{a.id} and {b.id} were tested on different datasets"
    if (sa["split"], sa["split_id"]) != (sb["split"], sb["split_id"]):
        return (f"{a.id} was tested on the {sa['split']} split {sa['split_id']} and {b.id} on the "
                f"{sb['split']} split {sb['split_id']}: different test images")
    return None


def compare_runs(a: Run, b: Run, sequences: pd.DataFrame | None = None) -> dict:
    """Run A minus run B on their common test images, in percentage points.

    `sequences` (path, sequence_key), usually the dataset's manifest, makes the bootstrap
    resample whole sequences; without it each image is its own unit. Raises NotComparable with
    the reason when the runs were tested on different images.
    """
    reason = why_not_comparable(a, b)
    if reason:
        raise NotComparable(reason)
    pa, pb = a.predictions(), b.predictions()
    both = pa.merge(pb, on=["path", "true_city"], suffixes=("_a", "_b"))
    if both.empty:
        raise NotComparable(f"{a.id} and {b.id} share no scored test image")
    right_a = both["correct_a"].to_numpy(dtype=bool)
    right_b = both["correct_b"].to_numpy(dtype=bool)
    keys = both[["path"]].merge(
        sequences[["path", "sequence_key"]].drop_duplicates("path") if sequences is not None
        else pd.DataFrame(columns=["path", "sequence_key"]), on="path", how="left")
    codes, groups = pd.factorize(group_keys(keys))
    per_group = np.zeros((len(groups), 3))
    np.add.at(per_group, codes, np.stack([right_a, right_b, np.ones(len(both))], axis=1))
    totals = bootstrap_draws(len(groups), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) @ per_group
    differences = 100 * (totals[:, 0] - totals[:, 1]) / totals[:, 2]
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    low, high = percentile_interval(differences[:, None])[:, 0]
    return {
        "a": a.id, "b": b.id, "n_images": int(len(both)), "n_sequences": int(len(groups)),
        "top1_a": float(right_a.mean()), "top1_b": float(right_b.mean()),
        "difference_pp": float(100 * (right_a.mean() - right_b.mean())),
        "interval_pp": [float(low), float(high)], "level": BOOTSTRAP_LEVEL,
        "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": float(p_value),
        # McNemar takes images as independent; frames of a sequence are not, so a difference is
        # called significant only when the sequence interval also excludes zero.
        "significant": bool(p_value < 1 - BOOTSTRAP_LEVEL and not low <= 0 <= high),
        "per_city": _per_city(both),
    }


def _per_city(both: pd.DataFrame) -> pd.DataFrame:
    """Each city's recall in both runs and the difference in points, largest change first."""
    table = both.groupby("true_city").agg(n=("path", "size"), top1_a=("correct_a", "mean"),
                                          top1_b=("correct_b", "mean"))
    table["difference_pp"] = 100 * (table["top1_a"] - table["top1_b"])
    return table.sort_values("difference_pp", key=np.abs, ascending=False).reset_index()


def compare_ids(run_a: str, run_b: str) -> dict:
    """compare_runs for two run ids or folders, with the sequences of their dataset's last scan
    (each image its own unit when the dataset is gone)."""
    from .datasets import DatasetError, scan
    from .runs import get_run
    a, b = get_run(run_a), get_run(run_b)
    try:
        manifest = scan(a.info["dataset"]["root"], progress=False).manifest
    except (DatasetError, KeyError, OSError):
        manifest = None
    return compare_runs(a, b, manifest)
