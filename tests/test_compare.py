"""Fair comparison of two runs: refused across test sets, paired on the same images."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from cityclf.compare import NotComparable, compare_runs
from cityclf.metrics import PREDICTION_COLUMNS
from cityclf.runs import Run


def fake_run(tmp_path, name, correct, split_id="s1", method="sequence", dataset="d1"):
    """A run folder holding only what a comparison reads: run.json and predictions.parquet."""
    folder = tmp_path / name
    folder.mkdir()
    n = len(correct)
    table = pd.DataFrame({"path": [f"seq{i // 4}/img{i}.jpg" for i in range(n)],
                          "true_city": ["a" if i % 8 < 4 else "b" for i in range(n)]})
    table["top1"] = np.where(correct, table["true_city"], np.where(table["true_city"] == "a", "b", "a"))
    table["prob1"] = 0.9
    for r in range(2, 6):
        table[f"top{r}"], table[f"prob{r}"] = None, np.nan
    table["correct"] = np.asarray(correct, bool)
    table[PREDICTION_COLUMNS].to_parquet(folder / "predictions.parquet", index=False)
    (folder / "run.json").write_text(json.dumps({
        "classes": ["a", "b"], "dataset": {"id": dataset}, "model": "mobilenet_v2",
        "preprocess": {"img_size": 224},
        "split": {"method": method, "id": split_id}}))
    return Run(folder), table


def test_runs_tested_on_different_splits_or_datasets_are_refused_with_the_reason(tmp_path):
    a, _ = fake_run(tmp_path, "a", [True] * 16)
    b, _ = fake_run(tmp_path, "b", [True] * 16, method="random", split_id="s2")
    c, _ = fake_run(tmp_path, "c", [True] * 16, dataset="d2")
    with pytest.raises(NotComparable, match="random split"):
        compare_runs(a, b)
    with pytest.raises(NotComparable, match="different datasets"):
        compare_runs(a, c)


def test_same_split_gives_points_a_paired_interval_and_mcnemars_exact_p(tmp_path):
    rng = np.random.default_rng(0)
    right_b = rng.random(400) < 0.6
    right_a = right_b | (rng.random(400) < 0.5)  # A gets right what B does, and more
    a, table = fake_run(tmp_path, "a", right_a)
    b, _ = fake_run(tmp_path, "b", right_b)
    sequences = pd.DataFrame({"path": table["path"], "sequence_key": table["path"].str.split("/").str[0]})
    result = compare_runs(a, b, sequences)
    expected = 100 * (right_a.mean() - right_b.mean())
    assert result["difference_pp"] == pytest.approx(expected)
    low, high = result["interval_pp"]
    assert 0 < low < expected < high
    only_a = int((right_a & ~right_b).sum())
    assert result["only_a_right"] == only_a and result["only_b_right"] == 0
    assert result["mcnemar_p"] == pytest.approx(binomtest(only_a, only_a, 0.5).pvalue)
    assert result["significant"] and result["n_sequences"] == 100
    assert set(result["per_city"]["true_city"]) == {"a", "b"}


def test_identical_runs_differ_by_nothing_and_not_significantly(tmp_path):
    right = np.random.default_rng(1).random(80) < 0.7
    a, _ = fake_run(tmp_path, "a", right)
    b, _ = fake_run(tmp_path, "b", right)
    result = compare_runs(a, b)
    assert result["difference_pp"] == 0 and result["interval_pp"] == [0, 0]
    assert result["mcnemar_p"] == 1.0 and not result["significant"]


def test_cli_compare_prints_points_and_exits_2_when_refused(tmp_path, capsys):
    from cityclf.cli import main
    right = np.random.default_rng(2).random(120) < 0.6
    a, _ = fake_run(tmp_path, "a", right | (np.arange(120) % 3 == 0))
    b, _ = fake_run(tmp_path, "b", right)
    c, _ = fake_run(tmp_path, "c", right, method="random", split_id="s9")
    assert main(["compare", str(a.path), str(b.path)]) == 0
    out = capsys.readouterr().out
    assert "pp (95 % interval" in out and "McNemar" in out and "%" not in out.split("pp")[0]
    assert main(["compare", str(a.path), str(c.path)]) == 2
    assert "different test images" in capsys.readouterr().err
