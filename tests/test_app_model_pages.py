"""The Predict and Inside-the-model pages, driven headless through Streamlit's AppTest."""
import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from streamlit.testing.v1 import AppTest

from cityclf import dashboard, inspect_model, ood
from cityclf.dashboard import fmt
from cityclf.datasets import scan
from cityclf.images import load_rgb
from cityclf.inference import predict_files, prepare_image, run_preprocess
from cityclf.runs import Run, list_runs
from cityclf.splits import load_split
from conftest import rerun
from test_ood import gated_home

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PREDICT, INSIDE = "pages/5_predict.py", "pages/4_inside_the_model.py"
TIMEOUT = 120


@pytest.fixture
def runs(use_trained_home):
    return {run.info["model"]: run for run in list_runs()}


def open_page(page: str, run=None) -> AppTest:
    """The app with `run` picked in the sidebar, then on `page`; fails on any exception."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if run is not None:
        at.selectbox(key="run_pick").set_value(run.id).run()
    at.switch_page(page)
    return rerun(at)


def a_test_image(run, which: int = 0) -> str:
    table = load_split(scan(run.info["dataset"]["root"], progress=False))
    return table.loc[table["split"] == "test", "path"].iloc[which]


def a_test_city(run, path: str) -> str:
    table = load_split(scan(run.info["dataset"]["root"], progress=False))
    return table.set_index("path").loc[path, "city"]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def answered_city(at: AppTest) -> str:
    """The city the Predict page answered: its metric, or its greyed guess when the photo check
    doubts the photo (runs trained with a gate)."""
    for metric in at.metric:
        if metric.label == "Most likely city":
            return metric.value
    guess = next(md.value for md in at.markdown if md.value.startswith(":gray[Only a guess: **"))
    return guess.split("**")[1]


def test_predict_a_sample_shows_the_top_city_and_a_cached_explanation(runs):
    run = runs["mobilenet_v2"]
    at = open_page(PREDICT, run)
    assert at.info and not at.metric  # nothing chosen yet
    path = a_test_image(run)
    at.number_input(key="lime_samples").set_value(50)
    at.selectbox(key="predict_sample").set_value(path)
    rerun(at)
    answer = predict_files(run, [path])[0]
    expected = answer["top"][0][0]
    assert answered_city(at) == expected
    truth = a_test_city(run, path)
    badge = at.success[0].value if expected == truth else at.error[0].value
    assert badge.startswith("✓ Right" if expected == truth else "✗ Wrong")
    runners_up = next(chart for chart in charts(at) if chart["layout"]["title"]["text"] ==
                      "Next most likely")["data"][0]
    assert runners_up["y"] == [city for city, _ in answer["top"][1:5]]
    values = runners_up["x"]  # plotly writes numbers as a base64 typed array
    values = np.frombuffer(base64.b64decode(values["bdata"]), values["dtype"]) \
        if isinstance(values, dict) else values
    assert runners_up["text"] == [fmt.probability(p) for p in values]  # each bar labelled
    assert at.status[0].label.startswith("Explained in") and at.status[0].state == "complete"
    assert any(f"supports {expected}" in caption for image in at.image for caption in image.captions)
    rerun(at)
    assert at.status[0].label == "Explanation read from the cache"


def test_a_wrong_test_image_shows_the_evidence_for_its_true_city(runs):
    """✗ against the true city, and LIME's picture for it beside the one for the answer."""
    run = runs["lenet"]  # the tiny demo's LeNet gets many test images wrong
    table = load_split(scan(run.info["dataset"]["root"], progress=False))
    test = table[table["split"] == "test"]
    answers = predict_files(run, test["path"].iloc[:30])
    wrong = next(a for a, city in zip(answers, test["city"]) if a["top"][0][0] != city)
    truth = a_test_city(run, wrong["path"])
    at = open_page(PREDICT, run)
    at.number_input(key="lime_samples").set_value(50)
    at.selectbox(key="predict_sample").set_value(wrong["path"])
    rerun(at)
    answer = wrong["top"][0][0]
    assert at.error[0].value == f"✗ Wrong: taken in {truth}, but the model answered {answer}."
    headings = texts(at.markdown)
    assert f"**The model's answer: {answer}**" in headings
    assert f"**The true city: {truth}** (" in headings
    captions = [caption for image in at.image for caption in image.captions]
    for city in (answer, truth):
        assert any(caption.startswith(f"Green: supports {city};") for caption in captions), city


def test_the_method_switch_explains_with_lime_grad_cam_and_occlusion(runs):
    run = runs["mobilenet_v2"]
    at = open_page(PREDICT, run)
    path = a_test_image(run, 1)  # not the image the test above explains
    at.number_input(key="lime_samples").set_value(100)
    at.selectbox(key="predict_sample").set_value(path)
    city = predict_files(run, [path])[0]["top"][0][0]
    expected = {"lime": f"Green: supports {city}", "gradcam": f"raised {city} most (Grad-CAM)",
                "occlusion": f"lowers {city}'s probability most (occlusion)"}
    for method, caption in expected.items():
        at.radio(key="explain_method").set_value(method)
        rerun(at)
        assert at.status[0].label.startswith("Explained in") and at.status[0].state == "complete"
        captions = [text for image in at.image for text in image.captions]
        assert any(caption in text for text in captions), (method, captions)
    at.radio(key="explain_method").set_value("lime")
    rerun(at)
    assert at.status[0].label == "Explanation read from the cache"


def jpeg_bytes(seed=0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (72, 96, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_uploads_are_predicted_and_broken_ones_refused_in_one_line(runs):
    at = open_page(PREDICT, runs["lenet"])
    at.toggle(key="lime_on").set_value(False)
    at.file_uploader(key="predict_uploads").set_value([
        ("street.jpg", jpeg_bytes(), "image/jpeg"),
        ("notes.jpg", b"this is a text file", "image/jpeg"),
        ("cut.jpg", jpeg_bytes(1)[:600], "image/jpeg"),
    ])
    rerun(at)
    errors = [error.value for error in at.error]
    assert len(errors) == 2
    assert errors[0].startswith("notes.jpg: not a readable image")
    assert errors[1].startswith("cut.jpg:") and "\n" not in errors[1]
    assert answered_city(at) in runs["lenet"].classes  # one photo answered
    assert [h.value for h in at.subheader] == ["street.jpg"]


def test_a_forest_is_not_offered_grad_cam(runs, monkeypatch):
    """Grad-CAM needs gradients: a forest's switch leaves it out, and a session that had picked
    it falls back to LIME instead of failing."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.selectbox(key="run_pick").set_value(runs["random_forest"].id).run()
    at.session_state["explain_method"] = "gradcam"
    at.switch_page(PREDICT)
    rerun(at)
    switch = at.radio(key="explain_method")
    assert "Grad-CAM" not in switch.options and switch.value == "lime"


@pytest.mark.parametrize("page, title", [(PREDICT, "Predict a city"), (INSIDE, "Inside the model")])
def test_a_page_opened_by_its_url_uses_the_sidebar_run(runs, page, title):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(page)
    rerun(at)
    assert at.title[0].value == title
    assert at.session_state["run_id"] in {run.id for run in runs.values()}


@pytest.mark.parametrize("page", [PREDICT, INSIDE])
def test_without_runs_the_pages_say_how_to_train_one(tiny_dataset, cityclf_home, page):
    shutil.copytree(tiny_dataset, cityclf_home / "data" / "demo")
    at = open_page(page)
    assert "No run of this dataset yet" in at.info[0].value


def test_an_unreadable_model_file_is_a_warning(trained_home, cityclf_home):
    (cityclf_home / "data").symlink_to(trained_home / "data")
    source = next(path for path in (trained_home / "models").iterdir() if "lenet" in path.name)
    broken = shutil.copytree(source, cityclf_home / "models" / source.name)
    (broken / "model.keras").write_bytes(b"not a model")
    for page in (PREDICT, INSIDE):
        at = open_page(page)
        assert "model file is corrupt or unreadable" in at.warning[0].value


def test_inside_the_model_shows_input_feature_maps_and_kernels(runs):
    at = open_page(INSIDE, runs["mobilenet_v2"])
    captions = [caption for image in at.image for caption in image.captions]
    assert any(caption.startswith("As the model sees it") for caption in captions)
    notes = texts(at.caption)
    assert "All 32 channels" in notes and "its 32 filters of 3×3 px as RGB tiles" in notes
    kernels = at.image[-1]  # one picture per filter, in a row that wraps to the column
    assert kernels.captions == [f"#{c}" for c in range(32)]

    at.select_slider(key="inspect_layer").set_value("backbone.head.conv")
    rerun(at)
    assert "The 32 most active of 1280 channels for this image" in texts(at.caption)
    ranked = [int(c[1:]) for c in at.image[-1].captions]  # the feature maps, most active first
    assert len(ranked) == 32 and ranked != list(range(32))
    mixing = next(chart for chart in charts(at) if chart["data"][0]["type"] == "heatmap")
    assert mixing["data"][0]["y"] == [f"#{c}" for c in ranked]  # a row per channel shown
    z = mixing["data"][0]["z"]  # plotly writes it as a typed array with its shape
    shape = [int(n) for n in str(z["shape"]).split(",")] if isinstance(z, dict) else \
        [len(z), len(z[0])]
    assert shape == [32, 320]  # a row per channel shown, a column per input channel
    assert "a 1×1 convolution" in texts(at.caption)

    at.select_slider(key="inspect_layer").set_value("backbone.block1.depthwise.conv")
    rerun(at)
    assert "32 of its 96 depthwise 3×3 filters" in texts(at.caption)
    assert at.image[-1].captions == at.image[-2].captions  # the kernels of the maps shown


def test_the_most_active_channels_come_first():
    maps = np.zeros((4, 4, 50), np.float32)
    maps[..., 7], maps[..., 42], maps[:2, :2, 3] = 2.0, 5.0, 10.0
    assert inspect_model.most_active(maps, 3).tolist() == [42, 3, 7]
    tiles = inspect_model.feature_map_tiles(maps, [42, 3], tile=16)
    assert [t.shape for t in tiles] == [(16, 16), (16, 16)] and tiles[1].max() == 255


def test_inside_the_model_of_an_uploaded_photo(runs):
    at = open_page(INSIDE, runs["lenet"])
    at.file_uploader(key="inspect_upload").set_value(("mine.jpg", jpeg_bytes(), "image/jpeg"))
    rerun(at)
    assert at.image[0].captions == ["mine.jpg"]
    at.file_uploader(key="inspect_upload").set_value(("notes.jpg", b"text", "image/jpeg"))
    rerun(at)
    assert at.error[0].value.startswith("notes.jpg: not a readable image") and not at.image


def test_inside_the_forest_there_is_nothing_to_show(runs):
    at = open_page(INSIDE, runs["random_forest"])
    assert "not a neural network" in at.info[0].value
    assert not at.image


# ------------------------------------------------------------------- the photo check (cityclf.ood)

@pytest.fixture(scope="module")
def gated_runs(trained_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("gated_pages")
    return home, gated_home(trained_home, home)


@pytest.fixture
def gated(gated_runs, monkeypatch):
    """A copy of the tiny MobileNetV2 run with a fitted gate, alone in this test's home."""
    home, copies = gated_runs
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return Run(copies["mobilenet_v2"])


def image_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_coffee_cup_is_flagged_and_its_city_shown_only_as_a_guess(gated):
    at = open_page(PREDICT, gated)
    at.toggle(key="lime_on").set_value(False)
    at.file_uploader(key="predict_uploads").set_value(
        [("cup.jpg", image_bytes(skimage.data.coffee()), "image/jpeg")])
    rerun(at)
    assert at.warning[0].value.startswith("Not a street photo: it looks like ")  # 64 px: eggnog
    assert "Most likely city" not in [metric.label for metric in at.metric]
    assert answered_city(at) in gated.classes


def test_a_street_photo_passes_the_photo_check(gated):
    gate, pre = ood.load_gate(gated), run_preprocess(gated)
    path = next(path for path in gated.predictions()["path"] if gate.assess(
        prepare_image(load_rgb(path), pre)[None])[0]["verdict"] == "ok")
    at = open_page(PREDICT, gated)
    at.toggle(key="lime_on").set_value(False)
    at.selectbox(key="predict_sample").set_value(path)
    rerun(at)
    assert not at.warning and at.metric[0].label == "Most likely city"
    assert f"Photo check: {ood.MESSAGES['ok']}" in [caption.value for caption in at.caption]


def test_a_run_without_a_gate_shows_no_verdict(trained_home, cityclf_home):
    (cityclf_home / "data").symlink_to(trained_home / "data")
    source = next(path for path in (trained_home / "models").iterdir() if "lenet" in path.name)
    copy = shutil.copytree(source, cityclf_home / "models" / source.name)
    for name in (ood.GATE_FILE, ood.REFERENCE_FILE):
        (copy / name).unlink(missing_ok=True)  # as a run trained before gates existed
    at = open_page(PREDICT)
    at.toggle(key="lime_on").set_value(False)
    at.file_uploader(key="predict_uploads").set_value(
        [("cup.jpg", image_bytes(skimage.data.coffee()), "image/jpeg")])
    rerun(at)
    assert not at.warning and at.metric[0].label == "Most likely city"
    assert not any("Photo check" in caption.value for caption in at.caption)


def test_the_errors_page_gives_each_explained_image_its_verdict(gated):
    right = dashboard.least_confident_right(gated.predictions()).iloc[0]["path"]
    expected = ood.load_gate(gated).assess(
        prepare_image(load_rgb(right), run_preprocess(gated))[None])[0]
    at = open_page("pages/3_errors.py", gated)
    at.selectbox(key="right_explain").set_value(right)
    rerun(at)
    shown = [caption.value for caption in at.caption] + [warning.value for warning in at.warning]
    assert any(expected["message"] in text for text in shown), shown
