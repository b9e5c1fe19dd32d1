"""Dataset EDA: what the images are, per city, scene, time of capture and place."""
import streamlit as st

from cityclf import dashboard, eda

dashboard.require_sidebar(__file__)

ANY = "any"

st.title("Dataset")
dataset = dashboard.chosen_dataset()
manifest = dataset.manifest
summary = dataset.summary()
st.caption(f"`{dataset.root}` · {dataset.layout} layout")
cols = st.columns(4)
cols[0].metric("images", f"{len(manifest):,}")
cols[1].metric("cities", len(summary))
cols[2].metric("sequences", f"{int(summary['sequences'].sum()):,}")
cols[3].metric("files skipped", f"{len(dataset.skipped):,}",
               help="Files under the root that are not images or could not be read.")
if len(dataset.skipped):
    with st.expander(f"The {len(dataset.skipped):,} skipped files"):
        st.dataframe(dataset.skipped, hide_index=True)
if dataset.problems:
    st.warning("\n".join(f"- {note}" for note in dataset.problems))

left, right = st.columns(2)
with left:
    st.subheader("Images per city")
    st.plotly_chart(eda.fig_city_counts(summary))
with right:
    st.subheader("Scene types per city")
    scenes = eda.scene_counts(manifest)
    if scenes.empty:
        st.info(f"Scene tags not computed yet: `cityclf data scenes {dataset.root}`")
    else:
        st.plotly_chart(eda.fig_scene_counts(scenes))

st.subheader("Browse the images")
filters = st.columns(4)
city = filters[0].selectbox("City", [ANY, *dataset.cities], key="eda_city")
scene = filters[1].selectbox("Scene", [ANY, *scenes.columns], key="eda_scene",
                             disabled=scenes.empty)
night = filters[2].selectbox("Time", [ANY, "day", "night"], key="eda_night",
                             disabled=not eda.has(manifest, "night"))
panel = filters[3].selectbox("Control panel", [ANY, "in view", "not in view"], key="eda_panel",
                             disabled=not eda.has(manifest, "control_panel"))
shown = eda.filter_images(manifest, city=None if city == ANY else city,
                          scene=None if scene == ANY else scene,
                          night=None if night == ANY else night == "night",
                          control_panel=None if panel == ANY else panel == "in view")
st.caption(f"{len(shown):,} images match.")
dashboard.image_grid(shown, eda.image_caption, key="eda_page")

st.subheader("Capture metadata")
counts = eda.metadata_counts(manifest)
recorded = {name: table for name, table in counts.items() if len(table)}
for start in range(0, len(recorded), 3):
    for col, (name, table) in zip(st.columns(3), list(recorded.items())[start:start + 3]):
        col.plotly_chart(eda.fig_counts(name, table))
missing = [name for name, table in counts.items() if not len(table)]
if missing:
    st.caption(f"Not recorded in this dataset: {', '.join(missing)}.")

st.subheader("Where the images were taken")
centres = eda.city_centres(manifest)
if centres.empty:
    st.info("This dataset records no GPS positions (MSLS test cities and folder-per-city "
            "datasets have none).")
else:
    where = st.selectbox("City", ["all cities", *centres["city"]], key="eda_gps_city")
    if where == "all cities":
        st.plotly_chart(eda.fig_city_centres(centres))
    else:
        st.plotly_chart(eda.fig_gps(eda.gps_points(manifest, where)))
        st.caption("One colour per sequence: each is a short drive.")
