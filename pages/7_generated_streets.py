"""Generated streets: a class-conditional GAN's streets per city, how close they come to real
ones as it trains, and real images beside generated ones."""
import streamlit as st

from cityclf import dashboard
from cityclf.dashboard import gan_panel

dashboard.require_sidebar(__file__)
SHOWN = 8  # images per city in each row

st.title("Generated streets")
root = st.session_state[dashboard.DATASET_ROOT]
table, found = gan_panel.gan_runs_table(root)
if table.empty:
    st.info(gan_panel.no_gan_message(root))
    st.stop()
labels = {row["run_id"]: gan_panel.run_label(row) for row in table.to_dict("records")}
run = found[st.selectbox("GAN run", list(labels), format_func=labels.get, key="gan_run")]
size = run.info["preprocess"]["img_size"]
st.write(f"A class-conditional GAN trained on the {run.info['split']['counts']['train']:,} "
         f"training images of this dataset at {size}×{size} px; none of these streets exists.")
gan_panel.show_scores(run)

st.header("Distance to real streets over training")
quality = run.info["quality"]
st.plotly_chart(gan_panel.fig_distance(gan_panel.distance_table(run), quality["floor"]["mean"],
                                       quality["untrained"]["mean"]), key="gan_distance")
st.caption(gan_panel.distance_caption(run))

st.header("Samples per city")
steps = gan_panel.sample_steps(run)
if steps:
    step = st.select_slider("Training step", steps, value=steps[-1], key="gan_step") \
        if len(steps) > 1 else steps[0]
    for city, row in gan_panel.grid_rows(run, step).items():
        st.image(row, caption=city)
    st.caption("Each image keeps its noise from step to step: move the slider to watch the same "
               "street take shape.")

st.header("Real beside generated")
city_col, seed_col = st.columns(2)
city = city_col.selectbox("City", run.classes, key="gan_city")
seed = seed_col.number_input("Draw", min_value=0, value=0, step=1, key="gan_seed",
                             help="Another number draws other generated and real images.")
real_col, fake_col = st.columns(2)
with real_col:
    st.subheader("Real (training images)")
    gan_panel.show_real(root, run, city, SHOWN, int(seed))
with fake_col:
    st.subheader("Generated")
    gan_panel.show_generated(run, city, SHOWN, int(seed))
st.caption(f"Both at {size}×{size} px, the whole frame squeezed square as the GAN sees it, shown "
           "twice as large.")
