"""Leaderboard: every run of the dataset, scored on the same test split, and how each got there."""
import math

import streamlit as st

from cityclf import config, dashboard, public
from cityclf.compare import NotComparable, why_not_comparable
from cityclf.dashboard import fmt
from cityclf.runs import RunError, get_run

dashboard.require_sidebar(__file__)

INTERVAL_HELP = "95 % interval: a bootstrap over whole test sequences. – : the run predates them"
COLUMNS = {
    "name": st.column_config.TextColumn("run", width="medium"),
    "model": st.column_config.TextColumn("model"),
    "img_size": st.column_config.NumberColumn("input px", width="small"),
    "split": st.column_config.TextColumn("split", width="small",
                                         help="sequence: no sequence in two splits; "
                                              "random: leaks neighbouring frames"),
    "params": st.column_config.NumberColumn("params", format="compact"),
    "top1": st.column_config.NumberColumn("top-1", format="percent"),
    "top1_interval": st.column_config.TextColumn("top-1 95 %", help=INTERVAL_HELP),
    "top5": st.column_config.NumberColumn("top-5", format="percent"),
    "top5_interval": st.column_config.TextColumn("top-5 95 %", help=INTERVAL_HELP),
    "macro_f1": st.column_config.NumberColumn("macro-F1", format="%.3f"),
    "macro_f1_interval": st.column_config.TextColumn("macro-F1 95 %", help=INTERVAL_HELP),
    "ece": st.column_config.NumberColumn("ECE", format="%.3f",
                                         help="expected calibration error: lower is better"),
    "train_seconds": st.column_config.NumberColumn("train s", format="%.0f"),
    "ms_per_image": st.column_config.NumberColumn("ms / image", format="%.2f"),
}


def points_metric(column, label: str, value: str, difference_pp: float, note: str) -> None:
    """A score of run A with its difference to run B in points; no arrow when there is none."""
    flat = not abs(difference_pp) >= 0.05  # NaN (a score missing) is flat too
    column.metric(label, value, delta=fmt.points(difference_pp),
                  delta_color="off" if flat else "normal", delta_arrow="off" if flat else "auto",
                  delta_description=note)


def difference_pp(row_a, row_b, score: str) -> float:
    """Run A minus run B in points (NaN when either lacks the score)."""
    return 100 * (fmt.to_float(row_a[score]) - fmt.to_float(row_b[score]))


root = st.session_state.get(dashboard.DATASET_ROOT) or str(config.demo_dir())
table, problems = dashboard.runs_table(root)
visitor = public.is_public()  # a public dashboard: scores only, nothing of the server

st.title("Leaderboard")
if problems and not visitor:
    listed = "\n".join(f"- `{name}`: {why}" for name, why in problems.items())
    st.warning(f"{len(problems)} run folder(s) in `{config.models_dir()}` could not be read and "
               f"are left out. Delete them, or train them again:\n{listed}")
if table.empty:
    st.info(public.UNAVAILABLE if visitor else dashboard.no_runs_message(root))
    st.stop()

st.caption("Every run of this dataset, scored on the test images of its split, each score with "
           "its 95 % interval. Click a column header to sort.")
st.dataframe(dashboard.leaderboard_intervals(table)[list(COLUMNS)], column_config=COLUMNS,
             hide_index=True)

st.subheader("Accuracy against speed")
st.plotly_chart(dashboard.fig_speed_accuracy(table))
st.caption("Bars: 95 % intervals of top-1. Runs whose bars overlap may not differ on this test "
           "set; compare two runs below for a paired test.")

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
    st.info("No tuning study with two or more runs yet." + ("" if visitor else (
            f" Start one with `cityclf tune --data {root} --model lenet --lr 1e-2,1e-3 "
            "--batch-size 16,32`.")))
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

if visitor:  # one published run: nothing to pick a second run with
    st.stop()
st.subheader("Two runs side by side")
run_a, run_b = chosen
if run_b not in runs or run_a not in runs:
    st.info("Pick a second run under **Compare with** in the sidebar.")
    st.stop()
a, b = runs[run_a], runs[run_b]
name_a, name_b = names[run_a], names[run_b]
row_a, row_b = (table.set_index("run_id").loc[r] for r in (run_a, run_b))
reason = why_not_comparable(a, b)
result = None
if reason is None:
    try:
        result = dashboard.comparison(a, b)
    except (NotComparable, RunError) as err:
        reason = str(err)

if reason:
    st.warning(f"**{name_a} and {name_b} cannot be compared**: {reason}. Their scores are shown "
               "each on its own test images; a difference between them would mean nothing, so "
               "none is shown.")
    for name, row in ((name_a, row_a), (name_b, row_b)):
        cols = st.columns(4)
        cols[0].markdown(f"**{name}**")
        for col, (label, score, percent) in zip(cols[1:], [("top-1", "top1", True),
                                                           ("top-5", "top5", True),
                                                           ("macro-F1", "macro_f1", False)]):
            dashboard.interval_metric(col, label, row[score],
                                      [row[f"{score}_low"], row[f"{score}_high"]], percent)
    st.stop()

st.caption(f"**{name_a}** minus **{name_b}**, on the {result['n_images']:,} test images both "
           "were scored on. Differences of accuracies are in percentage points (pp): 60 % → "
           "63 % is +3 pp.")


cols = st.columns(4)
points_metric(cols[0], "top-1", fmt.share(result["top1_a"]), result["difference_pp"],
              f"vs {name_b} (95 % {fmt.points_interval(result['interval_pp'])})")
points_metric(cols[1], "top-5", fmt.share(row_a["top5"]), difference_pp(row_a, row_b, "top5"),
              f"vs {name_b}")
points_metric(cols[2], "macro-F1", fmt.number(row_a["macro_f1"]),
              difference_pp(row_a, row_b, "macro_f1"), f"vs {name_b}")
ms_a, ms_b = (fmt.to_float(row["ms_per_image"]) for row in (row_a, row_b))
cols[3].metric("ms / image", fmt.number(ms_a, ".2f"),
               delta=None if math.isnan(ms_a - ms_b) else f"{ms_a - ms_b:+.2f} ms",
               delta_color="inverse", delta_description=f"vs {name_b}")
st.markdown(dashboard.comparison_summary(result, name_a, name_b))
st.plotly_chart(dashboard.fig_difference(result, name_a, name_b))
st.markdown("**Per city**: top-1 (recall) of each city's test images, "
            f"{name_a} minus {name_b}")
st.plotly_chart(dashboard.fig_city_differences(result["per_city"], name_a, name_b))
