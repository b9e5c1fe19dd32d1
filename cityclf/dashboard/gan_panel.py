"""The Generated streets page's logic: GAN runs of a dataset, their distance curve, their sample
grids and real images beside generated ones (cityclf.gan trains the runs).

Everything here reads a GAN run's files (run.json, history.csv, samples/); TensorFlow is
imported only when the user asks for new samples, so the page opens as fast as the others.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from ..datasets import DatasetError, dataset_id
from ..eda import tidy
from ..images import ImageError, load_rgb
from ..lite import preprocess
from ..runs import Run, RunError, gan_runs, gan_table
from . import formatting as fmt

GAP = 2  # px between the images of a grid (cityclf.gan.sheet)
MEAN = "mean over cities"


def gan_runs_table(root: str | Path) -> tuple[pd.DataFrame, dict[str, Run]]:
    """The GAN runs of the dataset at `root`, newest first, and each by id."""
    found = gan_runs(dataset_id(root))
    return gan_table(found), {run.id: run for run in found}


def no_gan_message(root: str | Path) -> str:
    """What to say, and which command to run, when the dataset has no GAN run yet."""
    return ("No GAN run of this dataset yet. Train one with "
            f"`cityclf gan train --data {root}` (about 20 minutes on 2 CPU cores at 64 px, "
            "`--steps` and `--batch-size` to scale it up on a GPU); it shows up here when done.")


def run_label(row: dict) -> str:
    return f"{row['name']} · {row['steps']} steps · {row['created']}"


def distance_table(run: Run) -> pd.DataFrame:
    """step, city, frechet: the distance of each city (and their mean) over training; the
    untrained generator's at step 0."""
    history, quality = run.history(), run.info["quality"]
    rows = [{"step": 0, "city": city, "frechet": value}
            for city, value in quality["untrained"]["per_city"].items()]
    rows.append({"step": 0, "city": MEAN, "frechet": quality["untrained"]["mean"]})
    if "frechet" in history:
        cities = [city for city in run.classes if f"frechet_{city}" in history]
        named = history.rename(columns={"frechet": MEAN, **{f"frechet_{c}": c for c in cities}})
        rows += named.melt(id_vars="step", value_vars=[*cities, MEAN], var_name="city",
                           value_name="frechet").to_dict("records")
    return pd.DataFrame(rows, columns=["step", "city", "frechet"]).dropna()


def fig_distance(table: pd.DataFrame, floor: float | None, ceiling: float | None) -> go.Figure:
    """Each city's Fréchet distance over training (the mean bold), with the floor (two halves of
    the real training images) and the ceiling (the untrained generator) as dashed lines."""
    fig = px.line(table, x="step", y="frechet", color="city", markers=True,
                  labels={"frechet": "Fréchet distance (MobileNetV2)", "step": "training step"})
    fig.for_each_trace(lambda trace: trace.update(line={"width": 4 if trace.name == MEAN else 1}))
    for value, text in ((floor, "floor: real vs real"), (ceiling, "untrained generator")):
        if value is not None:
            fig.add_hline(y=value, line_dash="dash", annotation_text=text)
    return tidy(fig, 420)


def distance_caption(run: Run) -> str:
    """What the distance is, and what it can be compared with."""
    size, counts = run.info["preprocess"]["img_size"], run.info["quality"]["n_per_city"].values()
    return ("Fréchet distance between each city's generated images and its real held-out "
            "(validation) images, on the offline MobileNetV2's 1280-d embeddings, both at "
            f"{size} px enlarged to 224 px: lower is closer. It is not the Inception FID of the "
            f"literature. With {min(counts)}–{max(counts)} held-out images per city it is biased "
            "upwards: read it against the floor, two halves of the real training images at the "
            "same number of images.")


def sample_steps(run: Run) -> list[int]:
    """Training steps at which a sample grid was saved (samples/step-NNNNNN.jpg)."""
    return sorted(int(p.stem.split("-")[1]) for p in (run.path / "samples").glob("step-*.jpg"))


def grid_rows(run: Run, step: int) -> dict[str, np.ndarray]:
    """City -> its row of the sample grid saved at `step` (one row per city, in run order);
    empty when the file cannot be read."""
    try:
        with Image.open(run.path / "samples" / f"step-{step:06d}.jpg") as file:
            picture = np.asarray(file.convert("RGB"))
    except OSError:
        return {}
    size = run.info["preprocess"]["img_size"]
    return {city: picture[i * (size + GAP):i * (size + GAP) + size]
            for i, city in enumerate(run.classes)}


@st.cache_data(show_spinner="Drawing streets…", max_entries=32)
def _generated(run_path: str, stamp: int, city: str, n: int, seed: int) -> np.ndarray:
    from ..gan import sample  # TensorFlow: only when new images are asked for
    return sample(Run(Path(run_path)), city, n, seed)


def show_generated(run: Run, city: str, n: int, seed: int) -> None:
    """n new generated images of `city` (cached per seed), or why there are none."""
    from ..gan import GENERATOR_FILE
    file = run.path / GENERATOR_FILE
    try:
        images = _generated(str(run.path), file.stat().st_mtime_ns, city, n, seed)
    except (RunError, OSError) as err:
        st.warning(f"{err}. Pick another GAN run, or train one again.")
        return
    st.image(list(images), width=2 * run.info["preprocess"]["img_size"])


def show_real(root: str, run: Run, city: str, n: int, seed: int) -> None:
    """Up to n training images of `city`, as the GAN sees them: the whole frame squeezed to
    its size (numpy preprocessing, no TensorFlow), shown twice as large."""
    from .loaders import split_images  # the loaders import TensorFlow (through inference)
    size = run.info["preprocess"]["img_size"]
    try:
        table = split_images(root, run, "train")
    except (DatasetError, OSError) as err:
        st.warning(f"The training images cannot be read: {err}")
        return
    paths = table.loc[table["city"] == city, "path"]
    images = []
    for path in paths.sample(min(n, len(paths)), random_state=seed):
        try:
            images.append(np.round(preprocess(load_rgb(path), size)).astype(np.uint8))
        except ImageError:
            continue
    if images:
        st.image(images, width=2 * size)
    else:
        st.info(f"No readable training image of {city}.")


def show_scores(run: Run) -> None:
    """The run's final distance against its floor and ceiling, and whether a classifier
    recognises the generated cities, as metrics with one-line explanations."""
    quality = run.info["quality"]
    final, floor, ceiling = (quality[k]["mean"] for k in ("final", "floor", "untrained"))
    cols = st.columns(4)
    cols[0].metric("Fréchet distance, trained", _number(final),
                   help="Mean over cities of the distance between generated and real held-out "
                        "(validation) images, on MobileNetV2 embeddings: not the Inception FID.")
    cols[1].metric("floor: real vs real", _number(floor),
                   help="Two halves of the real training images, at the same number of images: "
                        "what a perfect generator would score.")
    cols[2].metric("ceiling: untrained", _number(ceiling),
                   help="The generator before training.")
    recognised = quality.get("classifier") or {}
    if "generated" in recognised:
        cols[3].metric("classifier top-1 on generated", fmt.share(recognised["generated"]["mean"]),
                       help=f"Run {recognised['run']}: its top-1 on generated images of each "
                            f"city; on real test images at the GAN's size it scores "
                            f"{fmt.share(recognised['real']['mean'])}.")
    else:
        cols[3].metric("classifier top-1 on generated", fmt.MISSING,
                       help=recognised.get("error", "not measured"))


def _number(value) -> str:
    return fmt.MISSING if value is None else f"{float(value):.1f}"
