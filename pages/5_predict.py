"""Predict: drop street photos (or pick test images) and see which city the model answers, and why
(LIME, Grad-CAM or occlusion)."""
import time
from pathlib import Path

import numpy as np
import streamlit as st

from cityclf import dashboard, public
from cityclf.dashboard import fmt
from cityclf.datasets import DatasetError
from cityclf.explain import LIME_SETTINGS, SEGMENTATIONS
from cityclf.images import ImageError, load_rgb
from cityclf.inference import prepare_image, run_preprocess

dashboard.require_sidebar(__file__)


def show_answer(probabilities: np.ndarray, classes: list[str], ms: float, key: str,
                guess: bool = False, model_ms: float | None = None) -> None:
    """The top city large, the next four as labelled bars. A `guess` (the photo check doubts the
    photo) is shown small and grey: the model names one of its cities whatever it is shown.

    `key` names this photo's chart: two photos with identical answers (the same file uploaded
    twice) would otherwise make two identical charts, which Streamlit refuses."""
    top = int(np.argmax(probabilities))
    if guess:
        st.markdown(f":gray[Only a guess: **{classes[top]}** "
                    f"({fmt.probability(probabilities[top])}). The model names one of its cities "
                    "whatever the photo shows.]")
        show_time(ms, model_ms)
    else:
        st.metric("Most likely city", classes[top])
        left, right = st.columns(2)
        left.metric("Probability", fmt.probability(probabilities[top]))
        with right:
            show_time(ms, model_ms)
    figure = dashboard.fig_runners_up(probabilities, classes)
    if figure is not None:
        st.plotly_chart(figure, width="stretch", key=f"runners_up_{key}")


def show_time(ms: float, model_ms: float | None) -> None:
    """The run's recorded model time (the Leaderboard's figure), and this photo's own time."""
    if model_ms is not None and not np.isnan(model_ms):  # runs before 2026-11 lack it
        st.metric("Model time", f"{model_ms:.1f} ms/image",
                  help="The run's recorded time per image, in batches of 32, on the path "
                       "predictions use (as on the Leaderboard)")
        st.caption(f"This photo: {ms:.0f} ms, decoding the upload and preprocessing included")
    else:
        st.metric("Time", f"{ms:.0f} ms", help="Preprocessing and one forward pass")


def show_photo(title: str, rgb: np.ndarray, run, predictor, method: str | None,
               settings: dict, key: str, truth: str | None = None) -> None:
    """One photo: the answer, the evidence for it and, for a test image the model gets wrong,
    the evidence for its true city beside it."""
    st.subheader(title)
    start = time.perf_counter()
    image = prepare_image(rgb, run_preprocess(run))
    probabilities = predictor.predict_proba(image[None])[0]
    ms = 1000 * (time.perf_counter() - start)
    top = int(np.argmax(probabilities))
    verdict = dashboard.verdict(run, image)  # None: the run has no photo check
    guess = verdict is not None and verdict["verdict"] != "ok"
    if guess:
        dashboard.show_verdict(verdict)  # plainly, above the answer
    wrong = dashboard.truth_badge(truth, run.classes[top], run.classes)
    panels = [("The model's answer", top)]
    if wrong and method:
        panels.append(("The true city", run.classes.index(truth)))
    photo, *explained, answer = st.columns([1] * (1 + len(panels)) + [1.1], gap="medium")
    photo.image(rgb, width="stretch",
                caption="The photo" + (f" (taken in {truth})" if truth else ""))
    with answer:
        show_answer(probabilities, run.classes, ms, key, guess,
                    model_ms=fmt.to_float(run.metrics.get("ms_per_image")))
        if not guess:
            dashboard.show_verdict(verdict)  # a caption (nothing for runs without a check)
    for column, (heading, label) in zip(explained, panels):
        with column:
            if method:
                dashboard.evidence(run, predictor, image, label, float(probabilities[label]),
                                   heading, method, settings)
            else:
                st.image(image.astype(np.uint8), width="stretch", caption="What the model sees")


st.title("Predict a city")
run = dashboard.chosen_run()
predictor = dashboard.model_or_stop(run)
st.write(f"Model **{run.info['model']}** at {run.info['preprocess']['img_size']} px, trained "
         f"on {len(run.classes)} cities: {', '.join(run.classes)}.")

visitor = public.is_public()  # a public dashboard: LIME's cost fixed, no dataset images

method = dashboard.method_choice(run, "explain_method")
settings = {}
with st.expander("Explanation settings"):
    explain_on = st.toggle("Explain each prediction", value=True, key="lime_on")
    if not visitor:
        samples = st.number_input("LIME samples (forward passes per photo)", 50, 2000,
                                  LIME_SETTINGS["num_samples"], step=50, key="lime_samples",
                                  help="LIME's default is 1000; fewer is faster and less stable.")
        segmentation = st.selectbox(
            "LIME superpixels", list(SEGMENTATIONS), key="lime_segmentation",
            index=list(SEGMENTATIONS).index(LIME_SETTINGS["segmentation"]),
            help="slic: about 12 regular regions, which 300 samples rank stably; quickshift: "
                 "LIME's default, finer, and as stable only with LIME's 1000 samples.")
        if method == "lime":
            settings = {"num_samples": int(samples), "segmentation": segmentation}
method = method if explain_on else None

uploads = st.file_uploader("Drop street photos here", type=["jpg", "jpeg", "png", "webp"],
                           accept_multiple_files=True, key="predict_uploads")
root = st.session_state[dashboard.DATASET_ROOT]
samples_table = None
if not visitor:
    try:
        samples_table = dashboard.split_images(root, run)
    except DatasetError as err:
        st.warning(f"No test images to pick from: {err}")
sample = None
if samples_table is not None and len(samples_table):
    cities = dict(zip(samples_table["path"], samples_table["city"]))
    sample = st.selectbox("…or pick a test image", list(cities), index=None, key="predict_sample",
                          format_func=lambda path: f"{cities[path]} · {Path(path).name}",
                          placeholder="Choose one of the dataset's test images")

if not uploads and not sample:
    st.info("Drop one or more photos above" + ("" if visitor else ", or pick a test image,") +
            " to see which city the model answers and which regions made it say so.")
for upload in uploads or []:
    refusal = dashboard.admit_photo(upload.file_id)  # public mode's rate limits
    if refusal:
        st.warning(f"{upload.name}: {refusal}")
        continue
    try:
        rgb = load_rgb(upload)
    except ImageError as err:
        st.error(public.safe_message(err))
        continue
    show_photo(upload.name, rgb, run, predictor, method, settings, upload.file_id)
if sample:
    try:
        show_photo(Path(sample).name, load_rgb(sample), run, predictor, method, settings,
                   "sample", cities[sample])
    except ImageError as err:
        st.error(str(err))
