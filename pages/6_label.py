"""Label: rank your own photos by what a label would teach, label them in place, retrain."""
import streamlit as st

from cityclf import dashboard
from cityclf.dashboard import label_panel

dashboard.require_sidebar(__file__)

st.title("Label")
st.write("Bring a folder of your own street photos. The run ranks them by what a label would "
         "teach it (photos it is unsure of, from different streets), you give each its city with "
         "a click or a number key, and **Update the model** retrains the run's head with your "
         "labels in seconds, as a new run.")

run = dashboard.chosen_run()
if not run.info.get("transfer"):
    st.info(f"{run.info.get('name') or run.id} has no pretrained backbone whose head could be "
            "retrained: pick a transfer run (MobileNetV2, EfficientNet, the default recipe) in the "
            "sidebar.")
    st.stop()

pool = label_panel.pool_picker()
if pool is None:
    st.stop()
if label_panel.pool_view(run, pool) is None:  # embeds and checks new photos, with progress
    st.stop()

st.subheader("Label your photos")
label_panel.labelling(run, pool)

st.subheader("Update the model")
label_panel.update_section(run, pool)

with st.expander("Labels given"):
    labels = pool.labels()
    st.caption(f"Saved as they are given in {pool.labels_file}; `cityclf pool labels "
               f"{pool.folder}` prints them.")
    st.dataframe(labels.iloc[::-1], hide_index=True, width="stretch")
    st.download_button("Download labels.csv", labels.to_csv(index=False), "labels.csv",
                       mime="text/csv", key="label_download")
