"""Dataset EDA: what the images are, per city, scene, time of capture and place."""
from pathlib import Path

import streamlit as st

from cityclf import dashboard, eda

dashboard.require_sidebar(__file__)

ANY = "any"


def problem(what: str, err: Exception, command: str) -> None:
    st.warning(f"{what} ({err.__class__.__name__}: {err}). Try `{command}`.")


def run_job(running: str, note: str, job, done, failed: str, what: str, command: str) -> bool:
    """`job()` behind an expanded status box, labelled `done(result)` when it ends; a failure is
    labelled `failed` and explained (`what`, and the command to run instead), never raised:
    a job that breaks must not take the page down. True when the job succeeded."""
    with st.status(running, expanded=True) as status:
        try:
            st.write(note)
            result = job()
        except Exception as err:
            status.update(label=failed, state="error")
            problem(what, err, command)
            return False
        status.update(label=done(result), state="complete")
        return True

st.title("Dataset")
dataset = dashboard.chosen_dataset()
try:
    manifest = dashboard.manifest_with_split(dataset)  # + scene tags once they exist, + split
except Exception as err:  # an unreadable tag or split file must not hide the dataset
    st.warning(f"The scene tags or the split could not be read ({err.__class__.__name__}: "
               f"{err}). Tag again with `cityclf data scenes {dataset.root}`, split again with "
               f"`cityclf data split {dataset.root}`.")
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

scenes = eda.scene_counts(manifest)
splits = [s for s in dashboard.SPLIT_ORDER if s in set(manifest.get("split", []))]
with st.container(border=True):
    st.markdown("**Filters** · every chart and grid below shows only the images that match")
    filters = st.columns(5)
    city = filters[0].selectbox("City", [ANY, *dataset.cities], key="eda_city")
    split = filters[1].selectbox(
        "Split", [ANY, *splits], key="eda_split", disabled=not splits,
        help="The dataset's sequence split, which every run of it is tested on: no sequence in "
             "two splits. unused: left out by per-city sampling."
             if splits else "Not split yet: the first `cityclf train` (or `cityclf data split`) "
                            "splits it.")
    scene = filters[2].selectbox("Scene", [ANY, *scenes.columns], key="eda_scene",
                                 disabled=scenes.empty)
    night = filters[3].selectbox("Time", [ANY, "day", "night"], key="eda_night",
                                 disabled=not eda.has(manifest, "night"))
    panel = filters[4].selectbox("Control panel", [ANY, "in view", "not in view"],
                                 key="eda_panel", disabled=not eda.has(manifest, "control_panel"))
    shown = dashboard.filter_images(manifest, split=None if split == ANY else split,
                                    city=None if city == ANY else city,
                                    scene=None if scene == ANY else scene,
                                    night=None if night == ANY else night == "night",
                                    control_panel=None if panel == ANY else panel == "in view")
    st.caption(f"{len(shown):,} images match.")


def caption(row: dict) -> str:
    return eda.image_caption(row) + (f" · {row['split']}" if row.get("split") in splits else "")


left, right = st.columns(2)
with left:
    st.subheader("Images per city and split")
    if shown.empty:
        st.info("No image matches the filters.")
    else:
        st.plotly_chart(dashboard.fig_split_counts(shown))
with right:
    st.subheader("Scene types per city (estimated)")
    if scenes.empty:
        st.info(f"Scene tags not computed yet: `cityclf data scenes {dataset.root}` "
                "(or the button below; about a minute on the demo).")
        def tag():
            from cityclf.scenes import tag_scenes  # imports TensorFlow: only when asked
            return tag_scenes(dataset, progress=False)

        if st.button("Tag scenes", key="eda_tag_scenes"):
            if run_job("Tagging scenes…",
                       "Embedding every image with MobileNetV2 and scoring scene cues…", tag,
                       lambda tagged: f"Tagged {len(tagged):,} images", "Tagging failed",
                       "The scenes could not be tagged", f"cityclf data scenes {dataset.root}"):
                st.rerun()  # the tag file's mtime keys the cached manifest
    elif eda.scene_counts(shown).empty:
        st.info("No tagged image matches the filters.")
    else:
        st.plotly_chart(eda.fig_scene_counts(eda.scene_counts(shown)))
        st.caption("Estimated scene types: the tagger's weights are fitted on the synthetic "
                   "demo's drawings, so on real photos read them as a rough guide.")

st.subheader("Browse the images")
dashboard.image_grid(shown, caption, key="eda_page")

st.subheader("Capture metadata")
counts = eda.metadata_counts(shown)
recorded = {name: table for name, table in counts.items() if len(table)}
for start in range(0, len(recorded), 3):
    for col, (name, table) in zip(st.columns(3), list(recorded.items())[start:start + 3]):
        col.plotly_chart(eda.fig_counts(name, table))
missing = [name for name, table in eda.metadata_counts(manifest).items() if not len(table)]
if missing:
    st.caption(f"Not recorded in this dataset: {', '.join(missing)}.")
if len(recorded) < len(counts) - len(missing):
    st.caption("Some fields are recorded for none of the images that match the filters.")

st.subheader("Where the images were taken")
centres = eda.city_centres(shown)
if eda.city_centres(manifest).empty:
    st.info("This dataset records no GPS positions (MSLS test cities and folder-per-city "
            "datasets have none).")
elif centres.empty:
    st.info("No image that matches the filters has a GPS position.")
else:
    where = st.selectbox("City", ["all cities", *centres["city"]], key="eda_gps_city")
    if where == "all cities":
        st.plotly_chart(eda.fig_city_centres(centres))
    else:
        st.plotly_chart(eda.fig_gps(eda.gps_points(shown, where)))
        st.caption("One colour per sequence: each is a short drive.")

st.subheader("Data quality, the embedding map and label issues")
quality_tab, map_tab, issues_tab = st.tabs(["Data quality", "Embedding map", "Label issues"])


with quality_tab:
    quality_command = f"cityclf data quality {dataset.root}"
    try:
        report = dashboard.read_quality(dataset)
    except Exception as err:
        problem("The quality report could not be read", err, quality_command)
        report = None
    if report is None:
        st.info("No quality report yet: dark, bright, blurred or uniform images, outliers an "
                f"autoencoder finds, and near-duplicates across splits. `{quality_command}`, or "
                "the button (about 40 s on the demo).")
        def check():
            from cityclf.quality import quality_report
            return quality_report(dataset, progress=False)

        if st.button("Check data quality", key="eda_check_quality"):
            if run_job("Checking data quality…", "Rule checks, an autoencoder, perceptual hashes…",
                       check,
                       lambda checked: f"Checked {len(checked):,} images",
                       "The quality check failed", "The quality check failed", quality_command):
                st.rerun()
    else:
        from cityclf.quality import FLAGS, flag_reasons

        counts = eda.flag_counts(report, shown)
        st.markdown("**Flagged images per city**")
        st.dataframe(counts, key="eda_flag_counts")
        if counts.drop(columns="images").to_numpy().any():
            st.plotly_chart(eda.fig_flag_counts(counts))
        st.caption("Rule flags are fixed thresholds; `outlier` is the 2 % an autoencoder "
                   "reconstructs worst; `duplicates` / `leaks`: images with a near-identical "
                   "image in another sequence / another split.")

        st.markdown("**Images the rules flag**")
        flagged = {flag: int(counts[flag].sum()) for flag in [*FLAGS, "unreadable"]
                   if flag in counts and counts[flag].sum()}
        if not flagged:
            st.caption("No image breaks a rule.")
        else:
            kind = st.selectbox("Flag", list(flagged), key="eda_flag_kind",
                                format_func=lambda f: f"{f} ({flagged[f]})")
            st.caption(f"Images flagged {kind}, with the measurement that decided it.")
            dashboard.image_grid(eda.flagged_images(report, shown, kind, flag_reasons),
                                 eda.quality_caption, key="eda_flag_page")

        st.markdown("**Autoencoder outliers: original and reconstruction**")
        worst = eda.top_outliers(dashboard.within(report, shown), n=8)
        if worst.empty:
            st.caption("No reconstruction error recorded.")
        else:
            try:
                originals, rebuilt, paths = dashboard.outlier_reconstructions(dataset,
                                                                              worst["path"])
            except Exception as err:
                problem("The reconstructions could not be drawn", err, quality_command)
            else:
                error = dict(zip(worst["path"], worst["reconstruction_error"]))
                st.caption(f"The {len(paths)} images reconstructed worst, each original beside "
                           "its reconstruction (at the autoencoder's 64 px).")
                images, captions = [], []
                for original, copy, path in zip(originals, rebuilt, paths):
                    name = Path(path).stem
                    images += [original, copy]
                    captions += [f"{name} · error {error.get(path, float('nan')):.4f}",
                                 "reconstruction"]
                st.image(images, caption=captions, width=128)

        st.markdown("**Near-duplicates**")
        try:
            pairs = dashboard.within(dashboard.duplicate_pairs(dataset), shown,
                                     "path_a", "path_b")
        except Exception as err:
            problem("The near-duplicates could not be found", err, quality_command)
        else:
            if pairs.empty:
                st.caption("No near-duplicate pairs.")
            else:
                from cityclf.quality import duplicate_counts
                table = duplicate_counts(pairs)
                st.dataframe(eda.style_duplicate_counts(table), hide_index=True,
                             key="eda_duplicate_counts")
                leaks = table.loc[table["cross_split"], "pairs"].sum()
                if leaks:
                    st.warning(f"{int(leaks):,} near-duplicate pairs lie in two splits "
                               "(highlighted): test accuracy is flattered by them.")
                else:
                    st.caption("No near-duplicate crosses a split; consecutive frames of one "
                               "sequence are expected to look alike.")
                for row in eda.example_pairs(pairs, 4).to_dict("records"):
                    thumbs = [dashboard.thumbnail(row["path_a"]), dashboard.thumbnail(row["path_b"])]
                    if all(t is not None for t in thumbs):
                        st.image(thumbs, caption=[Path(row["path_a"]).stem,
                                                  Path(row["path_b"]).stem],
                                 width=dashboard.THUMBNAIL_PX)
                        st.caption(eda.pair_caption(row))

with map_tab:
    st.caption("MobileNetV2 (ImageNet) embeddings of up to 2,000 images, flattened to 2-D: "
               "similar images land close together. Select points (click, box or lasso) to see "
               "their images below.")
    options = st.columns(2)
    method = options[0].radio("Projection", ["pca", "tsne"], horizontal=True, key="eda_map_method",
                              format_func=lambda m: {"pca": "PCA (fast)", "tsne": "t-SNE"}[m])
    colour = options[1].radio("Colour by", ["city", "scene"], horizontal=True,
                              key="eda_map_colour", disabled=scenes.empty)
    drawn = st.session_state.setdefault("eda_maps_drawn", set())
    wanted = (str(dataset.root), method)
    if wanted not in drawn and st.button("Draw the embedding map", key="eda_draw_map"):
        if run_job("Embedding the images…",
                   "The first time, every sampled image goes through MobileNetV2 (30–60 s on the "
                   "demo); later maps reuse the cached embeddings.",
                   lambda: dashboard.embedding_map_table(dataset, method),
                   lambda points: "Embedded", "The map failed",
                   "The embedding map could not be drawn", f"cityclf data scan {dataset.root}"):
            drawn.add(wanted)
    if wanted in drawn:
        try:
            points = dashboard.within(dashboard.embedding_map_table(dataset, method), shown)
        except Exception as err:
            problem("The embedding map could not be drawn", err, f"cityclf data scan {dataset.root}")
        else:
            event = st.plotly_chart(eda.fig_embedding_map(points, colour), on_select="rerun",
                                    selection_mode=("points", "box", "lasso"),
                                    key=f"eda_map_{method}")
            chosen = eda.selected_paths(event)
            if chosen:
                picked = points[points["path"].isin(chosen)] \
                    .merge(manifest[["path", "key"]], on="path", how="left")
                st.caption(f"{len(picked):,} selected images.")
                dashboard.image_grid(picked, lambda row: f"{row['city']} · {row['key']}",
                                     key="eda_map_page")
            else:
                st.caption(f"{len(points):,} images. Select points to see them.")

with issues_tab:
    from cityclf import label_issues
    run_id = st.session_state.get(dashboard.RUN_ID)
    run = dashboard.chosen_run() if run_id else None
    if run is None or not run.info.get("transfer"):
        st.info("Likely mislabelled images are found with a transfer run's embeddings: pick one "
                "of this dataset in the sidebar (MobileNetV2, EfficientNet, the default recipe).")
    else:
        whole = st.toggle("Whole sequences filed under the wrong city", key="issues_whole",
                          help="Folds of whole sequences: finds a folder filed under the wrong "
                               "city, with more false alarms from a weak model.")
        by = "sequence" if whole else "image"
        issues = label_issues.read_label_issues(run, by)
        command = f"cityclf data label-issues {dataset.root} --run {run.id}"
        if issues is None and st.button("Find likely mislabelled images", key="issues_find"):
            if run_job("Looking for label issues…",
                       "Confident learning (cleanlab) on out-of-fold answers of the run's head; "
                       "the first time, every training image is embedded by the run.",
                       lambda: label_issues.run_label_issues(run, by, progress=False),
                       lambda found: f"{len(found)} likely mislabelled images",
                       "The search failed", "Label issues could not be found", command):
                issues = label_issues.read_label_issues(run, by)
        if issues is None:
            st.caption(f"Not searched yet with {run.info.get('name') or run.id}; or `{command}`.")
        elif issues.empty:
            st.success("No likely mislabelled training image.")
        else:
            cards = label_issues.by_sequence(issues)
            st.caption(f"{len(issues):,} likely mislabelled images in {len(cards):,} sequences, "
                       "likeliest first; one card per sequence.")
            dashboard.image_grid(cards, lambda row: row["caption"], key="issues_page")
