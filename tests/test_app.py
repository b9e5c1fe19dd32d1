"""The dashboard driven like a user would, with Streamlit's AppTest, on the trained tiny demo.

Every check compares what a page shows with the numbers in the dataset and run files, and every
page must render without an exception element, also on an empty home and beside broken runs.
"""
import base64
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityclf import config, dashboard
from cityclf.compare import compare_ids
from cityclf.dashboard import fmt
from cityclf.datasets import scan
from cityclf.runs import list_runs
from cityclf.splits import load_split, split_path
from conftest import write_image, rerun

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
MY_PAGES = ("pages/1_dataset.py", "pages/2_leaderboard.py", "pages/3_errors.py")


def open_app(page: str | None = None, **sidebar) -> AppTest:
    """The app on Home, with sidebar selectboxes (by key) set, then on `page`.

    AppTest shows the entry point's sidebar only on the first page, so choices are made there,
    as a user would before opening a page. Fails on any exception element.
    """
    at = AppTest.from_file(APP, default_timeout=60).run()
    for key, value in sidebar.items():
        at.selectbox(key=key).set_value(value)
        rerun(at)
    if page:
        at.switch_page(page)
    return rerun(at)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def chosen_run(at: AppTest):
    """The sidebar's run, checked to be a best one (the tiny demo's runs all use one split)."""
    run = next(run for run in list_runs() if run.id == at.session_state[dashboard.RUN_ID])
    assert run.metrics["top1"] == max(r.metrics["top1"] for r in list_runs())
    return run


def test_home_shows_the_dataset_and_the_best_run(use_trained_home):
    at = open_app()
    dataset = scan(config.demo_dir(), progress=False)
    summary = dataset.summary()
    assert metric(at, "images") == f"{len(dataset.manifest):,}"
    assert metric(at, "cities") == str(len(summary)) == "3"
    assert metric(at, "sequences") == f"{summary['sequences'].sum():,}"
    assert metric(at, "best top-1") == f"{chosen_run(at).metrics['top1']:.1%}"
    assert at.session_state[dashboard.DATASET_ROOT] == str(config.demo_dir())
    assert at.session_state[dashboard.COMPARE_RUN_ID] is None
    assert len(at.get("page_link")) == 7  # with Label and Generated streets
    assert not at.button  # no build button when the demo exists


@pytest.mark.parametrize("page", MY_PAGES)
def test_a_page_opened_by_its_url_still_gets_the_sidebar(use_trained_home, page):
    # Before the entry point has run once, Streamlit runs a pages/ file on its own.
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    chosen_run(at)
    assert at.title and at.title[0].value != "cityclf"  # the page itself, not Home


def test_dataset_page_counts_filters_and_pages(use_trained_home):
    at = open_app("pages/1_dataset.py")
    manifest = scan(config.demo_dir(), progress=False).manifest
    assert metric(at, "images") == str(len(manifest))
    assert metric(at, "files skipped") == "0"
    assert "Scene tags not computed yet: `cityclf data scenes" in texts(at.info)
    keys = [caption.split(" · ")[1] for caption in at.image[0].captions]
    assert keys == manifest["key"].head(dashboard.PER_PAGE).tolist()
    assert at.get("pagination")[0].num_pages == math.ceil(len(manifest) / dashboard.PER_PAGE)

    at.selectbox(key="eda_city").set_value("tokyo")
    at.selectbox(key="eda_night").set_value("day")
    rerun(at)
    day_in_tokyo = manifest[(manifest["city"] == "tokyo") & ~manifest["night"].astype(bool)]
    assert f"{len(day_in_tokyo)} images match." in texts(at.caption)
    shown = at.image[0].captions
    assert shown and all(c.startswith("tokyo · ") and "night" not in c for c in shown)
    assert {c.split(" · ")[1] for c in shown} <= set(day_in_tokyo["key"])

    assert at.selectbox(key="eda_gps_city").options == ["all cities", "tokyo"]  # filters too
    at.selectbox(key="eda_gps_city").set_value("tokyo")
    rerun(at)  # one city's drives


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def numbers(values) -> list:
    """A plotly trace's numbers, which plotly writes as a base64 typed array when it can."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), values["dtype"]).tolist()
    return list(values)


def test_dataset_page_browses_one_split_and_its_charts_follow(use_trained_home):
    """The split every run is tested on is a column and a filter; the charts show what matches."""
    at = open_app("pages/1_dataset.py")
    split = load_split(scan(config.demo_dir(), progress=False))
    assert at.selectbox(key="eda_split").options == ["any", "train", "val", "test"]
    at.selectbox(key="eda_split").set_value("test")
    at.selectbox(key="eda_city").set_value("tokyo")
    rerun(at)
    test = split[(split["split"] == "test") & (split["city"] == "tokyo")]
    assert f"{len(test)} images match." in texts(at.caption)
    shown = at.image[0].captions
    assert shown and all(c.startswith("tokyo · ") and c.endswith(" · test") for c in shown)
    assert {c.split(" · ")[1] for c in shown} == set(test["key"])
    bars = chart_specs(at)[0]["data"]  # images per city and split: only tokyo's test images
    assert [(t["name"], sum(numbers(t["y"]))) for t in bars if t["type"] == "bar"] == \
        [("test", len(test))]
    years = next(c for c in chart_specs(at) if c["layout"].get("title", {}).get("text") == "year")
    assert sum(sum(numbers(t["y"])) for t in years["data"]) == len(test)


def test_a_dataset_nobody_split_yet_has_no_split_filter(tmp_path):
    for i in range(2):
        for city in ("oslo", "rome"):
            write_image(tmp_path / "photos" / city / f"{i}.jpg")
    at = open_app(dataset_pick="another folder")
    at.text_input(key="dataset_typed").input(str(tmp_path / "photos"))
    rerun(at)
    at.switch_page("pages/1_dataset.py")
    rerun(at)
    assert at.selectbox(key="eda_split").proto.disabled
    assert not split_path(scan(tmp_path / "photos", progress=False)).exists()  # nor makes one


def test_leaderboard_lists_every_run_and_compares_two(use_trained_home):
    at = open_app("pages/2_leaderboard.py")
    table = at.dataframe[0].value
    runs = {run.info["name"]: run for run in list_runs()}
    assert len(table) == 3
    assert table["top1"].is_monotonic_decreasing
    for row in table.itertuples():
        assert row.top1 == pytest.approx(runs[row.name].metrics["top1"])
        assert row.macro_f1 == pytest.approx(runs[row.name].metrics["macro"]["f1"])
        assert row.top1_interval == fmt.interval(runs[row.name].metrics["intervals"]["top1"])
        assert "–" in row.top1_interval  # "60.1–72.0 %"
    points = chart_specs(at)[0]["data"]  # speed against accuracy, each with its interval
    assert all("arrayminus" in trace["error_y"] for trace in points)
    assert "No tuning study with two or more runs yet" in texts(at.info)
    assert "Pick a second run" in texts(at.info)

    other = next(r for r in list_runs() if r.id != at.session_state[dashboard.RUN_ID])
    at = open_app("pages/2_leaderboard.py", compare_pick=other.id)
    assert at.session_state[dashboard.COMPARE_RUN_ID] == other.id
    assert "Pick a second run" not in texts(at.info) and not at.warning
    result = compare_ids(at.session_state[dashboard.RUN_ID], other.id)
    top1 = next(m for m in at.metric if m.label == "top-1")
    assert top1.value == fmt.share(result["top1_a"])
    assert top1.proto.delta == fmt.points(result["difference_pp"])
    assert fmt.points_interval(result["interval_pp"]) in top1.proto.delta_description
    assert f"vs {other.info['name']}" in top1.proto.delta_description
    for metric in at.metric:  # every difference is in points, never in percent
        assert "%" not in metric.proto.delta
    summary = texts(at.markdown)
    assert fmt.p_value(result["mcnemar_p"]) in summary
    assert ("is better" if result["significant"] else "Not a significant difference") in summary
    per_city = chart_specs(at)[-1]["data"][0]
    assert sorted(per_city["x"]) == sorted(result["per_city"]["true_city"])
    assert all(text.endswith(" pp") for text in per_city["text"])


def confusion_shown(at: AppTest) -> pd.DataFrame:
    return at.expander[0].dataframe[0].value


def test_errors_page_matrix_toggles_and_cell_images(use_trained_home):
    at = open_app("pages/3_errors.py")
    run = chosen_run(at)
    matrix = run.metrics["confusion_matrix"]
    counts = pd.DataFrame(matrix["matrix"], index=matrix["labels"], columns=matrix["labels"])
    assert (confusion_shown(at).to_numpy() == counts.to_numpy()).all()
    assert metric(at, "top-1") == f"{run.metrics['top1']:.1%}"
    top1 = next(m for m in at.metric if m.label == "top-1")
    assert top1.proto.delta == f"95 % interval {fmt.interval(run.metrics['intervals']['top1'])}"

    at.toggle(key="cm_normalised").set_value(True)
    rerun(at)
    shares = confusion_shown(at)
    assert shares.to_numpy() == pytest.approx(counts.div(counts.sum(axis=1), axis=0).to_numpy())
    at.toggle(key="cm_hide_diagonal").set_value(True)
    rerun(at)
    assert confusion_shown(at).isna().to_numpy().diagonal().all()

    predictions = run.predictions()
    true, predicted = predictions.groupby(["true_city", "top1"]).size().idxmax()
    at.selectbox(key="cell_true").set_value(true)
    at.selectbox(key="cell_pred").set_value(predicted)
    rerun(at)
    expected = predictions[(predictions["true_city"] == true) & (predictions["top1"] == predicted)]
    sequences = expected["path"].map(
        scan(config.demo_dir(), progress=False).manifest.set_index("path")["sequence_key"])
    assert (f"{len(expected)} test image(s) of **{true}** predicted as **{predicted}**, from "
            f"{sequences.nunique()} sequence(s)") in texts(at.caption)
    # One card per sequence, its frame count first, and an expander with every frame.
    cards = [image.captions[0] for image in at.image if len(image.captions) == 1
             and " frame" in image.captions[0]]
    assert sorted(int(card.split(" ")[0]) for card in cards) == \
        sorted(sequences.value_counts().tolist())
    frames = [caption.split(" · ")[-1] for expander in at.expander
              if expander.label.startswith("All ") for caption in expander.image[0].captions]
    several = sequences.groupby(sequences).transform("size") > 1
    assert sorted(frames) == sorted(Path(p).stem for p in expected.loc[several, "path"])

    never = next(p for p in run.classes if p != true and p not in set(predictions.loc[
        predictions["true_city"] == true, "top1"]))
    at.selectbox(key="cell_pred").set_value(never)
    rerun(at)
    assert (f"No test image of {true} was predicted as {never} — the model never confused them "
            "this way.") in texts(at.info)
def test_any_image_of_the_errors_grids_can_be_explained(use_trained_home):
    """A confident mistake, explained for the city the model said and for the true one."""
    run = next(run for run in list_runs()  # the tiny demo's best run may make no mistake
               if run.info["kind"] == "keras" and len(dashboard.confident_wrong(run.predictions())))
    at = open_app("pages/3_errors.py", run_pick=run.id)
    wrong = dashboard.confident_wrong(run.predictions()).iloc[0]
    assert wrong["top1"] != wrong["true_city"]
    at.selectbox(key="wrong_explain").set_value(wrong["path"])
    rerun(at)
    captions = [caption for image in at.image for caption in image.captions]
    for city in (wrong["top1"], wrong["true_city"]):
        assert any(caption.startswith(f"Green: supports {city};") for caption in captions), city
    headings = texts(at.markdown)
    # the grid's caption and the panel print the same probability, rounded the same way
    grid = next(image for image in at.image if any(
        caption.endswith(Path(wrong["path"]).stem) for caption in image.captions))
    shown = fmt.probability(wrong["prob1"])
    assert any(f"{wrong['top1']} {shown}" in caption for caption in grid.captions)
    assert f"**The model's answer: {wrong['top1']}** ({shown})" in headings
    assert f"**The true city: {wrong['true_city']}**" in headings
    right = dashboard.least_confident_right(run.predictions()).iloc[0]
    at.selectbox(key="right_explain").set_value(right["path"])
    rerun(at)
    assert f"**Runner-up: {right['top2']}**" in texts(at.markdown)
    at.radio(key="wrong_method").set_value("occlusion")
    rerun(at)
    captions = [caption for image in at.image for caption in image.captions]
    assert any(f"lowers {wrong['true_city']}'s probability" in caption for caption in captions)


def test_a_click_on_the_matrix_names_its_cell():
    metrics = {"confusion_matrix": {"labels": ["a", "b"], "matrix": [[3, 1], [0, 2]]}}
    fig = dashboard.fig_confusion(dashboard.confusion_table(metrics), False, ("b", "a"))
    overlay = fig.data[1]
    for x, y in zip(overlay.x, overlay.y):
        point = {"selection": {"points": [{"x": x, "y": y}]}}
        assert dashboard.clicked_cell(point) == (y, x)  # (true, predicted)
    assert dashboard.clicked_cell({"selection": {"points": []}}) is None


def test_one_rounding_for_every_number():
    assert [fmt.probability(p) for p in (0.873, 0.005, 0.0001, 0.99996, 1.0, 0.0, None)] == \
        ["87.3%", "0.5%", "<0.1%", ">99.9%", "100.0%", "0.0%", "–"]
    assert fmt.with_interval(0.664, [0.601, 0.72]) == "66.4% (60.1–72.0 %)"
    assert fmt.with_interval(0.664, [0.601, 0.72], percent=False) == "0.664 (0.60–0.72)"
    assert fmt.with_interval(0.664, None) == "66.4%" and fmt.interval([None, 0.7]) == "–"
    assert fmt.points(3.24) == "+3.2 pp" and fmt.points(-1.0) == "-1.0 pp"  # st.metric: red
    assert fmt.points_interval([-1.04, 7.4]) == "-1.0 to +7.4 pp"
    assert fmt.difference(0.6, 0.63) == "-3.0 pp" and fmt.difference(None, 0.6) == "–"
    assert fmt.p_value(0.0004) == "p < 0.001" and fmt.p_value(0.0421) == "p = 0.042"
    assert dashboard.interval_columns({"intervals": {"top1": [0.5, 0.7]}})["top1_low"] == 0.5
    assert math.isnan(dashboard.interval_columns({"intervals": {"top1": "bad"}})["top1_high"])
    assert math.isnan(dashboard.interval_columns({})["macro_f1_low"])


def test_a_cell_groups_its_frames_by_sequence():
    cell = pd.DataFrame({"path": ["a1", "b1", "a2", "c1", "a3"],
                         "prob1": [0.9, 0.8, 0.7, 0.6, 0.5]})
    manifest = pd.DataFrame({"path": ["a1", "a2", "a3", "b1", "c1"],
                             "sequence_key": ["A", "A", "A", "B", None],
                             "frame_number": [3, 1, 2, 1, None]})
    groups = dashboard.sequence_groups(cell, manifest)
    assert groups[["path", "frames"]].values.tolist() == [["a1", 3], ["b1", 1], ["c1", 1]]
    assert dashboard.sequence_frames(cell, manifest, "A")["path"].tolist() == ["a2", "a3", "a1"]
    assert dashboard.sequence_groups(cell, None)["frames"].tolist() == [1] * 5  # dataset gone

    metrics = {"confusion_matrix": {"labels": ["a", "b"], "matrix": [[0, 2], [0, 0]]}}
    assert dashboard.empty_cell_message(metrics, "b", "a").startswith("The test split has no")
    assert "got none of its 2 test image(s) of a right" in \
        dashboard.empty_cell_message(metrics, "a", "a")


def test_an_empty_home_offers_the_demo_and_explains_every_page():
    at = open_app()
    assert at.button[0].label == "Build the demo"
    assert "There is no demo dataset yet" in texts(at.info)
    assert at.session_state[dashboard.RUN_ID] is None
    for page in MY_PAGES:
        at.switch_page(page)
        rerun(at)
        assert at.info, page
    assert "No run of this dataset yet. `cityclf demo`" in texts(at.info)


def test_the_build_button_builds_the_demo(monkeypatch):
    from cityclf import demo
    from cityclf.synth import synthesize
    steps = []

    def small_demo(on_step, progress=True):
        on_step("drawing", 0.0)
        steps.append("drawing")
        synthesize(config.demo_dir(), cities=2, per_city=16, size=(64, 48), progress=False,
                   workers=1)
        on_step("demo ready", 1.0)

    monkeypatch.setattr(demo, "build_demo", small_demo)
    at = open_app()
    at.button[0].click()
    rerun(at)
    assert steps == ["drawing"]
    assert metric(at, "cities") == "2"
    assert "The demo dataset has no trained run yet" in texts(at.info)
    assert at.button[0].label == "Build the demo"  # which would now train the runs


def test_odd_runs_neither_break_nor_mislead_the_pages(trained_home, cityclf_home):
    """A garbage metrics.json, one of the wrong shape, a run of another dataset, a leaky run."""
    (cityclf_home / "data").symlink_to(trained_home / "data")
    models = cityclf_home / "models"
    models.mkdir()
    runs = [path for path in (trained_home / "models").iterdir() if not path.name.startswith(".")]
    for run in runs:
        (models / run.name).symlink_to(run)
    some_run = runs[0]
    for name, metrics in (("garbage", "{not json"), ("wrong-shape", "[1, 2]")):
        shutil.copytree(some_run, models / name)
        (models / name / "metrics.json").write_text(metrics)
    shutil.copytree(some_run, models / "foreign")
    info = json.loads((models / "foreign" / "run.json").read_text())
    info["dataset"]["id"] = "elsewhere-12345678"
    (models / "foreign" / "run.json").write_text(json.dumps(info))

    shutil.copytree(some_run, models / "leaky")
    info = json.loads((models / "leaky" / "run.json").read_text())
    info["split"]["method"] = "random"
    (models / "leaky" / "run.json").write_text(json.dumps(info))
    metrics = json.loads((models / "leaky" / "metrics.json").read_text())
    (models / "leaky" / "metrics.json").write_text(json.dumps({**metrics, "top1": 1.0}))

    at = open_app()
    assert len(at.selectbox(key="run_pick").options) == 4
    assert at.session_state[dashboard.RUN_ID] != "leaky"  # the best top-1, but flattered
    at.switch_page("pages/2_leaderboard.py")
    rerun(at)
    table = at.dataframe[0].value
    assert len(table) == 4 and table["split"].tolist()[-1] == "random"
    warning = texts(at.warning)
    assert "2 run folder(s)" in warning and "garbage" in warning and "wrong-shape" in warning
    assert "`foreign`" not in warning  # another dataset's run is not broken, just not listed
    at.switch_page("pages/3_errors.py")
    rerun(at)

    # A run tested on another split is refused as a comparison, with the reason, and no delta.
    best = at.session_state[dashboard.RUN_ID]
    at = open_app("pages/2_leaderboard.py", compare_pick="leaky")
    refusal = texts(at.warning)
    assert "cannot be compared" in refusal and "random split" in refusal
    assert all(not m.proto.delta or m.proto.delta.startswith("95 % interval") for m in at.metric)
    assert not any(m.proto.delta.endswith(" pp") for m in at.metric)
    assert not [c for c in chart_specs(at) if c["layout"].get("xaxis", {}).get("ticksuffix")]
    assert best != "leaky"


def test_an_old_run_without_intervals_shows_dashes(trained_home, cityclf_home):
    """metrics.json written before intervals existed: "–" on the Leaderboard and Errors pages."""
    (cityclf_home / "data").symlink_to(trained_home / "data")
    for run in (trained_home / "models").iterdir():
        if run.name.startswith("."):
            continue
        copy = shutil.copytree(run, cityclf_home / "models" / run.name)
        metrics = json.loads((copy / "metrics.json").read_text())
        for key in ("intervals", "bootstrap"):
            metrics.pop(key)
        (copy / "metrics.json").write_text(json.dumps(metrics))
    at = open_app("pages/2_leaderboard.py")
    assert set(at.dataframe[0].value["top1_interval"]) == {"–"}
    at.switch_page("pages/3_errors.py")
    rerun(at)
    assert next(m for m in at.metric if m.label == "top-1").proto.delta == "95 % interval –"
    assert "trained before intervals were recorded" in texts(at.caption)


def test_a_folder_per_city_dataset_without_metadata(tmp_path):
    for i in range(3):
        for city in ("oslo", "rome"):
            write_image(tmp_path / "photos" / city / f"{i}.jpg")
    (tmp_path / "photos" / "rome" / "notes.txt").write_text("not an image")
    at = open_app(dataset_pick="another folder")
    at.text_input(key="dataset_typed").input(str(tmp_path / "photos"))
    rerun(at)
    assert metric(at, "images") == "6" and metric(at, "cities") == "2"
    assert "No run of this dataset yet. Train one with `cityclf train --data" in texts(at.info)
    at.switch_page("pages/1_dataset.py")
    rerun(at)
    assert metric(at, "files skipped") == "1"
    assert "Not recorded in this dataset: hour of capture, month, year" in texts(at.caption)
    assert "records no GPS positions" in texts(at.info)
    assert len(at.image[0].captions) == 6


def test_a_missing_folder_is_a_warning_everywhere():
    at = open_app(dataset_pick="another folder")
    at.text_input(key="dataset_typed").input("/no/such/dataset")
    rerun(at)
    assert "no such folder" in texts(at.warning)
    at.switch_page("pages/1_dataset.py")
    rerun(at)
    assert "no such folder" in texts(at.warning)
