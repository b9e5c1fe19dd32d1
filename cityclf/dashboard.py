"""What the dashboard pages share: the sidebar's choices, cached loaders, and the run figures.

Pages hold layout only; everything they show is computed here or in `cityclf.eda` from the files
cityclf writes. Loaders are cached under keys that change with the files (folder mtimes), so a new
scan or a new run shows up on the next rerun without restarting the app. A missing dataset, a
dataset without runs or an unreadable run stops a page with a message that says how to fix it,
never with a traceback.
"""
from __future__ import annotations

import math
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from . import config
from .datasets import Dataset, DatasetError, dataset_id, known_datasets, scan
from .eda import tidy
from .explain import METHODS, explain_cached, methods_for
from .images import ImageError, load_rgb
from .inference import best_predictor, load_predictor, prepare_image, run_preprocess
from .runs import Run, RunError, find_runs, get_run, leaderboard
from .splits import load_split

# Session-state keys the sidebar sets and every page reads.
DATASET_ROOT, RUN_ID, COMPARE_RUN_ID = "dataset_root", "run_id", "compare_run_id"
RETURN_TO = "return_to_page"  # a page opened before the sidebar ran, to reopen after it
THUMBNAIL_PX = 224
PER_PAGE = 24


def require_sidebar(page_file: str) -> None:
    """Send a page that runs without the entry point through it first, then back here.

    Because the pages live in `pages/`, Streamlit runs a page opened by its URL on its own (no
    sidebar, no session keys) until the entry point has called st.navigation once since the
    server started. Every page calls this first.
    """
    if DATASET_ROOT not in st.session_state:
        st.session_state[RETURN_TO] = page_file
        st.switch_page("streamlit_app.py")


# ---------------------------------------------------------------------------------- datasets

def dataset_choices() -> dict[str, str]:
    """Root -> label of every dataset the sidebar offers: the demo first, then scanned ones."""
    demo = str(config.demo_dir())
    choices = {demo: "demo (synthetic streets)"}
    for info in known_datasets():
        if info["root"] != demo:
            root = info["root"]
            choices[root] = f"{Path(root).name} ({info['layout']}) · {root}"
    return choices


def folder_stamp(root: str | Path, depth: int = 4) -> int:
    """The newest mtime of the folders down to `depth` below `root` (0 when it is missing).

    Adding, removing or renaming an image changes its folder's mtime, so this is a cheap cache
    key for a scan: folders at `depth` are looked at, not listed (MSLS keeps its images there).
    """
    newest, level = 0, [str(root)]
    for current in range(depth + 1):
        below = []
        for folder in level:
            try:
                newest = max(newest, os.stat(folder).st_mtime_ns)
                if current < depth:
                    with os.scandir(folder) as entries:
                        below += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        level = below
    return newest


# A resource, not data: a manifest can have millions of rows, and cache_data would copy it on
# every rerun. Pages only read it.
@st.cache_resource(show_spinner="Reading the dataset…", max_entries=4)
def _scanned(root: str, stamp: int) -> Dataset:
    try:
        return scan(root, progress=False)
    except DatasetError:
        raise
    except (ValueError, OSError) as err:  # unreadable metadata (a CSV), permissions, ...
        raise DatasetError(f"{root}: cannot be read ({err.__class__.__name__}: {err})") from None


def load_dataset(root: str | Path) -> Dataset:
    """The scanned dataset at `root`, re-scanned only when its folders change.

    Raises DatasetError, with a one-line reason, for any dataset that cannot be read.
    """
    return _scanned(str(Path(root).expanduser()), folder_stamp(Path(root).expanduser()))


def chosen_dataset() -> Dataset:
    """The sidebar's dataset, or stop the page with what to do when it cannot be read."""
    root = st.session_state.get(DATASET_ROOT) or str(config.demo_dir())
    try:
        return load_dataset(root)
    except DatasetError as err:
        if Path(root) == config.demo_dir() and not Path(root).exists():
            st.info("There is no demo dataset yet. Build it on the Home page, or run "
                    "`cityclf demo`.")
        else:
            st.warning(f"{err}. Pick another dataset in the sidebar, or check the folder with "
                       f"`cityclf data scan {root}`.")
        st.stop()


# -------------------------------------------------------------------------------------- runs

def _runs_stamp(models: Path) -> tuple:
    """Run folders and their mtimes: a run published, deleted or rewritten changes it."""
    if not models.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in models.iterdir() if p.is_dir()))


@st.cache_data(show_spinner=False)
def _all_runs(models: str, stamp: tuple) -> tuple[pd.DataFrame, dict[str, str]]:
    """The leaderboard of every readable run (with its dataset id), and why others are not."""
    found, problems = find_runs()
    rows = [leaderboard([run]).assign(dataset_id=run.info["dataset"]["id"]) for run in found]
    table = pd.concat(rows, ignore_index=True) if rows else leaderboard([]).assign(dataset_id=None)
    return table, problems


def runs_table(root: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The leaderboard of the dataset at `root`, best first, and every unreadable run."""
    models = config.models_dir()
    table, problems = _all_runs(str(models), _runs_stamp(models))
    mine = table[table["dataset_id"] == dataset_id(root)]
    # Runs on a random split come last: neighbouring frames in train and test flatter them.
    mine = mine.assign(leaks=mine["split"] == "random").sort_values(
        ["leaks", "top1"], ascending=[True, False], na_position="last")
    return mine.drop(columns="leaks").reset_index(drop=True), problems


def run_labels(table: pd.DataFrame) -> dict[str, str]:
    """Run id -> its name, with the end of the id added where two runs share a name."""
    repeated = table["name"].duplicated(keep=False)
    return {run_id: f"{name} ({run_id[-6:]})" if twin else name
            for run_id, name, twin in zip(table["run_id"], table["name"], repeated)}


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _predictor(run_path: str, fast: bool):
    run = get_run(run_path)
    predictor = best_predictor(run) if fast else load_predictor(run)
    # TensorFlow builds its graphs on the first call; that one-off second should not count as
    # the time a prediction takes.
    blank = prepare_image(np.zeros((48, 64, 3), np.uint8), run_preprocess(run))
    predictor.predict_proba(blank[None])
    return predictor


def predictor(run: Run):
    """What predictions use (the fast path when the run has one), loaded once and warmed up."""
    return _predictor(str(run.path), True)


def keras_model(run: Run):
    """The run's own Keras (or forest) model, for looking inside it."""
    return _predictor(str(run.path), False)


def model_or_stop(run: Run, fast: bool = True):
    """The run's model for a page (fast path or Keras), or a warning and the end of the page."""
    try:
        return predictor(run) if fast else keras_model(run)
    except RunError as err:
        st.warning(f"{err}. Pick another run in the sidebar.")
        st.stop()


@st.cache_resource(show_spinner="Loading the photo check…", max_entries=4)
def _gate(run_path: str, stamp: int):
    from .ood import load_gate
    return load_gate(run_path)


def gate(run: Run):
    """The run's out-of-distribution gate (cityclf.ood), loaded once per gate file; None for
    runs without one (trained before gates existed), which then show no verdict."""
    from .ood import GATE_FILE
    return _gate(str(run.path), _mtime(run.path / GATE_FILE))


def verdict(run: Run, image: np.ndarray) -> dict | None:
    """The gate's verdict on one image already through the run's preprocessing, or None."""
    found = gate(run)
    if found is None:
        return None
    try:
        return found.assess(image[None])[0]
    except Exception:  # noqa: BLE001 - a verdict is extra: never let it break a page
        return None


def show_verdict(found: dict | None) -> None:
    """The verdict as one line: a warning when the answer is only a guess, a caption if not."""
    if found is None:
        return
    if found["verdict"] == "ok":
        st.caption(f"Photo check: {found['message']}")
    else:
        st.warning(found["message"])


@st.cache_data(show_spinner="Reading the split…", max_entries=4)
def _split_images(root: str, method: str, split: str, stamp: int) -> pd.DataFrame:
    table = load_split(load_dataset(root), method)
    return table.loc[table["split"] == split, ["path", "city"]].reset_index(drop=True)


def split_images(root: str, run: Run, split: str = "test") -> pd.DataFrame:
    """Path and city of the images in one split of the run's own split method."""
    method = run.info.get("split", {}).get("method", "sequence")
    return _split_images(str(root), method, split, folder_stamp(root))


def no_runs_message(root: str) -> str:
    """What to say, and which command to run, when a dataset has no run yet."""
    if Path(root) == config.demo_dir():
        return ("No run of this dataset yet. `cityclf demo` trains the demo's runs (and draws "
                "its images first if they are missing).")
    return ("No run of this dataset yet. Train one with "
            f"`cityclf train --data {root} --model mobilenet_v2 --img-size 224`.")


def chosen_run(key: str = RUN_ID) -> Run:
    """The sidebar's run (or compare run), or stop the page saying how to get one."""
    run_id = st.session_state.get(key)
    root = st.session_state.get(DATASET_ROOT) or str(config.demo_dir())
    if not run_id:
        st.info(no_runs_message(root))
        st.stop()
    try:
        return get_run(run_id)
    except RunError as err:
        st.warning(f"{err}. Pick another run in the sidebar.")
        st.stop()


@st.cache_data(show_spinner="Reading predictions…", max_entries=16)
def _predictions(path: str, stamp: int) -> pd.DataFrame:
    return Run(Path(path)).predictions()


def predictions(run: Run) -> pd.DataFrame:
    """The run's per-image test predictions (cached until the file changes)."""
    file = run.path / "predictions.parquet"
    return _predictions(str(run.path), file.stat().st_mtime_ns if file.exists() else 0)


# ------------------------------------------------------------------------------------ images

@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, stamp: int) -> bytes | None:
    try:
        image = Image.fromarray(load_rgb(path))
    except ImageError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def thumbnail(path: str) -> bytes | None:
    """A small JPEG of the image (None when it cannot be read), so pages never send full photos."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _thumbnail(path, stamp)


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


def prediction_caption(row: dict, top: int = 3) -> str:
    """Truth, the model's `top` guesses with their probabilities, and the file."""
    guesses = ", ".join(f"{row[f'top{r}']} {row[f'prob{r}']:.0%}" for r in range(1, top + 1)
                        if isinstance(row[f"top{r}"], str))
    return f"true {row['true_city']} · {guesses} · {Path(row['path']).stem}"


def prediction_grid(predictions: pd.DataFrame, key: str) -> list[dict]:
    """Thumbnails of predicted test images, captioned with truth and top-3 guesses; returns the
    rows of the page shown."""
    if predictions.empty:
        st.caption("No image here.")
    return image_grid(predictions, prediction_caption, key=key)


# ------------------------------------------------------------------------------ explanations

EXPLANATION_PX = 320  # explanations are drawn this large, so superpixel outlines stay sharp
EXPLANATION_CAPTIONS = {  # what each method's picture shows, for the city explained
    "lime": "Green: supports {city}; red: speaks against it. Stronger tints count more",
    "gradcam": "Red: the regions whose features raised {city} most (Grad-CAM)",
    "occlusion": "Red: the regions whose hiding lowers {city}'s probability most (occlusion)",
}


def show_explanation(run: Run, fast_model, image: np.ndarray, label: int, method: str,
                     settings: dict | None = None) -> None:
    """`method`'s picture of why the model gives `label` its probability, computed behind a
    status box (or read from the cache). `fast_model` is the page's ``predictor(run)``."""
    network = keras_model(run).model if method == "gradcam" else None  # methods_for(run) only
    with st.status(f"Explaining {run.classes[label]} with {METHODS[method]}…") as status:
        progress = st.progress(0.0).progress if method == "lime" else None  # LIME takes longest
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


def explain_picker(rows: list[dict], run: Run, key: str) -> None:
    """Pick one image of a grid page and see why the model answered as it did: the evidence for
    its answer beside the evidence for the true city (for a right answer: the runner-up)."""
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
    probabilities = fast_model.predict_proba(image[None])[0]
    show_verdict(verdict(run, image))
    answer, second = np.argsort(probabilities)[::-1][:2]
    truth = run.classes.index(row["true_city"]) if row["true_city"] in run.classes else None
    panels = [("The model's answer", answer),
              ("The true city", truth) if truth not in (None, answer) else ("Runner-up", second)]
    columns = st.columns(3)
    columns[0].image(rgb, width="stretch", caption=f"{Path(path).name}, taken in {row['true_city']}")
    for column, (title, label) in zip(columns[1:], panels):
        with column:
            st.markdown(f"**{title}: {run.classes[label]}** ({probabilities[label]:.0%})")
            show_explanation(run, fast_model, image, int(label), method)


# ------------------------------------------------------------------------------- leaderboard

def fig_speed_accuracy(table: pd.DataFrame) -> go.Figure:
    """Top-1 against inference time: the trade-off a deployment has to choose on."""
    fig = px.scatter(table, x="ms_per_image", y="top1", color="model", symbol="split",
                     hover_name="name", hover_data={"img_size": True, "params": True}, log_x=True,
                     labels={"ms_per_image": "ms per image (log scale)", "top1": "top-1 accuracy"})
    fig.update_traces(marker={"size": 12})
    fig.update_yaxes(tickformat=".0%")
    return tidy(fig, 380)


def history_long(runs: dict[str, Run]) -> pd.DataFrame:
    """Training curves of runs (by label) in long form: run, epoch, metric, split, value.

    Epochs count on across stages (head, then fine-tuning), so a two-stage run is one curve.
    """
    parts = []
    for label, run in runs.items():
        log = run.history()
        if log.empty:
            continue
        log = log.assign(run=label, epoch=np.arange(1, len(log) + 1))
        for metric in ("accuracy", "loss"):
            for split, column in (("train", metric), ("val", f"val_{metric}")):
                if column in log:
                    parts.append(log[["run", "epoch", "stage"]].assign(
                        metric=metric, split=split, value=log[column]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def fig_history(long: pd.DataFrame) -> go.Figure:
    fig = px.line(long, x="epoch", y="value", color="run", line_dash="split", facet_col="metric",
                  markers=True, hover_data=["stage"])
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return tidy(fig, 380)


def studies(runs: list[Run]) -> dict[str, list[Run]]:
    """Tuning studies with at least two runs, by study id."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        if run.info.get("study"):
            grouped.setdefault(run.info["study"], []).append(run)
    return {study: members for study, members in grouped.items() if len(members) >= 2}


def study_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run of a study: the tuned settings and the best validation accuracy."""
    return pd.DataFrame([{
        "run": run.info.get("name") or run.id, "lr": run.info["config"]["lr"],
        "batch_size": run.info["config"]["batch_size"],
        "optimizer": run.info["config"]["optimizer"],
        "img_size": run.info["preprocess"]["img_size"],
        "val_accuracy": run.info.get("val_accuracy"),
    } for run in runs])


def fig_parcoords(table: pd.DataFrame) -> go.Figure:
    """Each run a line through the settings its study varied to its best validation accuracy."""
    optimizers = sorted(table["optimizer"].unique())
    log_lr = np.log10(table["lr"].astype(float))
    dimensions = {
        "lr": {"label": "learning rate", "values": log_lr, "tickvals": sorted(set(log_lr)),
               "ticktext": [f"{10 ** v:.0e}" for v in sorted(set(log_lr))]},
        "batch_size": {"label": "batch size", "values": table["batch_size"]},
        "optimizer": {"label": "optimizer", "values": table["optimizer"].map(optimizers.index),
                      "tickvals": list(range(len(optimizers))), "ticktext": optimizers},
        "img_size": {"label": "input px", "values": table["img_size"]},
    }
    varied = [axis for name, axis in dimensions.items() if table[name].nunique() > 1]
    accuracy = table["val_accuracy"].fillna(0)
    fig = go.Figure(go.Parcoords(
        line={"color": accuracy, "colorscale": "Viridis", "cmin": 0, "cmax": 1},
        dimensions=[*varied, {"label": "best val accuracy", "values": accuracy, "range": [0, 1]}]))
    fig.update_layout(height=380, margin={"l": 70, "r": 70, "t": 60, "b": 20})
    return fig


def f1_comparison(a: Run, b: Run) -> pd.DataFrame:
    """Per-city F1 of two runs and a minus b; a city only one run knows has no difference."""
    f1 = {name: {city: scores["f1"] for city, scores in (run.metrics.get("per_city") or {}).items()}
          for name, run in (("a", a), ("b", b))}
    table = pd.DataFrame(f1).rename_axis("city").reset_index()
    return table.assign(difference=table["a"] - table["b"]).sort_values("difference")


def fig_f1_difference(table: pd.DataFrame, name_a: str, name_b: str) -> go.Figure:
    colours = np.where(table["difference"] >= 0, "#2a9d8f", "#e76f51")
    fig = go.Figure(go.Bar(x=table["city"], y=table["difference"], marker_color=colours,
                           customdata=table[["a", "b"]],
                           hovertemplate="%{x}: F1 %{customdata[0]:.2f} vs %{customdata[1]:.2f}"
                                         "<extra></extra>"))
    fig.update_layout(yaxis_title=f"F1 of {name_a} − F1 of {name_b}")
    return tidy(fig, 340)


# ---------------------------------------------------------------------------- errors page

def confusion_table(metrics: dict, normalised: bool = False,
                    hide_diagonal: bool = False) -> pd.DataFrame:
    """The confusion matrix (rows: true city, columns: predicted): counts, or shares of each row.

    Hiding the diagonal (as NaN) lets the colour scale show the errors instead of the hits.
    """
    labels = metrics["confusion_matrix"]["labels"]
    table = pd.DataFrame(metrics["confusion_matrix"]["matrix"], index=labels, columns=labels,
                         dtype=float).rename_axis(index="true", columns="predicted")
    if normalised:
        table = table.div(table.sum(axis=1).replace(0, np.nan), axis=0)
    if hide_diagonal:
        table = table.mask(np.eye(len(labels), dtype=bool))
    return table


def fig_confusion(table: pd.DataFrame, normalised: bool,
                  chosen: tuple[str, str]) -> go.Figure:
    """The matrix as a heatmap; the cell `chosen` (true, predicted) is outlined.

    st.plotly_chart reports no selection for heatmap cells, so an invisible square marker sits
    on every cell and catches the click instead.
    """
    labels = list(table.index)
    values = table.to_numpy()
    text = [["" if np.isnan(v) else (f"{v:.0%}" if normalised else f"{v:.0f}") for v in row]
            for row in values]
    cell_px = 46  # rows are this tall; the click markers fill most of a cell
    fig = go.Figure(go.Heatmap(z=values, x=labels, y=labels, text=text, texttemplate="%{text}",
                               colorscale="Blues", hoverinfo="skip",
                               colorbar={"title": "share" if normalised else "images",
                                         "tickformat": ".0%" if normalised else None}))
    true, predicted = np.meshgrid(labels, labels, indexing="ij")
    fig.add_trace(go.Scatter(
        x=predicted.ravel(), y=true.ravel(), mode="markers", showlegend=False,
        marker={"symbol": "square", "size": cell_px - 6, "color": "rgba(0,0,0,0)"},
        customdata=np.array(text).ravel(),
        hovertemplate="true %{y}, predicted %{x}: %{customdata}<br>click to see the images"
                      "<extra></extra>"))
    if set(chosen) <= set(labels):
        t, p = labels.index(chosen[0]), labels.index(chosen[1])
        fig.add_shape(type="rect", x0=p - 0.5, x1=p + 0.5, y0=t - 0.5, y1=t + 0.5,
                      line={"color": "#e76f51", "width": 3})
    fig.update_xaxes(title="predicted city", side="top", tickangle=-30, type="category")
    fig.update_yaxes(title="true city", autorange="reversed", type="category")
    fig.update_layout(height=140 + cell_px * len(labels), clickmode="event+select",
                      dragmode=False, margin={"l": 10, "r": 10, "t": 90, "b": 10})
    return fig


def clicked_cell(selection: dict) -> tuple[str, str] | None:
    """(true, predicted) of the cell a click on `fig_confusion` selected, if any."""
    points = (selection or {}).get("selection", {}).get("points", [])
    return (points[0]["y"], points[0]["x"]) if points else None


def cell_predictions(predictions: pd.DataFrame, true: str, predicted: str) -> pd.DataFrame:
    """The test images of one confusion cell, most confident first."""
    cell = predictions[(predictions["true_city"] == true) & (predictions["top1"] == predicted)]
    return cell.sort_values("prob1", ascending=False)


def per_city_table(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame(metrics["per_city"]).T.rename_axis("city").reset_index()


def fig_per_city(table: pd.DataFrame) -> go.Figure:
    long = table.melt(id_vars="city", value_vars=["precision", "recall", "f1"], var_name="score")
    fig = px.bar(long, x="city", y="value", color="score", barmode="group",
                 hover_data={"value": ":.2f"})
    fig.update_yaxes(range=[0, 1], title=None)
    return tidy(fig, 340)


GROUP_NAMES = {"scene": "scene type", "night": "night", "control_panel": "control panel",
               "view_direction": "view direction"}
GROUP_VALUES = {"night": {"True": "night", "False": "day"},
                "control_panel": {"True": "dashboard in view", "False": "no dashboard"}}


def group_accuracy(metrics: dict, column: str) -> pd.DataFrame:
    """Top-1 per value of a condition (night, scene, ...); empty when it was not recorded."""
    groups = (metrics.get("by_group") or {}).get(column) or {}
    names = GROUP_VALUES.get(column, {})
    return pd.DataFrame([{"value": names.get(value, value), "top1": scores["top1"],
                          "n": scores["n"]} for value, scores in groups.items()],
                        columns=["value", "top1", "n"])


def fig_group_accuracy(table: pd.DataFrame, title: str) -> go.Figure:
    fig = px.bar(table, x="value", y="top1", text="n", title=title,
                 labels={"value": "", "top1": "top-1 accuracy"})
    fig.update_traces(texttemplate="n=%{text}", textposition="outside", cliponaxis=False)
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return tidy(fig, 300)


def fig_reliability(metrics: dict) -> go.Figure:
    """Accuracy against confidence per bin: bars under the diagonal mean overconfidence."""
    bins = pd.DataFrame(metrics["reliability"]).dropna(subset=["accuracy"])
    fig = go.Figure([
        go.Bar(x=(bins["lo"] + bins["hi"]) / 2, y=bins["accuracy"], width=bins["hi"] - bins["lo"],
               name="accuracy", customdata=bins[["n", "confidence"]],
               hovertemplate="confidence %{customdata[1]:.2f}: accuracy %{y:.2f} "
                             "(%{customdata[0]} images)<extra></extra>"),
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                   line={"dash": "dash", "color": "grey"}),
    ])
    fig.update_xaxes(range=[0, 1], title="confidence (top-1 probability)")
    fig.update_yaxes(range=[0, 1], title="accuracy")
    return tidy(fig, 360)


def confident_wrong(predictions: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The mistakes the model was surest of: where it learnt a misleading cue."""
    return predictions[~predictions["correct"]].nlargest(n, "prob1")


def least_confident_right(predictions: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """Right answers the model barely chose: the images near its decision boundary."""
    return predictions[predictions["correct"]].nsmallest(n, "prob1")



# ============================================================================================
# Dataset page: scene tags, data quality and the embedding map (added for pages/1_dataset.py).
# Every loader is keyed by the mtime of the file it reads, so a new tagging or report shows up
# on the next rerun. Heavy modules (Keras) are imported only when these run.
# ============================================================================================

def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def scenes_file(dataset: Dataset) -> Path:
    from .scenes import cache_path
    return cache_path(dataset)


def quality_file(dataset: Dataset) -> Path:
    from .quality import REPORT_FILE
    return dataset.cache / REPORT_FILE


@st.cache_resource(show_spinner=False, max_entries=4)
def _with_scenes(root: str, stamp: int, tags_stamp: int) -> pd.DataFrame:
    from .scenes import attach_scenes
    dataset = load_dataset(root)
    return attach_scenes(dataset.manifest, dataset)


def manifest_with_scenes(dataset: Dataset) -> pd.DataFrame:
    """The manifest plus scene tags (when the dataset has been tagged); pages only read it."""
    return _with_scenes(str(dataset.root), folder_stamp(dataset.root),
                        _mtime(scenes_file(dataset)))


@st.cache_data(show_spinner="Reading the quality report…", max_entries=4)
def _quality(file: str, stamp: int) -> pd.DataFrame:
    return pd.read_parquet(file)


def read_quality(dataset: Dataset) -> pd.DataFrame | None:
    """The saved quality report, or None when it has not been computed (never computes it)."""
    file = quality_file(dataset)
    return _quality(str(file), _mtime(file)) if file.is_file() else None


@st.cache_data(show_spinner="Comparing image hashes…", max_entries=4)
def _pairs(root: str, report_stamp: int) -> pd.DataFrame:
    from .quality import near_duplicates
    return near_duplicates(load_dataset(root))


def duplicate_pairs(dataset: Dataset) -> pd.DataFrame:
    """Near-duplicate pairs of the dataset, recomputed when the quality report changes."""
    return _pairs(str(dataset.root), _mtime(quality_file(dataset)))


@st.cache_data(show_spinner="Reconstructing…", max_entries=8)
def _reconstructions(root: str, model_stamp: int, paths: tuple[str, ...]):
    from .quality import reconstructions
    return reconstructions(load_dataset(root), list(paths))


def outlier_reconstructions(dataset: Dataset, paths) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(originals, reconstructions, paths) by the autoencoder the quality report trained."""
    from .quality import AUTOENCODER_FILE
    return _reconstructions(str(dataset.root), _mtime(dataset.cache / AUTOENCODER_FILE),
                            tuple(str(p) for p in paths))


@st.cache_data(show_spinner=False, max_entries=8)
def _embedding_map(root: str, stamp: int, tags_stamp: int, method: str,
                   sample: int) -> pd.DataFrame:
    from .projector import embedding_map
    return embedding_map(load_dataset(root), method, sample=sample, progress=False)


def embedding_map_table(dataset: Dataset, method: str, sample: int = 2000) -> pd.DataFrame:
    """path, city, x, y[, scene] of up to `sample` images (cached per dataset and method)."""
    return _embedding_map(str(dataset.root), folder_stamp(dataset.root),
                          _mtime(scenes_file(dataset)), method, sample)
