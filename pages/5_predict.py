"""Predict: drop street photos (or pick test images) and see which city the model answers, and why
(LIME, Grad-CAM or occlusion)."""
import time
from pathlib import Path

import numpy as np
import plotly.express as px
import streamlit as st

from cityclf import dashboard
from cityclf.datasets import DatasetError
from cityclf.explain import LIME_SETTINGS, SEGMENTATIONS
from cityclf.images import ImageError, load_rgb
from cityclf.inference import prepare_image, run_preprocess

dashboard.require_sidebar(__file__)


def show_answer(probabilities: np.ndarray, classes: list[str], ms: float, key: str,
                guess: bool = False) -> int:
    """The top city large, the next four as bars; returns the top class index. A `guess` (the
    photo check doubts the photo) is shown small and grey: the model names one of its cities
    whatever it is shown.

    `key` names this photo's chart: two photos with identical answers (the same file uploaded
    twice) would otherwise make two identical charts, which Streamlit refuses."""
    order = np.argsort(probabilities)[::-1]
    top = int(order[0])
    if guess:
        st.markdown(f":gray[Only a guess: **{classes[top]}** ({probabilities[top]:.0%}). The "
                    "model names one of its cities whatever the photo shows.]")
        st.metric("Time", f"{ms:.0f} ms", help="Preprocessing and one forward pass")
    else:
        st.metric("Most likely city", classes[top])
        left, right = st.columns(2)
        left.metric("Probability", f"{probabilities[top]:.0%}")
        right.metric("Time", f"{ms:.0f} ms", help="Preprocessing and one forward pass")
    runners_up = order[1:5]
    if len(runners_up):
        figure = px.bar(x=probabilities[runners_up], y=[classes[i] for i in runners_up],
                        orientation="h", labels={"x": "probability", "y": ""},
                        title="Next most likely", range_x=[0, 1])
        figure.update_layout(height=80 + 40 * len(runners_up), margin=dict(l=0, r=0, t=40, b=0),
                             yaxis=dict(autorange="reversed"), xaxis=dict(tickformat=".0%"))
        st.plotly_chart(figure, width="stretch", key=f"runners_up_{key}")
    return top


def show_photo(title: str, rgb: np.ndarray, run, predictor, method: str | None,
               settings: dict, key: str, truth: str | None = None) -> None:
    st.subheader(title)
    start = time.perf_counter()
    image = prepare_image(rgb, run_preprocess(run))
    probabilities = predictor.predict_proba(image[None])[0]
    ms = 1000 * (time.perf_counter() - start)
    verdict = dashboard.verdict(run, image)  # None: the run has no photo check
    guess = verdict is not None and verdict["verdict"] != "ok"
    if guess:
        dashboard.show_verdict(verdict)  # plainly, above the answer
    photo, explanation, answer = st.columns([1, 1, 1.1], gap="medium")
    photo.image(rgb, width="stretch", caption="The photo" + (f" (taken in {truth})" if truth else ""))
    with answer:
        top = show_answer(probabilities, run.classes, ms, key, guess)
        if not guess:
            dashboard.show_verdict(verdict)  # a caption (nothing for runs without a check)
    with explanation:
        if method:
            dashboard.show_explanation(run, predictor, image, top, method, settings)
        else:
            st.image(image.astype(np.uint8), width="stretch", caption="What the model sees")


st.title("Predict a city")
run = dashboard.chosen_run()
predictor = dashboard.model_or_stop(run)
st.write(f"Model **{run.info['model']}** at {run.info['preprocess']['img_size']} px, trained "
         f"on {len(run.classes)} cities: {', '.join(run.classes)}.")

method = dashboard.method_choice(run, "explain_method")
with st.expander("Explanation settings"):
    explain_on = st.toggle("Explain each prediction", value=True, key="lime_on")
    samples = st.number_input("LIME samples (forward passes per photo)", 50, 2000,
                              LIME_SETTINGS["num_samples"], step=50, key="lime_samples",
                              help="LIME's default is 1000; fewer is faster and less stable.")
    segmentation = st.selectbox("LIME superpixels", list(SEGMENTATIONS), key="lime_segmentation",
                                index=list(SEGMENTATIONS).index(LIME_SETTINGS["segmentation"]),
                                help="slic: about 12 regular regions, which 300 samples rank "
                                     "stably; quickshift: LIME's default, finer, and as stable "
                                     "only with LIME's 1000 samples.")
settings = {"num_samples": int(samples), "segmentation": segmentation} if method == "lime" else {}
method = method if explain_on else None

uploads = st.file_uploader("Drop street photos here", type=["jpg", "jpeg", "png", "webp"],
                           accept_multiple_files=True, key="predict_uploads")
root = st.session_state[dashboard.DATASET_ROOT]
try:
    samples_table = dashboard.split_images(root, run)
except DatasetError as err:
    samples_table = None
    st.warning(f"No test images to pick from: {err}")
sample = None
if samples_table is not None and len(samples_table):
    cities = dict(zip(samples_table["path"], samples_table["city"]))
    sample = st.selectbox("…or pick a test image", list(cities), index=None, key="predict_sample",
                          format_func=lambda path: f"{cities[path]} · {Path(path).name}",
                          placeholder="Choose one of the dataset's test images")

if not uploads and not sample:
    st.info("Drop one or more photos above, or pick a test image, to see which city the model "
            "answers and which regions made it say so.")
for upload in uploads or []:
    try:
        rgb = load_rgb(upload)
    except ImageError as err:
        st.error(str(err))
        continue
    show_photo(upload.name, rgb, run, predictor, method, settings, upload.file_id)
if sample:
    try:
        show_photo(Path(sample).name, load_rgb(sample), run, predictor, method, settings,
                   "sample", cities[sample])
    except ImageError as err:
        st.error(str(err))
