"""Metrics on small hand-made predictions whose answers are worked out by hand in the comments."""
import json

import numpy as np
import pandas as pd
import pytest

from cityclf.metrics import (PREDICTION_COLUMNS, combine_probabilities, compute_metrics,
                             predictions_table, probability_matrix, save_metrics,
                             sequence_bootstrap)

CLASSES = ["Berlin", "Boston", "Helsinki"]
# (true city, predicted city) for 10 images; 6 are right (rows 0, 1, 4, 6, 7, 8).
CASES = [("Berlin", "Berlin"), ("Berlin", "Berlin"), ("Berlin", "Helsinki"), ("Berlin", "Helsinki"),
         ("Helsinki", "Helsinki"), ("Helsinki", "Berlin"), ("Helsinki", "Helsinki"),
         ("Boston", "Boston"), ("Boston", "Boston"), ("Boston", "Helsinki")]


def confident_rows(cases, classes=CLASSES, confidence=0.8):
    """Probabilities giving `confidence` to the predicted city and sharing the rest equally."""
    probs = np.full((len(cases), len(classes)), (1 - confidence) / (len(classes) - 1))
    for row, (_, predicted) in enumerate(cases):
        probs[row, classes.index(predicted)] = confidence
    return probs


def ten_predictions(extra_cases=()):
    cases = CASES + list(extra_cases)
    return predictions_table([f"img{i}.jpg" for i in range(len(cases))],
                             [true for true, _ in cases], confident_rows(cases), CLASSES)


def manifest():
    """night and scene for the ten images, in another order, plus an image that was not scored."""
    night = [True, True, True, False, True, False, False, False, False, False]
    scene = ["street"] * 7 + ["highway"] * 3
    table = pd.DataFrame({"path": [f"img{i}.jpg" for i in range(10)] + ["other.jpg"],
                          "night": pd.array(night + [True], dtype="boolean"),
                          "scene": scene + ["street"],
                          "view_direction": [None] * 11})
    return table.iloc[::-1].reset_index(drop=True)


def assert_plain_json(value):
    """Only built-in JSON types: np.float64 passes json.dumps but np.int64 does not."""
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert type(value) in (str, int, float, bool, type(None)), (value, type(value))


def test_predictions_table_sorts_cities_by_probability():
    probs = np.array([[0.1, 0.2, 0.3, 0.05, 0.15, 0.2],
                      [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    classes = list("ABCDEF")
    table = predictions_table(["a.jpg", "b.jpg"], ["C", "F"], probs, classes)
    assert list(table.columns) == PREDICTION_COLUMNS
    top = ["top1", "top2", "top3", "top4", "top5"]
    prob = ["prob1", "prob2", "prob3", "prob4", "prob5"]
    assert table.loc[0, top].tolist() == ["C", "B", "F", "E", "A"]  # ties keep the class order
    assert table.loc[0, prob].tolist() == [0.3, 0.2, 0.2, 0.15, 0.1]
    assert table["correct"].tolist() == [True, False]


def test_top5_counts_true_city_in_first_five_ranks_only():
    classes = list("ABCDEF")
    probs = np.tile([0.5, 0.2, 0.1, 0.1, 0.06, 0.04], (4, 1))
    # true city at rank 1, 3, 5 and 6 (outside the top 5)
    table = predictions_table(["a", "b", "c", "d"], ["A", "C", "E", "F"], probs, classes)
    metrics = compute_metrics(table, classes)
    assert metrics["n_images"] == 4
    assert metrics["top1"] == pytest.approx(1 / 4)
    assert metrics["top5"] == pytest.approx(3 / 4)


def test_fewer_than_five_classes_leave_missing_ranks_empty():
    probs = np.array([[0.3, 0.7], [0.6, 0.4]])
    table = predictions_table(["a", "b"], ["X", "Y"], probs, ["X", "Y"])
    assert table["top2"].tolist() == ["X", "Y"]
    assert table[["top3", "top4", "top5"]].isna().all().all()
    assert table[["prob3", "prob4", "prob5"]].isna().all().all()
    metrics = compute_metrics(table, ["X", "Y"])
    assert (metrics["top1"], metrics["top5"]) == (0.0, 1.0)


def test_probability_matrix_must_match_paths_and_classes():
    with pytest.raises(ValueError, match="shape"):
        predictions_table(["a", "b"], ["X", "Y"], np.ones((2, 3)) / 3, ["X", "Y"])


def test_accuracy_f1_and_confusion_matrix_match_hand_counts():
    metrics = compute_metrics(ten_predictions(), CLASSES)
    assert metrics["n_images"] == 10
    assert metrics["top1"] == pytest.approx(0.6)
    assert metrics["top5"] == 1.0  # three classes: every city is in the top 5
    # Helsinki: predicted 5 times, 2 right (precision 2/5); 3 images, 2 found (recall 2/3).
    helsinki = metrics["per_city"]["Helsinki"]
    assert helsinki["precision"] == pytest.approx(0.4)
    assert helsinki["recall"] == pytest.approx(2 / 3)
    assert helsinki["f1"] == pytest.approx(0.5)
    assert helsinki["support"] == 3
    # F1 = 2TP / (2TP + FP + FN): Berlin 4/7, Boston 4/5, Helsinki 1/2.
    assert metrics["macro"]["f1"] == pytest.approx((4 / 7 + 4 / 5 + 1 / 2) / 3)
    assert metrics["confusion_matrix"] == {"labels": CLASSES,
                                           "matrix": [[2, 0, 2], [0, 2, 1], [1, 0, 2]]}


def test_confusions_are_ordered_by_count():
    metrics = compute_metrics(ten_predictions(), CLASSES)
    most = metrics["most_confused"]
    assert most[0] == {"true": "Berlin", "predicted": "Helsinki", "count": 2, "rate": 0.5}
    assert {(c["true"], c["predicted"], c["count"]) for c in most[1:]} == {
        ("Boston", "Helsinki", 1), ("Helsinki", "Berlin", 1)}
    assert most[1]["rate"] == pytest.approx(1 / 3)
    assert metrics["confused_pairs"] == [{"a": "Berlin", "b": "Helsinki", "count": 3},
                                         {"a": "Boston", "b": "Helsinki", "count": 1}]


def test_by_group_joins_the_manifest_on_path():
    metrics = compute_metrics(ten_predictions(), CLASSES, manifest())
    by_group = metrics["by_group"]
    # night rows 0, 1, 2, 4: 3 right; day rows 3, 5-9: 3 right.
    assert by_group["night"] == {"True": {"top1": 0.75, "n": 4}, "False": {"top1": 0.5, "n": 6}}
    assert by_group["scene"]["street"] == {"top1": pytest.approx(4 / 7), "n": 7}
    assert by_group["scene"]["highway"] == {"top1": pytest.approx(2 / 3), "n": 3}
    assert "view_direction" not in by_group  # all missing
    assert "control_panel" not in by_group  # not in the manifest
    assert compute_metrics(ten_predictions(), CLASSES)["by_group"] == {}


def test_ece_of_constant_confidence_is_the_gap_to_accuracy():
    metrics = compute_metrics(ten_predictions(), CLASSES)  # every prob1 is 0.8, 60 % right
    assert metrics["ece"] == pytest.approx(0.2)
    filled = [b for b in metrics["reliability"] if b["n"]]
    assert len(metrics["reliability"]) == 15
    assert len(filled) == 1 and filled[0]["n"] == 10
    assert filled[0]["lo"] <= 0.8 <= filled[0]["hi"]
    assert filled[0]["confidence"] == pytest.approx(0.8)
    assert filled[0]["accuracy"] == pytest.approx(0.6)


def test_ece_weights_each_bin_by_its_images():
    cases = [("A", "A")] * 4 + [("A", "A"), ("A", "A"), ("A", "B"), ("A", "B")]
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2 + [[0.45, 0.55]] * 2)
    table = predictions_table(range(8), [t for t, _ in cases], probs, ["A", "B"])
    # bin of 0.95: accuracy 1, gap 0.05; bin of 0.55: accuracy 0.5, gap 0.05; each half the images.
    assert compute_metrics(table, ["A", "B"])["ece"] == pytest.approx(0.05)


def test_unknown_cities_are_reported_and_left_out_of_every_metric():
    known_only = compute_metrics(ten_predictions(), CLASSES, manifest(), ms_per_image=3.0)
    extra = [("Tokyo", "Berlin"), ("Tokyo", "Helsinki"), ("Paris", "Boston")]
    with_unknown = compute_metrics(ten_predictions(extra), CLASSES, manifest(), ms_per_image=3.0)
    assert with_unknown.pop("unknown_cities") == {"Paris": 1, "Tokyo": 2}
    assert known_only.pop("unknown_cities") == {}
    assert with_unknown == known_only


def test_no_scorable_rows_gives_empty_metrics():
    table = predictions_table(["a", "b"], ["Tokyo", "Tokyo"], confident_rows(CASES[:2]), CLASSES)
    metrics = compute_metrics(table, CLASSES, manifest())
    assert metrics["n_images"] == 0
    assert metrics["unknown_cities"] == {"Tokyo": 2}
    assert metrics["top1"] is None
    assert metrics["confusion_matrix"] is None and metrics["ece"] is None
    json.dumps(metrics, allow_nan=False)


def test_metrics_are_plain_json():
    metrics = compute_metrics(ten_predictions([("Tokyo", "Berlin")]), CLASSES, manifest(),
                              ms_per_image=np.float32(4.5))
    assert metrics["ms_per_image"] == 4.5
    assert_plain_json(metrics)
    json.dumps(metrics, allow_nan=False)


def test_save_metrics_recomputes_from_the_parquet_file(tmp_path):
    table = ten_predictions([("Tokyo", "Berlin")])
    path = tmp_path / "run" / "predictions.parquet"
    path.parent.mkdir()
    table.to_parquet(path)
    saved = save_metrics(path, CLASSES, manifest(), ms_per_image=12.5)
    assert saved == compute_metrics(table, CLASSES, manifest(), ms_per_image=12.5)
    assert json.loads((path.parent / "metrics.json").read_text()) == saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json", "predictions.parquet"]


def test_mean_log_probability_picks_the_city_no_single_photo_ruled_out():
    # Three photos of one street. Two name A and one names C, and the mean probability also
    # names A (0.42); but the second photo all but rules A out (1 %), and only B is plausible on
    # every photo. Mean log-probabilities: A (ln .70 + ln .01 + ln .55) / 3 = -1.853,
    # B (ln .29 + ln .39 + ln .40) / 3 = -1.032, C (ln .01 + ln .60 + ln .05) / 3 = -2.704.
    probs = np.array([[0.70, 0.29, 0.01],
                      [0.01, 0.39, 0.60],
                      [0.55, 0.40, 0.05]])
    assert probs.argmax(axis=1).tolist() == [0, 2, 0] and probs.mean(axis=0).argmax() == 0
    combined = combine_probabilities(probs)
    expected = np.exp([-1.853, -1.032, -2.704])
    assert combined == pytest.approx(expected / expected.sum(), abs=1e-3)  # B 0.614
    assert combined.argmax() == 1 and combined.sum() == pytest.approx(1)


def test_combining_floors_zero_probabilities_and_works_along_any_axis():
    combined = combine_probabilities([[1.0, 0.0], [0.5, 0.5]])
    assert np.isfinite(combined).all() and combined.argmax() == 0
    # two places of two photos each, combined per place
    stacked = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.2, 0.8], [0.4, 0.6]]])
    assert combine_probabilities(stacked, axis=1).argmax(axis=1).tolist() == [0, 1]
    assert combine_probabilities(stacked[0]) == pytest.approx(combine_probabilities(stacked, 1)[0])


def sequence_predictions():
    """Seven images: a sequence s1 of the three photos above (true B, no frame right), a
    sequence s2 of two frames (true A, both say C), a frame without a sequence (true C, right)
    and a frame the manifest does not know (true A, says B)."""
    probs = np.array([[0.70, 0.29, 0.01], [0.01, 0.39, 0.60], [0.55, 0.40, 0.05],
                      [0.30, 0.10, 0.60], [0.30, 0.10, 0.60],
                      [0.10, 0.20, 0.70],
                      [0.20, 0.70, 0.10]])
    truth = ["B", "B", "B", "A", "A", "C", "A"]
    table = predictions_table([f"f{i}.jpg" for i in range(7)], truth, probs, ["A", "B", "C"])
    manifest = pd.DataFrame({"path": [f"f{i}.jpg" for i in range(6)],
                             "sequence_key": pd.array(["s1"] * 3 + ["s2"] * 2 + [None],
                                                      dtype="string")})
    return table, manifest


def test_sequence_accuracy_combines_each_sequences_frames():
    table, manifest = sequence_predictions()
    metrics = compute_metrics(table, ["A", "B", "C"], manifest)
    assert metrics["top1"] == pytest.approx(1 / 7)
    # s1 right (B, as worked out above), s2 wrong, the lone frame right, the unknown one wrong.
    assert metrics["n_sequences"] == 4
    assert metrics["sequence_top1"] == pytest.approx(2 / 4)
    # Without a manifest every image is its own sequence.
    alone = compute_metrics(table, ["A", "B", "C"])
    assert (alone["n_sequences"], alone["sequence_top1"]) == (7, alone["top1"])


def test_probability_matrix_shares_what_the_top5_leave_among_the_other_cities():
    classes = list("ABCDEFG")
    probs = np.array([[0.40, 0.20, 0.10, 0.10, 0.10, 0.06, 0.04],
                      [0.02, 0.03, 0.05, 0.10, 0.20, 0.25, 0.35]])
    matrix = probability_matrix(predictions_table(["a", "b"], ["A", "G"], probs, classes), classes)
    # Row 0 keeps A-E; F and G share the 0.10 left. Row 1 keeps C-G; A and B share 0.05.
    assert matrix[0] == pytest.approx([0.40, 0.20, 0.10, 0.10, 0.10, 0.05, 0.05])
    assert matrix[1] == pytest.approx([0.025, 0.025, 0.05, 0.10, 0.20, 0.25, 0.35])
    three = np.array([[0.2, 0.5, 0.3]])
    exact = probability_matrix(predictions_table(["a"], ["A"], three, list("ABC")), list("ABC"))
    assert exact == pytest.approx(three)  # five classes or fewer: nothing is missing


def _clustered_predictions(rng, accuracy: float, sequences: int = 40, frames: int = 8):
    """Predictions of 2 cities where each sequence's frames are all right or all wrong (the
    extreme of near-identical frames), each sequence right with probability `accuracy`."""
    rows = []
    for s in range(sequences):
        city, other = ("a", "b") if s % 2 else ("b", "a")
        right = rng.random() < accuracy
        for f in range(frames):
            rows.append({"path": f"s{s}/f{f}.jpg", "true_city": city,
                         "top1": city if right else other, "prob1": 0.9,
                         "top2": other if right else city, "prob2": 0.1})
    table = pd.DataFrame(rows)
    for r in range(3, 6):
        table[f"top{r}"], table[f"prob{r}"] = None, np.nan
    table["correct"] = table["top1"] == table["true_city"]
    manifest = pd.DataFrame({"path": table["path"], "sequence_key": table["path"].str[:3]})
    return table[PREDICTION_COLUMNS], manifest


def test_sequence_intervals_cover_the_true_accuracy_about_95_percent_of_the_time():
    rng, covered, trials = np.random.default_rng(1), 0, 200
    for _ in range(trials):
        table, manifest = _clustered_predictions(rng, accuracy=0.7)
        low, high = sequence_bootstrap(table, ["a", "b"], manifest["sequence_key"])[
            "intervals"]["top1"]
        covered += low <= 0.7 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_sequence_bootstrap_is_wider_than_an_image_bootstrap_on_clustered_frames():
    table, manifest = _clustered_predictions(np.random.default_rng(0), accuracy=0.7)
    by_sequence = compute_metrics(table, ["a", "b"], manifest)
    by_image = compute_metrics(table, ["a", "b"], None)  # no sequences: each image alone
    width = lambda m: m["intervals"]["top1"][1] - m["intervals"]["top1"][0]  # noqa: E731
    assert by_sequence["bootstrap"]["groups"] == 40 and by_image["bootstrap"]["groups"] == 320
    assert width(by_sequence) > 2 * width(by_image)
    low, high = by_sequence["intervals"]["top1"]
    assert low < by_sequence["top1"] < high


def test_every_metric_gets_an_interval_around_its_value():
    table, manifest = _clustered_predictions(np.random.default_rng(2), accuracy=0.6)
    m = compute_metrics(table, ["a", "b"], manifest.assign(night=table["path"] < "s2"))
    intervals = m["intervals"]
    for name, value in (("top1", m["top1"]), ("top5", m["top5"]), ("macro_f1", m["macro"]["f1"]),
                        ("sequence_top1", m["sequence_top1"])):
        low, high = intervals[name]
        assert low <= value <= high, name
    for city in ("a", "b"):
        for score in ("precision", "recall", "f1"):
            low, high = intervals["per_city"][city][score]
            assert low <= m["per_city"][city][score] <= high
    assert set(intervals["by_group"]["night"]) == {"True", "False"}
    again = compute_metrics(table, ["a", "b"], manifest.assign(night=table["path"] < "s2"))
    assert again["intervals"] == intervals  # seeded
