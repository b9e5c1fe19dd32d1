"""Generated streets: a class-conditional GAN's streets per city."""
import streamlit as st

from cityclf import dashboard

dashboard.require_sidebar(__file__)
st.title("Generated streets")
st.info("Not built yet: `cityclf gan train --data ROOT` will train one.")
