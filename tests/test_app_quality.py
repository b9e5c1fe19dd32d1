"""The Dataset page's slow views (scene tags, data quality, embedding map), driven with AppTest.

Before anything is computed the page offers buttons and CLI hints; once the tags and the quality
report exist it shows them. The filled-in page runs on its own copy of the tiny demo, so the
shared trained home stays untagged for the other tests (tests/test_app.py expects no tags).
"""
import json
import shutil
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from cityclf import config, eda
from cityclf.datasets import scan
from conftest import rerun

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "pages/1_dataset.py"


def open_dataset_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.switch_page(PAGE)
    return rerun(at)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert len(matches) == 1, [b.label for b in at.button]
    return matches[0]


def test_without_tags_or_report_the_page_offers_buttons(use_trained_home):
    dataset = scan(config.demo_dir(), progress=False)
    assert not (dataset.cache / "quality.parquet").exists()
    at = open_dataset_page()
    labels = [b.label for b in at.button]
    assert {"Tag scenes", "Check data quality", "Draw the embedding map"} <= set(labels)
    info = texts(at.info)
    assert f"`cityclf data scenes {dataset.root}`" in info
    assert f"`cityclf data quality {dataset.root}`" in info
    assert "Estimated scene types" not in texts(at.caption)
    assert at.selectbox(key="eda_scene").proto.disabled  # no scenes to filter by
    assert not any("outlier" in df.value.columns for df in at.dataframe)


def test_tags_report_and_map_fill_the_page(tiny_dataset, cityclf_home):
    shutil.copytree(tiny_dataset, cityclf_home / "data" / "demo")
    dataset = scan(config.demo_dir(), progress=False)
    at = open_dataset_page()

    # The button tags the scenes and the page shows them, labelled as estimates.
    button(at, "Tag scenes").click()
    rerun(at)
    assert not [b for b in at.button if b.label == "Tag scenes"]
    assert "Estimated scene types" in texts(at.caption)
    tags = pd.read_parquet(dataset.cache / "scenes.parquet")
    scene = tags["scene"].value_counts().index[0]
    at.selectbox(key="eda_scene").set_value(scene)
    rerun(at)
    assert f"{(tags['scene'] == scene).sum()} images match." in texts(at.caption)
    assert all(f" · {scene}" in c for c in at.image[0].captions)

    # The quality report, computed outside the page, appears on the next run.
    from cityclf.quality import quality_report
    report = quality_report(dataset, progress=False)
    rerun(at)
    assert not [b for b in at.button if b.label == "Check data quality"]
    counts = next(df.value for df in at.dataframe if "outlier" in df.value.columns)
    assert counts["images"].sum() == (tags["scene"] == scene).sum()  # it follows the filters
    at.selectbox(key="eda_scene").set_value("any")
    rerun(at)
    counts = next(df.value for df in at.dataframe if "outlier" in df.value.columns)
    assert counts["images"].to_dict() == dataset.summary()["images"].to_dict()
    assert counts["outlier"].sum() == report["outlier"].sum() > 0
    assert "reconstructed worst, each original beside its reconstruction" in texts(at.caption)
    pairs = next(im for im in at.image if "reconstruction" in im.captions)
    assert len(pairs.captions) == 16  # 8 worst images, each with its reconstruction
    worst = report.nlargest(1, "reconstruction_error")["path"].iloc[0]
    assert pairs.captions[0].startswith(Path(worst).stem)
    assert any("pairs" in df.value.columns for df in at.dataframe)  # near-duplicates per split

    # The embedding map, behind its button, plots every image once.
    button(at, "Draw the embedding map").click()
    rerun(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    maps = [c for c in charts if c["layout"].get("dragmode") == "lasso"]
    assert len(maps) == 1
    plotted = [point[0] for trace in maps[0]["data"] for point in trace["customdata"]]
    assert sorted(plotted) == sorted(dataset.manifest["path"])  # each image once, path first
    assert {trace["name"] for trace in maps[0]["data"]} == set(dataset.cities)


def test_rule_flags_and_leaks_are_explained():
    manifest = pd.DataFrame({"path": ["a", "b", "c"], "city": ["x", "x", "y"],
                             "key": ["ka", "kb", "kc"]})
    report = pd.DataFrame({"path": ["a", "b", "c"], "brightness": [3.0, 90, 80],
                           "too_dark": [True, False, False], "outlier": [False, False, True],
                           "reconstruction_error": [0.01, 0.02, 0.3], "duplicates": [0, 2, 0],
                           "leaks": [0, 1, 0]})
    counts = eda.flag_counts(report, manifest)
    assert counts.loc["x"].to_dict() == {"images": 2, "too_dark": 1, "outlier": 0,
                                         "duplicates": 1, "leaks": 1}
    dark = eda.flagged_images(report, manifest, "too_dark", lambda row: ["brightness 3 < 15"])
    assert dark["path"].tolist() == ["a"]
    assert eda.quality_caption(dark.iloc[0].to_dict()) == "x · ka · brightness 3 < 15"
    assert eda.top_outliers(report, 2)["path"].tolist() == ["c", "b"]

    pairs = pd.DataFrame({"path_a": ["a", "b", "a"], "path_b": ["b", "c", "c"],
                          "distance": [0, 5, 2], "split_a": ["train", "train", "test"],
                          "split_b": ["train", "test", "test"],
                          "same_sequence": [True, False, False]})
    assert eda.example_pairs(pairs, 2)["path_b"].tolist() == ["c", "c"]  # the leak first
    assert eda.pair_caption(eda.example_pairs(pairs, 1).iloc[0].to_dict()).startswith(
        "train ↔ test · leak: two sequences")

    event = {"selection": {"points": [{"customdata": ["a", "x"]}, {"customdata": ["a"]},
                                      {"customdata": ["c", "y"]}, {"x": 1}]}}
    assert eda.selected_paths(event) == ["a", "c"]
    assert eda.selected_paths(None) == []


def test_a_failing_button_job_is_reported_and_the_page_stays(tiny_dataset, cityclf_home,
                                                              monkeypatch):
    import cityclf.scenes

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(cityclf.scenes, "tag_scenes", broken)
    shutil.copytree(tiny_dataset, cityclf_home / "data" / "demo")
    dataset = scan(config.demo_dir(), progress=False)
    at = open_dataset_page()
    button(at, "Tag scenes").click()
    rerun(at)
    assert at.status[0].label == "Tagging failed" and at.status[0].state == "error"
    assert (f"The scenes could not be tagged (OSError: disk full). Try "
            f"`cityclf data scenes {dataset.root}`.") in texts(at.warning)
    assert "Check data quality" in [b.label for b in at.button]  # the rest of the page is drawn


def test_the_demo_also_tags_scenes_and_checks_quality(tiny_dataset, cityclf_home, monkeypatch):
    """`cityclf demo` makes the tags and the report too, so a fresh `make app` shows them; one
    that fails is reported and the demo carries on (the page still offers its button)."""
    from cityclf import demo
    shutil.copytree(tiny_dataset, cityclf_home / "data" / "demo")
    made, steps = [], []
    monkeypatch.setattr(demo, "tag_scenes", lambda dataset, progress: made.append(dataset.root))

    def broken(dataset, progress):
        raise OSError("disk full")
    monkeypatch.setattr(demo, "quality_report", broken)
    assert demo.build_demo(lambda message, fraction: steps.append(message), progress=False,
                           runs=[]) == []
    assert made == [config.demo_dir()]
    assert "tagging scenes" in steps
    assert any(step.startswith("checking data quality failed (OSError: disk full)")
               for step in steps)
    assert steps[-1] == "demo ready"
