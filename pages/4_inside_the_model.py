"""Inside the model: what a network sees of one photo, layer by layer, and the kernels it learnt."""
from pathlib import Path

import numpy as np
import streamlit as st

from cityclf import dashboard, inspect_model
from cityclf.datasets import DatasetError
from cityclf.images import ImageError, load_rgb
from cityclf.inference import prepare_image, run_preprocess

dashboard.require_sidebar(__file__)

CHANNELS_SHOWN = 32
MAP_PX = 96  # a feature map tile; the row of tiles wraps to the column
KERNEL_PX = 48


def chosen_photo(run) -> tuple[str, np.ndarray] | None:
    """(title, RGB) of an uploaded photo, else of the picked test image."""
    upload = st.file_uploader("Look at your own photo", type=["jpg", "jpeg", "png", "webp"],
                              key="inspect_upload")
    if upload is not None:
        try:
            return upload.name, load_rgb(upload)
        except ImageError as err:
            st.error(str(err))
            return None
    root = st.session_state[dashboard.DATASET_ROOT]
    try:
        table = dashboard.split_images(root, run)
    except DatasetError as err:
        st.warning(f"No test images to pick from: {err}")
        return None
    if not len(table):
        st.info("The dataset has no test images; upload a photo instead.")
        return None
    cities = dict(zip(table["path"], table["city"]))
    path = st.selectbox("…or a test image", list(cities), key="inspect_sample",
                        format_func=lambda p: f"{cities[p]} · {Path(p).name}")
    try:
        return f"{Path(path).name} (taken in {cities[path]})", load_rgb(path)
    except ImageError as err:
        st.error(str(err))
        return None


st.title("Inside the model")
run = dashboard.chosen_run()
predictor = dashboard.model_or_stop(run, fast=False)
reason = inspect_model.not_a_network(predictor)
if reason:
    st.info(f"{reason} The Predict page still explains its answers: LIME treats every model as "
            "a black box.")
    st.stop()
model = predictor.model
pre = run_preprocess(run)
st.write(f"Model **{run.info['model']}** at {pre.img_size} px.")

photo = chosen_photo(run)
if photo is None:
    st.stop()
title, rgb = photo
image = prepare_image(rgb, pre)
steps = ([f"bottom {pre.crop_bottom:.0%} cut off"] if pre.crop_bottom else []) + \
    (["greyscale"] if pre.grayscale else []) + [f"resized to {pre.img_size}×{pre.img_size}"]
layers = dict(inspect_model.conv_layers(model))
original, seen, note = st.columns(3, gap="medium")
original.image(rgb, width="stretch", caption=title)
seen.image(image.astype(np.uint8), width="stretch",
           caption=f"As the model sees it: {', '.join(steps)}")
note.write(f"The network passes this image through {len(layers)} convolutional layers. Each "
           "turns its input into a stack of feature maps, one per filter it learnt: pick a "
           "layer below to see them, from edges near the input to city-level patterns near the "
           "output.")

st.header("Feature maps")
layer = st.select_slider(
    "Convolutional layer, shallow to deep", list(layers), key="inspect_layer",
    format_func=lambda name: f"{name} · {'×'.join(map(str, layers[name]))}")
height, width, channels = layers[layer]
maps = inspect_model.feature_maps(model, layer, image)
active = inspect_model.most_active(maps, CHANNELS_SHOWN)
ranked = channels > CHANNELS_SHOWN
if not ranked:  # every channel fits: show them in their own order
    active = sorted(active)
st.image(inspect_model.feature_map_tiles(maps, active, tile=MAP_PX), width=MAP_PX,
         caption=[f"#{c}" for c in active])
st.caption((f"The {len(active)} most active of {channels} channels for this image (highest mean "
            "activation first)" if ranked else f"All {channels} channels") +
           f", {height}×{width} each, each stretched from its own minimum (black) to maximum "
           "(white). Shallow layers respond to edges and colours; deep ones to larger patterns, "
           "at coarser resolution.")

st.header("Kernels")
note = inspect_model.kernel_note(model, layer, len(active))
if inspect_model.is_pointwise(model, layer):
    st.plotly_chart(dashboard.fig_mixing(inspect_model.mixing_weights(model, layer, active),
                                         active), key="inspect_mixing")
    st.caption(f"{layer}: {note}. The rows are the channels shown above.")
else:
    pictures = inspect_model.kernel_images(model, layer, active, tile=KERNEL_PX)
    st.image(pictures, width=pictures[0].shape[1],
             caption=[f"#{c}" for c in active])
    st.caption(f"{layer}: {note}, the filters of the channels shown above. Each is scaled to "
               "its own largest weight: mid-grey is 0, brighter positive, darker negative.")
