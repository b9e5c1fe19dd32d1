"""The Label page's interactive parts: choosing a pool, labelling its photos one at a time (a
click or a key), and retraining the run's head with the labels (cityclf.active)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .. import active
from ..pool import NONE_OF_THESE, SKIP, Pool, PoolError, known_pools
from ..runs import Run, RunError, get_run
from . import formatting as fmt
from .explain_panel import evidence, method_choice
from .loaders import predictor

ANOTHER = "another folder"
POOL_KEY, STRATEGY_KEY = "label_pool", "label_strategy"
GUESSES = 3  # the model's likeliest cities, each a button with its number key
PHOTO_PX = 520


def pool_picker() -> Pool | None:
    """A pool chosen among those added before, or a folder typed in (added on request)."""
    pools = {str(pool.folder): pool for pool in known_pools()}
    picked = st.selectbox("Pool of photos", [*pools, ANOTHER], key=POOL_KEY,
                          format_func=lambda f: "another folder…" if f == ANOTHER else f)
    if picked != ANOTHER:
        return pools[picked]
    typed = st.text_input("Folder of your own photos", key="label_folder",
                          placeholder="/home/me/street-photos").strip()
    if not typed:
        st.caption("Type a folder of unlabelled street photos: cityclf ranks them by what a "
                   "label would teach the run.")
        return None
    try:
        return Pool.open(typed)
    except PoolError as err:
        st.warning(str(err))
        return None


def pool_view(run: Run, pool: Pool) -> active.PoolView | None:
    """The run's view of the pool, embedding and checking new photos behind a status box."""
    with st.status("Reading the pool…") as status:
        bar = st.progress(0.0)

        def on_step(message: str, fraction: float) -> None:
            status.update(label=message.capitalize() + "…")
            bar.progress(fraction)

        try:
            view = active.view_pool(run, pool, progress=False, on_step=on_step)
        except (RunError, PoolError) as err:
            status.update(label="The pool cannot be used with this run", state="error")
            st.warning(str(err))
            return None
        status.update(label=f"{len(view.table)} photos read", state="complete", expanded=False)
    return view


def pool_summary(view: active.PoolView) -> None:
    table = view.table
    labelled = table["label"].notna()
    cols = st.columns(4)
    cols[0].metric("photos", f"{len(table):,}")
    cols[1].metric("labelled", f"{int(labelled.sum()):,}",
                   help="Skips included; one labelled photo in five is held out to measure.")
    cols[2].metric("held out to measure", int((labelled & table["held_out"]).sum()))
    cols[3].metric("not street photos", int((table["verdict"] == "not_street").sum()),
                   help="The run's photo check: these go to the end of the queue.")


def _label(pool: Pool, path: str, city: str) -> None:
    """A button's callback: the label is on disk before the page draws again."""
    try:
        pool.add_label(path, city)
        st.session_state["label_last"] = (path, city)
    except (PoolError, OSError) as err:
        st.session_state["label_error"] = str(err)


@st.fragment
def labelling(run: Run, pool: Pool) -> None:
    """The pool's counts and the next photo of the queue with the run's guesses: click a city
    (or press its number), "None of these" (0) or "Skip" (s). Only this part of the page
    redraws per label."""
    if error := st.session_state.pop("label_error", None):
        st.error(f"The label was not saved: {error}")
    view = active.view_pool(run, pool, progress=False)
    pool_summary(view)
    strategy = st.segmented_control("Rank by", active.STRATEGIES, key=STRATEGY_KEY,
                                    default=active.DEFAULT_STRATEGY, required=True)
    with st.spinner("Ranking the photos…"):
        queue = active.next_batch(run, pool, view, strategy=strategy, progress=False)
    if last := st.session_state.get("label_last"):
        st.caption(f"Saved: {Path(last[0]).name} → {last[1]}")
    if not queue:
        st.success("Every readable photo of this pool is labelled.")
        return
    path = queue[0]
    row = view.table.set_index("path").loc[path]
    probabilities = view.probabilities[view.table.index[view.table["path"] == path][0]]
    left, right = st.columns([3, 2])
    left.image(path, width=PHOTO_PX, caption=f"{Path(path).name} · {len(queue)} left in this batch")
    with right:
        st.markdown("**Which city is this?**")
        if row["verdict"] != "ok" and isinstance(row["message"], str):
            st.warning(row["message"])
        ranked = probabilities.argsort()[::-1]
        for n, city_index in enumerate(ranked[:GUESSES], 1):
            city = run.classes[city_index]
            st.button(f"{city} ({fmt.probability(probabilities[city_index])})",
                      key=f"guess_{n}", shortcut=str(n), width="stretch",
                      on_click=_label, args=(pool, path, city))
        others = [run.classes[i] for i in ranked[GUESSES:]]
        if others:
            other = st.selectbox("Another city", others, index=None, key="label_other",
                                 placeholder="another of the run's cities")
            st.button("Label as that city", disabled=other is None, width="stretch",
                      on_click=_label, args=(pool, path, other), key="label_other_button")
        st.button("None of these cities", key="label_none", shortcut="0", width="stretch",
                  on_click=_label, args=(pool, path, NONE_OF_THESE))
        st.button("Skip", key="label_skip", shortcut="s", width="stretch",
                  on_click=_label, args=(pool, path, SKIP))
    if st.toggle("Why this guess?", key="label_explain",
                 help="The evidence for the top guess; LIME takes a few seconds."):
        from ..images import load_rgb
        from ..inference import prepare_image, run_preprocess
        image = prepare_image(load_rgb(path), run_preprocess(run))
        method = method_choice(run, key="label_method")
        evidence(run, predictor(run), image, int(ranked[0]), float(probabilities[ranked[0]]),
                 "Top guess", method)


def update_section(run: Run, pool: Pool) -> None:
    """Retrain the head with the labels into a new run, and show what the labels bought."""
    pseudo = st.checkbox("Also train on confident unlabelled photos (pseudo-labels)",
                         key="label_pseudo",
                         help="Photos the model is at least as sure of as it is right 95 % of "
                              "the time on validation, under their predicted city. Off by "
                              "default: measured on the demo in bench/active.py.")
    if st.button("Update the model", type="primary", key="label_update"):
        with st.status("Updating the model…", expanded=True) as status:
            bar = st.progress(0.0)

            def on_step(message: str, fraction: float) -> None:
                status.update(label=message.capitalize() + "…")
                bar.progress(fraction)

            try:
                child = active.update(run, pool, pseudo_labels=pseudo, progress=False,
                                      on_step=on_step)
            except (ValueError, RunError, OSError) as err:
                status.update(label="Not updated", state="error")
                st.warning(str(err))
                return
            bar.progress(1.0)
            status.update(label=f"New run: {child.info['name']}", state="complete")
        st.session_state["label_child"] = child.id
    child_id = st.session_state.get("label_child")
    if child_id:
        try:
            child = get_run(child_id)
        except RunError:
            return
        result = child.info["active"]
        st.success(f"Run **{child.info['name']}**: test top-1 {fmt.share(child.metrics['top1'])}"
                   f" (was {fmt.share(run.metrics['top1'])}); pick it in the sidebar, or "
                   "compare the two on the Leaderboard.")
        from .figures import fig_label_curve
        if result["curve"]:
            st.plotly_chart(fig_label_curve(result["curve"]), key="label_curve")
        else:
            st.caption("Label a few more photos to measure what the labels buy: one in five is "
                       "held out for that.")
