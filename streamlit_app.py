"""cityclf dashboard: which city was this street photo taken in, and why?

This entry point defines the pages and the sidebar every page shares: the sidebar picks the
dataset and the run(s) and leaves them in st.session_state for the pages to read.

In public mode (``CITYCLF_PUBLIC_RUN=<run id>``, see cityclf.public) there is no sidebar: the
published run is fixed, and only the pages a visitor may use are in the navigation, Predict first.
"""
import os
from pathlib import Path

# lime prints a console progress bar per explanation; the pages show their own progress. (tqdm
# reads this when it is first imported, so it comes before cityclf.)
os.environ.setdefault("TQDM_DISABLE", "1")

import streamlit as st  # noqa: E402

from cityclf import config, dashboard, public  # noqa: E402
from cityclf.datasets import DatasetError  # noqa: E402

ANOTHER_FOLDER = "another folder"

# An emoji favicon is drawn locally; a :material/…: one (or none: the page's) loads from a CDN.
st.set_page_config(page_title="cityclf", page_icon="🏙️", layout="wide")


def sidebar() -> None:
    """Dataset and runs pickers; their choice goes to the session keys the pages read."""
    choices = dashboard.dataset_choices()
    with st.sidebar:
        picked = st.selectbox("Dataset", [*choices, ANOTHER_FOLDER], key="dataset_pick",
                              format_func=lambda root: choices.get(root, "another folder…"))
        root = picked
        if picked == ANOTHER_FOLDER:
            root = st.text_input("Dataset folder", key="dataset_typed",
                                 placeholder="/data/msls or a folder per city").strip()
            if not root:
                st.caption("The demo is shown until a folder is typed.")
        st.session_state[dashboard.DATASET_ROOT] = root or str(config.demo_dir())

        table, _ = dashboard.runs_table(st.session_state[dashboard.DATASET_ROOT])
        names = dashboard.run_labels(table)
        labels = {run_id: f"{names[run_id]} ({top1:.0%})"
                  for run_id, top1 in zip(table["run_id"], table["top1"])}
        if st.session_state.get("run_pick") not in labels:  # another dataset was picked
            st.session_state["run_pick"] = next(iter(labels), None)
        run_id = st.selectbox("Run", list(labels), key="run_pick", format_func=labels.get,
                              placeholder="no runs of this dataset yet")
        others = [r for r in labels if r != run_id]
        if st.session_state.get("compare_pick") not in others:
            st.session_state["compare_pick"] = None
        compare = st.selectbox("Compare with", others, key="compare_pick", format_func=labels.get,
                               placeholder="another run (optional)")
        st.session_state[dashboard.RUN_ID] = run_id
        st.session_state[dashboard.COMPARE_RUN_ID] = compare


def home() -> None:
    st.title("cityclf")
    st.write("Which city was this street-level photo taken in? cityclf answers without GPS, by "
             "transfer learning on dash-cam images, and this dashboard shows how well and why.")
    root = st.session_state[dashboard.DATASET_ROOT]
    is_demo = root == str(config.demo_dir())
    try:
        dataset = dashboard.load_dataset(root)
    except DatasetError as err:
        if is_demo and not config.demo_dir().exists():
            offer_demo("There is no demo dataset yet.")
        else:
            st.warning(f"{err}. Pick another dataset in the sidebar, or type its folder.")
    else:
        summary = dataset.summary()
        table, _ = dashboard.runs_table(root)
        cols = st.columns(4)
        cols[0].metric("images", f"{len(dataset.manifest):,}")
        cols[1].metric("cities", len(summary))
        cols[2].metric("sequences", f"{int(summary['sequences'].sum()):,}")
        if not table.empty:
            best = table.iloc[0]
            dashboard.interval_metric(cols[3], f"best top-1 · {best['name']}", best["top1"],
                                      [best["top1_low"], best["top1_high"]])
        elif is_demo:
            offer_demo("The demo dataset has no trained run yet.")
        else:
            st.info(dashboard.no_runs_message(root))

    links = st.columns(3)
    for i, (page, text) in enumerate(PAGE_TEXTS):
        with links[i % 3].container(border=True):
            st.page_link(page)
            st.caption(text)


def offer_demo(situation: str) -> None:
    """Build what the demo lacks (its dataset, its default runs) on request, showing progress."""
    st.info(f"{situation} The button below draws synthetic street scenes of 8 cities if needed "
            "and trains the default models on them, which takes a while on a laptop; "
            "`cityclf demo` does the same from a terminal.")
    if not st.button("Build the demo", type="primary"):
        return
    with st.status("Building the demo…", expanded=True) as status:
        bar = st.progress(0.0)

        def on_step(message: str, fraction: float) -> None:
            status.update(label=message.capitalize())
            bar.progress(fraction, text=message)

        from cityclf import demo  # imports TensorFlow: only when asked to train
        demo.build_demo(on_step, progress=False)
        status.update(label="Demo ready", state="complete")
    st.rerun()


HOME = st.Page(home, title="Home", icon=":material/home:", default=True)
PAGES = [  # file, title, icon, and what the page shows (on Home)
    ("pages/1_dataset.py", "Dataset", ":material/photo_library:",
     "Images per city and scene, thumbnails, capture metadata and GPS traces."),
    ("pages/2_leaderboard.py", "Leaderboard", ":material/leaderboard:",
     "Every run compared on the same test split; training curves, tuning, two runs side by side."),
    ("pages/3_errors.py", "Errors", ":material/grid_on:",
     "Confusion matrix with the images behind each cell, per-city scores, calibration."),
    ("pages/4_inside_the_model.py", "Inside the model", ":material/neurology:",
     "What the network looks at: its input, feature maps and kernels."),
    ("pages/5_predict.py", "Predict", ":material/photo_camera:",
     "Upload a photo and see the top cities."),
    ("pages/6_label.py", "Label", ":material/label:",
     "Rank your own photos by what a label would teach, label them in place, retrain in seconds."),
    ("pages/7_generated_streets.py", "Generated streets", ":material/auto_awesome:",
     "A class-conditional GAN's streets per city, how close they are to real ones, and whether "
     "they help."),
]
PAGE_TEXTS = [(st.Page(file, title=title, icon=icon), text) for file, title, icon, text in PAGES]


def public_pages() -> list:
    """The pages a visitor may open (cityclf.public.PAGES, in its order), the first as home."""
    found = {Path(file).name: (file, title, icon) for file, title, icon, _ in PAGES}
    return [st.Page(found[name][0], title=found[name][1], icon=found[name][2], default=not i)
            for i, name in enumerate(public.PAGES)]


published = public.public_run()
if published:
    dashboard.publish(published)
    current = st.navigation(public_pages(), position="top")
else:
    sidebar()
    current = st.navigation([HOME, *(page for page, _ in PAGE_TEXTS)], position="top")
if dashboard.RETURN_TO in st.session_state:  # see dashboard.require_sidebar
    st.switch_page(st.session_state.pop(dashboard.RETURN_TO))
current.run()
