"""Errors: where the chosen run goes wrong, down to the test images behind each confusion and
why the model saw them so (any image of the grids can be explained)."""
import pandas as pd
import streamlit as st

from cityclf import dashboard, public
from cityclf.dashboard import fmt
from cityclf.runs import RunError

dashboard.require_sidebar(__file__)

st.title("Errors")
run = dashboard.chosen_run()
visitor = public.is_public()  # a public dashboard: scores only, no image of the dataset
metrics = run.metrics
st.caption(f"Run **{run.info.get('name') or run.id}** on the test images of its split.")
if not metrics.get("confusion_matrix"):
    st.warning("This run scored no test image of a city it knows, so there is nothing to show. "
               "Train it again on a dataset with a test split.")
    st.stop()
try:
    predictions = dashboard.predictions(run)
except RunError as err:
    st.warning(f"{err}. Its scores are below, but no image can be shown; train it again to "
               "get the predictions file back.")
    predictions = None
# for the sequences; None when the dataset is gone (or not shown: then no scan either)
manifest = None if visitor else dashboard.run_manifest(run)

intervals = metrics.get("intervals") or {}
cols = st.columns(5)
for col, (label, key, percent) in zip(cols, [("top-1", "top1", True), ("top-5", "top5", True),
                                            ("macro-F1", "macro_f1", False)]):
    value = (metrics.get("macro") or {}).get("f1") if key == "macro_f1" else metrics.get(key)
    dashboard.interval_metric(col, label, value, intervals.get(key), percent)
cols[3].metric("ECE", fmt.number(metrics.get("ece")),
               help="expected calibration error: lower is better")
cols[4].metric("test images", f"{metrics['n_images']:,}")
bootstrap = metrics.get("bootstrap") or {}
if bootstrap.get("groups"):
    st.caption(f"Intervals: {bootstrap.get('resamples', 1000):,} bootstrap resamples of the "
               f"{bootstrap['groups']:,} test {bootstrap.get('unit', 'sequence')}s (frames of one "
               "sequence are near copies, not independent evidence).")
else:
    st.caption("This run was trained before intervals were recorded (–): train it again to get "
               "them.")

labels = metrics["confusion_matrix"]["labels"]
worst = (metrics.get("most_confused") or [{"true": labels[0], "predicted": labels[0]}])[0]
if st.session_state.get("cell_run") != run.id:  # first visit, or another run: its worst cell
    st.session_state["cell_run"] = run.id
    st.session_state["cell_true"], st.session_state["cell_pred"] = (worst["true"],
                                                                    worst["predicted"])


def show_clicked_cell() -> None:
    """A click on the matrix picks the cell, through the same keys as the selectboxes below."""
    cell = dashboard.clicked_cell(st.session_state["confusion_chart"])
    if cell:
        st.session_state["cell_true"], st.session_state["cell_pred"] = cell


@st.fragment
def confusion_section() -> None:
    """The matrix and the images of one cell: a click or a toggle reruns only this part."""
    st.subheader("Confusion matrix")
    toggles = st.columns(2)
    normalised = toggles[0].toggle("Row-normalised (share of each true city)", key="cm_normalised")
    hide_diagonal = toggles[1].toggle("Hide the diagonal (show only errors)",
                                      key="cm_hide_diagonal")
    table = dashboard.confusion_table(metrics, normalised, hide_diagonal)
    chosen = (st.session_state["cell_true"], st.session_state["cell_pred"])
    st.plotly_chart(dashboard.fig_confusion(table, normalised, chosen), key="confusion_chart",
                    on_select=show_clicked_cell, selection_mode="points")
    with st.expander("The matrix as a table"):
        st.dataframe(table.style.format("{:.1%}" if normalised else "{:.0f}", na_rep=""))
    if visitor:
        st.caption("The test images behind each cell are not shown here.")
        return

    st.markdown("**The images of one cell.** Click a cell above, or choose it here:")
    pick = st.columns(2)
    true = pick[0].selectbox("True city", labels, key="cell_true")
    predicted = pick[1].selectbox("Predicted city", labels, key="cell_pred")
    if predictions is None:
        return
    cell = dashboard.cell_predictions(predictions, true, predicted)
    if cell.empty:
        st.info(dashboard.empty_cell_message(metrics, true, predicted))
        return
    sequences = dashboard.sequence_groups(cell, manifest)
    st.caption(f"{len(cell)} test image(s) of **{true}** predicted as **{predicted}**, from "
               f"{len(sequences)} sequence(s): one card per sequence (its most confident frame), "
               "with the model's top 3 guesses; open a card for all its frames.")
    shown = dashboard.sequence_grid(
        sequences, lambda key: dashboard.sequence_frames(cell, manifest, key), key="cell_page")
    dashboard.explain_picker(shown, run, key="cell")


confusion_section()

st.subheader("Per-city precision, recall and F1")
st.plotly_chart(dashboard.fig_per_city(dashboard.per_city_table(metrics)))

pairs, mistakes = st.columns(2)
with pairs:
    st.markdown("**Most confused pairs** (both directions)")
    st.dataframe(pd.DataFrame(metrics["confused_pairs"], columns=["a", "b", "count"]),
                 hide_index=True, column_config={"a": "city", "b": "city", "count": "images"})
with mistakes:
    st.markdown("**Most frequent mistakes** (true → predicted)")
    st.dataframe(pd.DataFrame(metrics["most_confused"],
                              columns=["true", "predicted", "count", "rate"]),
                 hide_index=True, column_config={
                     "count": "images",
                     "rate": st.column_config.NumberColumn("share of the true city",
                                                           format="percent")})

st.subheader("Accuracy by condition")
for col, (column, title) in zip(st.columns(len(dashboard.GROUP_NAMES)),
                                dashboard.GROUP_NAMES.items()):
    groups = dashboard.group_accuracy(metrics, column)
    with col:
        if not groups.empty:
            st.plotly_chart(dashboard.fig_group_accuracy(groups, title))
        elif column == "scene" and not visitor:
            st.info("Scene tags not computed yet: "
                    f"`cityclf data scenes {run.info['dataset']['root']}`")
        else:
            st.caption(f"{title}: not recorded in this dataset.")

st.subheader("Calibration")
st.caption("Bars below the diagonal: the model is more confident than it is right.")
st.plotly_chart(dashboard.fig_reliability(metrics))


@st.fragment
def grid_section(title: str, note: str, rows: pd.DataFrame, key: str) -> None:
    """A grid of test images with its explain picker; picking reruns only this part."""
    st.subheader(title)
    st.caption(note)
    shown = dashboard.prediction_grid(rows, key=f"{key}_page")
    dashboard.explain_picker(shown, run, key=key)


if predictions is not None and not visitor:
    grid_section("Confidently wrong", "The mistakes the model was surest of: which cues mislead "
                 "it?", dashboard.confident_wrong(predictions), "wrong")
    grid_section("Barely right", "Right answers with the lowest confidence: the images near the "
                 "decision boundary.", dashboard.least_confident_right(predictions), "right")
