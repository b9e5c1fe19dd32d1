"""Leaderboard: every run of the dataset, scored on the same test split, and how each got there."""
import streamlit as st

from cityclf import config, dashboard
from cityclf.runs import get_run

dashboard.require_sidebar(__file__)

COLUMNS = {
    "name": st.column_config.TextColumn("run", width="medium"),
    "model": st.column_config.TextColumn("model"),
    "img_size": st.column_config.NumberColumn("input px", width="small"),
    "split": st.column_config.TextColumn("split", width="small",
                                         help="sequence: no sequence in two splits; "
                                              "random: leaks neighbouring frames"),
    "params": st.column_config.NumberColumn("params", format="compact"),
    "top1": st.column_config.NumberColumn("top-1", format="percent"),
    "top5": st.column_config.NumberColumn("top-5", format="percent"),
    "macro_f1": st.column_config.NumberColumn("macro-F1", format="%.3f"),
    "ece": st.column_config.NumberColumn("ECE", format="%.3f",
                                         help="expected calibration error: lower is better"),
    "train_seconds": st.column_config.NumberColumn("train s", format="%.0f"),
    "ms_per_image": st.column_config.NumberColumn("ms / image", format="%.2f"),
}

root = st.session_state.get(dashboard.DATASET_ROOT) or str(config.demo_dir())
table, problems = dashboard.runs_table(root)

st.title("Leaderboard")
if problems:
    listed = "\n".join(f"- `{name}`: {why}" for name, why in problems.items())
    st.warning(f"{len(problems)} run folder(s) in `{config.models_dir()}` could not be read and "
               f"are left out. Delete them, or train them again:\n{listed}")
if table.empty:
    st.info(dashboard.no_runs_message(root))
    st.stop()

st.caption("Every run of this dataset, scored on the test images of its split. "
           "Click a column header to sort.")
st.dataframe(table[list(COLUMNS)], column_config=COLUMNS, hide_index=True)

st.subheader("Accuracy against speed")
st.plotly_chart(dashboard.fig_speed_accuracy(table))

runs = {run_id: get_run(run_id) for run_id in table["run_id"]}
names = dashboard.run_labels(table)
chosen = [st.session_state.get(key) for key in (dashboard.RUN_ID, dashboard.COMPARE_RUN_ID)]

st.subheader("Training curves")
in_epochs = [run_id for run_id, run in runs.items() if not run.history().empty]
picked = st.multiselect("Runs", in_epochs, format_func=names.get, key="curves_runs",
                        default=[r for r in chosen if r in in_epochs] or in_epochs[:1])
curves = dashboard.history_long({names[r]: runs[r] for r in picked})
if curves.empty:
    st.info("Pick one or more runs above (runs not trained in epochs, like the random forest, "
            "have no curves).")
else:
    st.plotly_chart(dashboard.fig_history(curves))

st.subheader("Hyper-parameter tuning")
found = dashboard.studies(list(runs.values()))
if not found:
    st.info("No tuning study with two or more runs yet. Start one with "
            f"`cityclf tune --data {root} --model lenet --lr 1e-2,1e-3 --batch-size 16,32`.")
else:
    study = st.selectbox("Study", list(found), key="study",
                         format_func=lambda s: f"{s} ({len(found[s])} runs)")
    trials = dashboard.study_table(found[study])
    st.plotly_chart(dashboard.fig_parcoords(trials))
    st.dataframe(trials.sort_values("val_accuracy", ascending=False), hide_index=True,
                 column_config={"lr": "learning rate", "batch_size": "batch size",
                                "img_size": "input px",
                                "val_accuracy": st.column_config.NumberColumn(
                                    "best val accuracy", format="percent")})

st.subheader("Two runs side by side")
run_a, run_b = chosen
if run_b not in runs:
    st.info("Pick a second run under **Compare with** in the sidebar.")
    st.stop()
a, b = runs[run_a], runs[run_b]
row_a, row_b = (table.set_index("run_id").loc[r] for r in (run_a, run_b))
for col, (label, key, fmt) in zip(st.columns(4), [("top-1", "top1", "{:.1%}"),
                                                  ("top-5", "top5", "{:.1%}"),
                                                  ("macro-F1", "macro_f1", "{:.3f}"),
                                                  ("ms / image", "ms_per_image", "{:.2f}")]):
    col.metric(label, fmt.format(row_a[key]),
               delta=f"{fmt.replace('{:', '{:+').format(row_a[key] - row_b[key])} "
                     f"vs {names[run_b]}",
               delta_color="inverse" if key == "ms_per_image" else "normal")
st.caption(f"Figures of **{names[run_a]}**; the differences are to **{names[run_b]}**.")
st.plotly_chart(dashboard.fig_f1_difference(dashboard.f1_comparison(a, b), names[run_a],
                                            names[run_b]))
