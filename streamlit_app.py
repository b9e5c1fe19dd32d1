"""cityclf dashboard: which city was this street photo taken in, and why?"""
import streamlit as st

from cityclf import config
from cityclf.datasets import DatasetError, scan

st.set_page_config(page_title="cityclf", page_icon="🏙️", layout="wide")
st.title("cityclf")
st.write("Tells which city a street-level photo was taken in, with no GPS, by deep transfer "
         "learning — and shows why.")


@st.cache_data(show_spinner="Reading the dataset…")
def dataset_summary(root: str):
    dataset = scan(root, progress=False)
    return dataset.summary(), len(dataset.manifest), len(dataset.skipped)


demo = config.demo_dir()
try:
    summary, n_images, n_skipped = dataset_summary(str(demo))
except DatasetError:
    st.info(f"No demo dataset yet at `{demo}`. Build it with `cityclf demo` (or `make app`).")
else:
    st.subheader("Demo dataset")
    cols = st.columns(3)
    cols[0].metric("images", f"{n_images:,}")
    cols[1].metric("cities", len(summary))
    cols[2].metric("sequences", f"{int(summary['sequences'].sum()):,}")
    st.dataframe(summary, width="stretch")
