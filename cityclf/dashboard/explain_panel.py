"""The interactive parts pages share: thumbnail grids, the method switch, the photo check's verdict,
scores with their intervals, the ✓/✗ of a test image and the explanation panel (why the model gave
a city its probability).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from .. import public
from ..explain import METHODS, explain, explain_cached, methods_for
from ..images import ImageError, load_rgb
from ..inference import prepare_image, run_preprocess
from ..runs import Run, RunError
from . import formatting as fmt
from .loaders import THUMBNAIL_PX, keras_model, predictor, thumbnail, verdict

PER_PAGE = 24


def show_verdict(found: dict | None) -> None:
    """The verdict as one line: a warning when the answer is only a guess, a caption if not."""
    if found is None:
        return
    if found["verdict"] == "ok":
        st.caption(f"Photo check: {found['message']}")
    else:
        st.warning(found["message"])


def image_grid(images: pd.DataFrame, caption, key: str) -> list[dict]:
    """Thumbnails of the rows' `path`s, PER_PAGE at a time, each captioned by `caption(row)`;
    returns the rows of the page shown.

    Only the page shown is captioned and thumbnailed, so a filter matching a million images
    costs no more than one matching twenty. Unreadable files are counted, not shown.
    """
    if images.empty:
        return []
    pages = math.ceil(len(images) / PER_PAGE)
    page = st.pagination(pages, key=key) if pages > 1 else 1
    rows = images.iloc[(page - 1) * PER_PAGE:page * PER_PAGE].to_dict("records")
    shown = [(thumb, caption(row)) for row in rows if (thumb := thumbnail(row["path"])) is not None]
    if shown:
        st.image([thumb for thumb, _ in shown], caption=[text for _, text in shown],
                 width=THUMBNAIL_PX)
    if len(shown) < len(rows):
        st.caption(f"{len(rows) - len(shown)} image file(s) on this page could not be read "
                   "(moved or deleted?).")
    return rows


def recorded_probability(row: dict, city: str) -> float | None:
    """The probability the run's predictions file gives `city` for this image (its top-5 only)."""
    for rank in range(1, 6):
        if row.get(f"top{rank}") == city:
            return row.get(f"prob{rank}")
    return None


def prediction_caption(row: dict, top: int = 3) -> str:
    """Truth, the model's `top` guesses with their probabilities, and the file."""
    guesses = ", ".join(f"{row[f'top{r}']} {fmt.probability(row[f'prob{r}'])}"
                        for r in range(1, top + 1) if isinstance(row.get(f"top{r}"), str))
    return f"true {row['true_city']} · {guesses} · {Path(row['path']).stem}"


def prediction_grid(predictions: pd.DataFrame, key: str) -> list[dict]:
    """Thumbnails of predicted test images, captioned with truth and top-3 guesses; returns the
    rows of the page shown."""
    if predictions.empty:
        st.caption("No image here.")
    return image_grid(predictions, prediction_caption, key=key)


FRAME_PX = 104  # two frames side by side in a sequence's card
MAX_FRAMES = 48  # an MSLS sequence can have hundreds; a card's expander shows this many


def sequence_grid(sequences: pd.DataFrame, frames_of, key: str) -> list[dict]:
    """One card per sequence (`figures.sequence_groups`): its most confident frame, its frame
    count, and an expander with every frame (`frames_of(sequence)`), PER_PAGE sequences at a time.
    Returns every frame of the sequences shown, for an explain picker.

    The cards sit in a wrapping row, so the grid fits the column at any width.
    """
    if sequences.empty:
        return []
    pages = math.ceil(len(sequences) / PER_PAGE)
    page = st.pagination(pages, key=key) if pages > 1 else 1
    shown, rows, unreadable = sequences.iloc[(page - 1) * PER_PAGE:page * PER_PAGE], [], 0
    with st.container(horizontal=True, gap="small"):
        for sequence in shown.to_dict("records"):
            frames = frames_of(sequence["sequence"]).head(MAX_FRAMES).to_dict("records")
            rows += frames
            thumb = thumbnail(sequence["path"])
            if thumb is None:
                unreadable += 1
                continue
            count = sequence["frames"]
            frames_text = f"{count} frames" if count > 1 else "1 frame"
            with st.container(width=THUMBNAIL_PX + 8, gap="small"):
                st.image(thumb, width="stretch",
                         caption=f"{frames_text} · {prediction_caption(sequence)}")
                if count > 1:
                    with st.expander(f"All {count} frames"):
                        thumbs = [(t, f) for f in frames if (t := thumbnail(f["path"])) is not None]
                        st.image([t for t, _ in thumbs], width=FRAME_PX,
                                 caption=[f"{fmt.probability(f['prob1'])} · {Path(f['path']).stem}"
                                          for _, f in thumbs])
                        if count > len(frames):
                            st.caption(f"The first {len(frames)} of its {count} frames.")
    if unreadable:
        st.caption(f"{unreadable} sequence(s) on this page could not be shown: their image files "
                   "could not be read (moved or deleted?).")
    return rows


def interval_metric(column, label: str, value, bounds, percent: bool = True) -> None:
    """A score with its 95 % interval in small grey print under it ("–" for a run trained
    before intervals were recorded), so the number is never read without its uncertainty."""
    column.metric(label, fmt.share(value) if percent else fmt.number(value),
                  delta=f"95 % interval {fmt.interval(bounds, percent)}", delta_color="off",
                  delta_arrow="off")


def truth_badge(truth: str | None, answer: str, classes: list[str]) -> bool:
    """✓ or ✗ for a photo whose city is known; True when the answer is wrong about a city the run
    knows (so the evidence for the true city is worth showing)."""
    if not truth:
        return False
    if truth == answer:
        st.success(f"✓ Right: taken in {truth}.")
        return False
    if truth not in classes:
        st.warning(f"✗ Taken in {truth}, a city this run was not trained on: it could not be "
                   "right.")
        return False
    st.error(f"✗ Wrong: taken in {truth}, but the model answered {answer}.")
    return True


# ------------------------------------------------------------------------------ explanations

EXPLANATION_PX = 320  # explanations are drawn this large, so superpixel outlines stay sharp
EXPLANATION_CAPTIONS = {  # what each method's picture shows, for the city explained
    "lime": "Green: supports {city}; red: speaks against it. Stronger tints count more",
    "gradcam": "Red: the regions whose features raised {city} most (Grad-CAM)",
    "occlusion": "Red: the regions whose hiding lowers {city}'s probability most (occlusion)",
}


@st.cache_data(show_spinner=False, max_entries=64)
def _explained_in_memory(run_id: str, image: np.ndarray, label: int, method: str,
                         settings: dict, _predict_fn, _network):
    return explain(image, _predict_fn, label, method, _network, **settings)


def show_explanation(run: Run, fast_model, image: np.ndarray, label: int, method: str,
                     settings: dict | None = None) -> None:
    """`method`'s picture of why the model gives `label` its probability, computed behind a
    status box (or read from the cache). `fast_model` is the page's ``predictor(run)``.

    The owner's explanations are kept on disk (cityclf.explain's cache); a public dashboard's
    in a bounded memory cache, so visitors' uploads never pile up on the server's disk."""
    network = keras_model(run).model if method == "gradcam" else None  # methods_for(run) only
    with st.status(f"Explaining {run.classes[label]} with {METHODS[method]}…") as status:
        if public.is_public():
            explanation = _explained_in_memory(run.id, image, label, method, settings or {},
                                               fast_model.predict_proba, network)
        else:
            progress = st.progress(0.0).progress if method == "lime" else None  # the longest
            explanation = explain_cached(run.id, image, fast_model.predict_proba, label, method,
                                         network, progress, **(settings or {}))
        if explanation.cached:
            status.update(label="Explanation read from the cache", state="complete")
        else:
            status.update(label=f"Explained in {explanation.seconds:.1f} s", state="complete")
    caption = EXPLANATION_CAPTIONS[method].format(city=run.classes[label])
    if method == "lime":
        caption += f" (LIME's local fit R² {explanation.score:.2f})"
    st.image(explanation.overlay(image, width=EXPLANATION_PX), width="stretch", caption=caption)


def method_choice(run: Run, key: str, label: str = "Explain with", container=st) -> str:
    """A switch between the methods that can explain the run's model (no Grad-CAM for a
    forest); a choice the new run cannot take falls back to LIME."""
    methods = methods_for(run)
    if st.session_state.get(key) not in methods:
        st.session_state[key] = methods[0]
    return container.radio(label, methods, format_func=METHODS.get, horizontal=True, key=key,
                           help="LIME: superpixels switched off at random, and a linear model "
                                "of the answers. Grad-CAM: the network's gradients. Occlusion: "
                                "a grey square slid over the photo.")


def evidence(run: Run, fast_model, image: np.ndarray, label: int, probability: float | None,
             title: str, method: str, settings: dict | None = None) -> None:
    """One panel: a city with the probability printed beside the image it belongs to (the same
    `formatting.probability`), and `method`'s picture of the evidence for it."""
    st.markdown(f"**{title}: {run.classes[label]}** ({fmt.probability(probability)})")
    show_explanation(run, fast_model, image, int(label), method, settings)


def explain_picker(rows: list[dict], run: Run, key: str) -> None:
    """Pick one image of a grid page and see why the model answered as it did: the evidence for
    its answer beside the evidence for the true city (for a right answer: the runner-up).

    The cities and probabilities are the ones the grid shows (the run's predictions file), so
    the caption and the panel print the same number; the pictures explain the model as loaded.
    """
    if not rows:
        return
    by_path = {row["path"]: row for row in rows}
    left, right = st.columns([3, 2])
    path = left.selectbox("Explain one of these images", list(by_path), index=None,
                          key=f"{key}_explain", placeholder="Choose an image shown above",
                          format_func=lambda chosen: prediction_caption(by_path[chosen], top=1))
    method = method_choice(run, f"{key}_method", "with", right)
    if path is None:
        return
    row = by_path[path]
    try:
        fast_model = predictor(run)
        rgb = load_rgb(path)
    except (RunError, ImageError) as err:
        st.warning(str(err))
        return
    image = prepare_image(rgb, run_preprocess(run))
    live = fast_model.predict_proba(image[None])[0]
    show_verdict(verdict(run, image))
    order = [c for c in (row.get("top1"), row.get("top2")) if c in run.classes]
    if not order:  # a predictions file of other cities: fall back to the model as loaded
        order = [run.classes[i] for i in np.argsort(live)[::-1][:2]]
    answer = order[0]
    truth = row["true_city"] if row["true_city"] in run.classes else None
    other = ("The true city", truth) if truth not in (None, answer) else \
        ("Runner-up", order[1] if len(order) > 1 else None)
    panels = [("The model's answer", answer)] + ([other] if other[1] else [])
    columns = st.columns(3)
    columns[0].image(rgb, width="stretch", caption=f"{Path(path).name}, taken in {row['true_city']}")
    for column, (title, city) in zip(columns[1:], panels):
        label = run.classes.index(city)
        recorded = recorded_probability(row, city)
        with column:
            evidence(run, fast_model, image, label,
                     recorded if recorded is not None else float(live[label]), title, method)
