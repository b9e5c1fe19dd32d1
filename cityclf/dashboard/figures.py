"""The run figures and the tables behind them: leaderboard, comparison, errors and calibration.

Plain functions of run files (metrics, predictions, history) in, plotly figures or pandas tables
out: no Streamlit here, so each can be tested without a page.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from .. import eda
from ..eda import tidy
from ..runs import Run
from ..splits import group_keys
from . import formatting as fmt


# ------------------------------------------------------------------------------- leaderboard

def fig_speed_accuracy(table: pd.DataFrame) -> go.Figure:
    """Top-1 against inference time: the trade-off a deployment has to choose on. Each point
    carries its 95 % interval as an error bar (none for runs trained before intervals), so two
    runs whose bars overlap are not told apart by this test set."""
    top1 = pd.to_numeric(table["top1"], errors="coerce")  # a run that scored nothing: None
    table = table.assign(top1=top1, error_up=table["top1_high"] - top1,
                         error_down=top1 - table["top1_low"])
    fig = px.scatter(table, x="ms_per_image", y="top1", color="model", symbol="split",
                     error_y="error_up", error_y_minus="error_down", hover_name="name",
                     hover_data={"img_size": True, "params": True, "error_up": False,
                                 "error_down": False, "top1_low": ":.1%", "top1_high": ":.1%"},
                     log_x=True,
                     labels={"ms_per_image": "ms per image (log scale)", "top1": "top-1 accuracy",
                             "top1_low": "95 % interval from", "top1_high": "to"})
    fig.update_traces(marker={"size": 12})
    fig.update_yaxes(tickformat=".0%")
    return tidy(fig, 380)


def leaderboard_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with each score's 95 % interval as text beside it ("–" for old runs)."""
    out = table.copy()
    for score, percent in (("top1", True), ("top5", True), ("macro_f1", False)):
        out[f"{score}_interval"] = [fmt.interval([low, high], percent) for low, high in
                                    zip(table[f"{score}_low"], table[f"{score}_high"])]
    return out


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


def fig_difference(result: dict, name_a: str, name_b: str) -> go.Figure:
    """The top-1 difference of two runs as a point with its paired 95 % interval, against the
    zero line: an interval that crosses zero means this test set cannot tell them apart."""
    low, high = result["interval_pp"]
    middle = result["difference_pp"]
    colour = "#2a9d8f" if low > 0 else "#e76f51" if high < 0 else "#6c757d"
    fig = go.Figure(go.Scatter(
        x=[middle], y=["top-1"], mode="markers", marker={"size": 14, "color": colour},
        error_x={"type": "data", "symmetric": False, "array": [high - middle],
                 "arrayminus": [middle - low], "thickness": 3, "width": 10, "color": colour},
        hovertemplate=f"{fmt.points(middle)} (95 % interval {fmt.points_interval([low, high])})"
                      "<extra></extra>"))
    fig.add_vline(x=0, line={"color": "grey", "dash": "dash"})
    reach = max(abs(low), abs(high), 1.0) * 1.15
    fig.update_xaxes(range=[-reach, reach], ticksuffix=" pp", zeroline=False,
                     title=f"top-1 of {name_a} − top-1 of {name_b} (percentage points)")
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=170, showlegend=False, margin={"l": 10, "r": 10, "t": 10, "b": 50})
    return fig


def comparison_summary(result: dict, name_a: str, name_b: str) -> str:
    """What the comparison says, in a sentence a reader can act on."""
    level = f"{result['level']:.0%}"
    only = (f"{result['only_a_right']} test image(s) only {name_a} gets right, "
            f"{result['only_b_right']} only {name_b}")
    if result["significant"]:
        better = name_a if result["difference_pp"] > 0 else name_b
        return (f"**{better} is better** on these {result['n_images']:,} test images "
                f"({result['n_sequences']:,} sequences): McNemar's test gives "
                f"{fmt.p_value(result['mcnemar_p'])}, significant at the {level} level ({only}).")
    low, high = result["interval_pp"]
    why = (f"McNemar's test gives {fmt.p_value(result['mcnemar_p'])} ({only})"
           if result["mcnemar_p"] >= 1 - result["level"] else
           f"McNemar's test gives {fmt.p_value(result['mcnemar_p'])} ({only}), but it counts the "
           f"frames of a sequence as independent, and the {level} interval over sequences, "
           f"{low:+.1f} to {high:+.1f} pp, includes zero")
    return (f"**Not a significant difference**: {why}, so on these {result['n_images']:,} "
            f"test images ({result['n_sequences']:,} sequences) the two runs may be equally good.")


def fig_city_differences(per_city: pd.DataFrame, name_a: str, name_b: str) -> go.Figure:
    """Per-city top-1 (recall) of run A minus run B, in points, on their common test images."""
    table = per_city.sort_values("difference_pp")
    colours = np.where(table["difference_pp"] >= 0, "#2a9d8f", "#e76f51")
    fig = go.Figure(go.Bar(
        x=table["true_city"], y=table["difference_pp"], marker_color=colours,
        text=[fmt.points(v) for v in table["difference_pp"]], textposition="outside",
        cliponaxis=False, customdata=np.stack([table["top1_a"], table["top1_b"], table["n"]], 1),
        hovertemplate="%{x}: %{customdata[0]:.1%} vs %{customdata[1]:.1%} of %{customdata[2]} "
                      "images<extra></extra>"))
    fig.update_yaxes(title=f"top-1 of {name_a} − {name_b} (pp)", ticksuffix=" pp")
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
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
    """precision, recall, f1, support per city, with `<score>_low`/`_high` from the run's 95 %
    intervals (NaN for runs trained before intervals were recorded)."""
    table = pd.DataFrame(metrics["per_city"]).T.rename_axis("city").reset_index()
    bounds = ((metrics.get("intervals") or {}).get("per_city") or {})
    for score in ("precision", "recall", "f1"):
        for side, end in (("low", 0), ("high", 1)):
            table[f"{score}_{side}"] = [_bound(bounds.get(city, {}).get(score), end)
                                        for city in table["city"]]
    return table


def _bound(pair, end: int) -> float:
    ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[end], (int, float))
    return float(pair[end]) if ok else np.nan


def fig_per_city(table: pd.DataFrame) -> go.Figure:
    """Precision, recall and F1 per city, each bar with its 95 % interval where the run has one."""
    fig = go.Figure()
    for score in ("precision", "recall", "f1"):
        values = table[score].astype(float)
        error = None  # NaN bounds (an old run) draw no bar
        if f"{score}_high" in table:
            error = {"type": "data", "symmetric": False, "array": table[f"{score}_high"] - values,
                     "arrayminus": values - table[f"{score}_low"]}
        fig.add_bar(x=table["city"], y=values, name=score, error_y=error,
                    hovertemplate="%{x} " + score + " %{y:.2f}<extra></extra>")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.05], title=None)
    return tidy(fig, 340)


GROUP_NAMES = {"scene": "scene type", "night": "night", "control_panel": "control panel",
               "view_direction": "view direction"}
GROUP_VALUES = {"night": {"True": "night", "False": "day"},
                "control_panel": {"True": "dashboard in view", "False": "no dashboard"}}


def group_accuracy(metrics: dict, column: str) -> pd.DataFrame:
    """Top-1 per value of a condition (night, scene, ...) with its 95 % interval (NaN when the
    run has none); empty when the condition was not recorded."""
    groups = (metrics.get("by_group") or {}).get(column) or {}
    bounds = ((metrics.get("intervals") or {}).get("by_group") or {}).get(column) or {}
    names = GROUP_VALUES.get(column, {})
    return pd.DataFrame([{"value": names.get(value, value), "top1": scores["top1"],
                          "n": scores["n"], "low": _bound(bounds.get(value), 0),
                          "high": _bound(bounds.get(value), 1)}
                         for value, scores in groups.items()],
                        columns=["value", "top1", "n", "low", "high"])


def fig_group_accuracy(table: pd.DataFrame, title: str) -> go.Figure:
    fig = px.bar(table.assign(up=table["high"] - table["top1"], down=table["top1"] - table["low"]),
                 x="value", y="top1", text="n", title=title, error_y="up", error_y_minus="down",
                 labels={"value": "", "top1": "top-1 accuracy"})
    fig.update_traces(texttemplate="n=%{text}", textposition="inside", insidetextanchor="start")
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


def sequence_groups(cell: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.DataFrame:
    """One row per sequence of a confusion cell: its most confident frame (the cell's columns),
    `sequence` and `frames`, the cell's order kept. Frames of one drive are near copies, so ten
    wrong frames of one street are one mistake seen ten times, not ten mistakes.

    Without a manifest (the dataset is gone) each image is its own sequence.
    """
    keys = pd.Series(pd.NA, index=cell.index, dtype="string")
    if manifest is not None and "sequence_key" in manifest:
        keys = cell["path"].map(manifest.drop_duplicates("path").set_index("path")["sequence_key"])
    sequence = group_keys(pd.DataFrame({"path": cell["path"], "sequence_key": keys}))
    tagged = cell.assign(sequence=sequence.to_numpy())
    first = tagged.drop_duplicates("sequence")
    return first.assign(frames=first["sequence"].map(tagged["sequence"].value_counts()).to_numpy())


def sequence_frames(cell: pd.DataFrame, manifest: pd.DataFrame | None,
                    sequence: str) -> pd.DataFrame:
    """Every frame of one sequence in the cell, in frame order where the dataset records it."""
    keys = pd.Series(pd.NA, index=cell.index, dtype="string")
    order = None
    if manifest is not None and "sequence_key" in manifest:
        by_path = manifest.drop_duplicates("path").set_index("path")
        keys = cell["path"].map(by_path["sequence_key"])
        if "frame_number" in by_path:
            order = cell["path"].map(by_path["frame_number"])
    inside = (group_keys(pd.DataFrame({"path": cell["path"], "sequence_key": keys}))
              == sequence).to_numpy()
    frames = cell[inside]
    if order is not None and order[inside].notna().any():
        frames = frames.iloc[np.argsort(order[inside].fillna(-1).to_numpy(), kind="stable")]
    return frames


def empty_cell_message(metrics: dict, true: str, predicted: str) -> str:
    """What an empty confusion cell means, in words: it is a finding, not a missing picture."""
    labels = metrics["confusion_matrix"]["labels"]
    row = metrics["confusion_matrix"]["matrix"][labels.index(true)] if true in labels else []
    if not sum(row):
        return f"The test split has no image of {true}, so every cell of its row is empty."
    if true == predicted:
        return (f"No test image of {true} was predicted as {true}: the model got none of its "
                f"{sum(row)} test image(s) of {true} right.")
    return (f"No test image of {true} was predicted as {predicted} — the model never confused "
            "them this way.")


# ------------------------------------------------------------------------------- predict page

def fig_runners_up(probabilities: np.ndarray, classes: list[str], ranks: slice = slice(1, 5)
                   ) -> go.Figure | None:
    """The next most likely cities as bars, each labelled with its probability (so a 0.5 %
    runner-up is readable beside a 99 % answer); None when the model knows one city."""
    order = np.argsort(probabilities)[::-1][ranks]
    if not len(order):
        return None
    values = probabilities[order]
    fig = go.Figure(go.Bar(x=values, y=[classes[i] for i in order], orientation="h",
                           text=[fmt.probability(v) for v in values], textposition="outside",
                           cliponaxis=False, marker_color="#4c78a8",
                           hovertemplate="%{y}: %{text}<extra></extra>"))
    fig.update_layout(title="Next most likely", height=80 + 40 * len(order),
                      margin={"l": 0, "r": 50, "t": 40, "b": 0},
                      yaxis={"autorange": "reversed"}, xaxis={"tickformat": ".0%", "range": [0, 1]})
    return fig



# ------------------------------------------------------------------------------- dataset page

SPLIT_ORDER = ["train", "val", "test", "unused"]
SPLIT_COLOURS = {"train": "#4c78a8", "val": "#f58518", "test": "#54a24b", "unused": "#bab0ac"}


def filter_images(manifest: pd.DataFrame, split: str | None = None, **conditions) -> pd.DataFrame:
    """`eda.filter_images` plus the split (train, val, test, unused; None: any), so the test
    images every run is scored on can be browsed on their own."""
    shown = eda.filter_images(manifest, **conditions)
    if split is not None and "split" in shown:
        shown = shown[shown["split"] == split]
    return shown


def fig_split_counts(manifest: pd.DataFrame) -> go.Figure:
    """Images per city, stacked by split: is the dataset balanced, and is every city tested?
    Sequences per city ride in the hover."""
    split = manifest["split"] if "split" in manifest else pd.Series("all", index=manifest.index)
    table = manifest.assign(split=split.astype(str)).groupby(["city", "split"]).agg(
        images=("path", "size"), sequences=("sequence_key", "nunique")).reset_index()
    order = [s for s in SPLIT_ORDER if s in set(table["split"])] + \
        sorted(set(table["split"]) - set(SPLIT_ORDER))
    fig = px.bar(table, x="city", y="images", color="split", hover_data=["sequences"],
                 category_orders={"split": order}, color_discrete_map=SPLIT_COLOURS)
    totals = table.groupby("city")["images"].sum()
    fig.add_trace(go.Scatter(x=totals.index, y=totals.values, text=totals.values, mode="text",
                             textposition="top center", showlegend=False, hoverinfo="skip"))
    fig.update_layout(barmode="stack", legend_title_text="split")
    fig.update_yaxes(range=[0, totals.max() * 1.15 if len(totals) else 1])
    return tidy(fig, 320)


def within(table: pd.DataFrame, shown: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The rows of `table` (a quality report, pairs, map points) about an image of `shown`:
    any of `columns` (default: path) is a shown path. How the Dataset page's views follow its
    filters."""
    paths = set(shown["path"])
    keep = pd.Series(False, index=table.index)
    for column in columns or ("path",):
        keep |= table[column].isin(paths)
    return table[keep]


# --------------------------------------------------------------------------- inside the model

def fig_mixing(weights: np.ndarray, filters) -> go.Figure:
    """A 1×1 convolution as what it is, a channel-mixing matrix: a row per output channel shown,
    a column per input channel, red adding and blue subtracting. Flat grey 1-pixel "kernels"
    would hide exactly that."""
    labels = [f"#{f}" for f in filters]
    limit = float(np.abs(weights).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=weights, y=labels, x=np.arange(weights.shape[1]), colorscale="RdBu", reversescale=True,
        zmin=-limit, zmax=limit, colorbar={"title": "weight"},
        hovertemplate="filter %{y} ← input channel %{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="input channel")
    fig.update_yaxes(title="filter (as above)", autorange="reversed", type="category")
    return tidy(fig, 120 + 14 * len(labels))


# ------------------------------------------------------------------------------- labelling

def fig_label_curve(curve: list[dict]) -> go.Figure:
    """Accuracy on the held-out labelled photos against labels spent (cityclf.active): what
    each label bought, on photos like the user's own rather than the dataset's test split."""
    table = pd.DataFrame(curve)
    fig = px.line(table, x="labels", y="accuracy", markers=True,
                  labels={"labels": "labels spent (held-out ones not counted)",
                          "accuracy": f"top-1 on {table['held_out'].iloc[0]} held-out labelled photos"})
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return tidy(fig, 320)
