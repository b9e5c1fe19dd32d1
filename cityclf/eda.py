"""Exploratory views of a dataset: a manifest table in, small tables and plotly figures out.

Everything here takes the manifest of `cityclf.datasets` (or `Dataset.summary()`), so the same views
work on MSLS, folder-per-city trees and the demo. A field a dataset lacks (no GPS, no capture time,
no scene tags yet) gives an empty result, never an error: the page says what is missing instead.
Figures are plain plotly (no map tiles), so they render offline.
"""
from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

SCENE = "scene"  # filled in by a scene tagger; used wherever present
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
FLAG_LABELS = {"night": {True: "night", False: "day"},
               "control_panel": {True: "dashboard in view", False: "no dashboard"}}


def has(manifest: pd.DataFrame, column: str) -> bool:
    """Whether the dataset records `column` for at least one image."""
    return column in manifest and bool(manifest[column].notna().any())


def fig_city_counts(summary: pd.DataFrame) -> go.Figure:
    """Images per city as bars, sequences in the hover: is the dataset balanced?"""
    table = summary.reset_index()
    fig = px.bar(table, x="city", y="images", hover_data=["sequences"], text="images")
    fig.update_traces(textposition="outside", cliponaxis=False)
    return tidy(fig, height=320)


def scene_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per city (rows) and scene type (columns); empty until scenes are tagged."""
    if not has(manifest, SCENE):
        return pd.DataFrame()
    tagged = manifest[manifest[SCENE].notna()]
    return pd.crosstab(tagged["city"], tagged[SCENE])


def fig_scene_counts(counts: pd.DataFrame) -> go.Figure:
    """Stacked bars of scene types per city: which cities are mostly highway, park, centre."""
    long = counts.reset_index().melt(id_vars="city", var_name="scene", value_name="images")
    return tidy(px.bar(long, x="city", y="images", color="scene"), height=340)


def filter_images(manifest: pd.DataFrame, city: str | None = None, scene: str | None = None,
                  night: bool | None = None, control_panel: bool | None = None) -> pd.DataFrame:
    """The images matching every given condition (None: any value)."""
    keep = pd.Series(True, index=manifest.index)
    for column, wanted in (("city", city), (SCENE, scene), ("night", night),
                           ("control_panel", control_panel)):
        if wanted is not None:
            keep &= (manifest[column] == wanted).fillna(False).astype(bool)
    return manifest[keep]


def image_caption(row: dict) -> str:
    """City, file and the conditions worth knowing when looking at a thumbnail."""
    parts = [str(row["city"]), str(row["key"])]
    if pd.notna(row.get(SCENE)):
        parts.append(str(row[SCENE]))
    parts += [labels[True] for column, labels in FLAG_LABELS.items()
              if pd.notna(row.get(column)) and bool(row[column])]
    return " · ".join(parts)


def metadata_counts(manifest: pd.DataFrame) -> dict[str, pd.Series]:
    """The distributions the MSLS paper shows, as counts per value; the series name is the unit.

    A field the dataset lacks gives an empty series, so the page can say what is not recorded.
    """
    when = manifest["captured_at"]
    values = {
        "hour of capture": pd.Categorical(when.dt.hour, categories=range(24)),
        "month": pd.Categorical(when.dt.month.map(lambda m: MONTHS[int(m) - 1], na_action="ignore"),
                                categories=MONTHS),
        "year": when.dt.year,
        "view direction": manifest["view_direction"],
        "night": manifest["night"].map(FLAG_LABELS["night"], na_action="ignore"),
        "control panel": manifest["control_panel"].map(FLAG_LABELS["control_panel"],
                                                       na_action="ignore"),
    }
    # Hours and months list every value, even those with no image, unless all are empty.
    counts = {name: pd.Series(column).dropna().value_counts().sort_index().rename("images")
              for name, column in values.items()}
    counts = {name: table if table.any() else table.iloc[:0] for name, table in counts.items()}
    lengths = manifest.groupby("sequence_key").size()  # missing keys are dropped
    counts["frames per sequence"] = lengths.value_counts().sort_index().rename("sequences")
    return counts


def fig_counts(name: str, counts: pd.Series) -> go.Figure:
    """One metadata distribution as bars (categories in the order given)."""
    fig = px.bar(x=[str(v) for v in counts.index], y=counts.to_numpy(),
                 labels={"x": "", "y": counts.name}, title=name)
    fig.update_xaxes(type="category")
    return tidy(fig, height=260)


def gps_points(manifest: pd.DataFrame, city: str, limit: int = 5000) -> pd.DataFrame:
    """A city's images with coordinates, at most `limit` of them, sampled evenly."""
    points = manifest[manifest["lat"].notna() & manifest["lon"].notna()
                      & (manifest["city"] == city)]
    return points.sample(limit, random_state=0) if len(points) > limit else points


def city_centres(manifest: pd.DataFrame) -> pd.DataFrame:
    """Mean position and number of located images per city: the world view of a dataset."""
    located = manifest[manifest["lat"].notna() & manifest["lon"].notna()]
    return located.groupby("city").agg(lat=("lat", "mean"), lon=("lon", "mean"),
                                       images=("path", "size")).reset_index()


def fig_city_centres(centres: pd.DataFrame) -> go.Figure:
    """Cities as labelled dots on longitude/latitude axes, sized by their located images."""
    fig = px.scatter(centres, x="lon", y="lat", text="city", size="images", size_max=24,
                     labels={"lon": "longitude", "lat": "latitude"})
    fig.update_traces(textposition="top center")
    fig.update_xaxes(range=[-180, 180])
    fig.update_yaxes(range=[-90, 90], scaleanchor="x")
    return tidy(fig, height=480)


def fig_gps(points: pd.DataFrame) -> go.Figure:
    """One city's images on equal-distance lon/lat axes, a colour per sequence: its drives."""
    fig = px.scatter(points, x="lon", y="lat", color="sequence_key", hover_data=["key"],
                     labels={"lon": "longitude", "lat": "latitude"})
    fig.update_traces(marker={"size": 6, "opacity": 0.8})
    # One degree of longitude is cos(latitude) as long as one of latitude.
    stretch = 1 / max(0.1, math.cos(math.radians(points["lat"].mean())))
    fig.update_yaxes(scaleanchor="x", scaleratio=stretch)
    fig.update_layout(showlegend=False)
    return tidy(fig, height=480)


def tidy(fig: go.Figure, height: int) -> go.Figure:
    """The dashboard's chart frame: a fixed height and thin margins."""
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# ------------------------------------------------------------------ data quality, embedding map

QUALITY_FLAGS = ["too_dark", "too_bright", "blurred", "mostly_uniform", "extreme_aspect", "tiny",
                 "unreadable", "outlier"]  # rule flags (quality.FLAGS), unreadable, autoencoder


def flag_counts(report: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Flagged images per city (rows) and kind of flag (columns), plus images with a near-duplicate
    in another sequence (`duplicates`) and in another split (`leaks`)."""
    table = report.merge(manifest[["path", "city"]], on="path")
    flags = [f for f in QUALITY_FLAGS if f in table]
    counts = table[flags].fillna(False).astype(bool)
    for column in ("duplicates", "leaks"):
        if column in table:
            counts[column] = table[column].fillna(0) > 0
    counts.insert(0, "images", True)
    return counts.groupby(table["city"]).sum().astype(int).rename_axis("city")


def fig_flag_counts(counts: pd.DataFrame) -> go.Figure:
    """Flagged images per city and kind, as grouped bars (kinds nobody has are left out)."""
    kinds = [c for c in counts.columns if c != "images" and counts[c].any()]
    long = counts[kinds].reset_index().melt(id_vars="city", var_name="flag",
                                            value_name="images")
    fig = px.bar(long, x="city", y="images", color="flag", barmode="group")
    return tidy(fig, height=320)


def flagged_images(report: pd.DataFrame, manifest: pd.DataFrame, flag: str,
                   reasons=None) -> pd.DataFrame:
    """The images with `flag` set (manifest columns + report), with a `reason` column from
    `reasons(row)` (a list of strings) when given; worst reconstruction first for outliers."""
    table = manifest.merge(report.drop(columns=[c for c in ("size", "mtime_ns") if c in report]),
                           on="path")
    table = table[table[flag].fillna(False).astype(bool)]
    if "reconstruction_error" in table:
        table = table.sort_values("reconstruction_error", ascending=False)
    if reasons is not None:
        table = table.assign(reason=[", ".join(reasons(row)) or flag
                                     for row in table.to_dict("records")])
    return table.reset_index(drop=True)


def quality_caption(row: dict) -> str:
    """City, file and why the image was flagged."""
    return " · ".join(str(part) for part in (row["city"], row["key"], row.get("reason"))
                      if part is not None and part == part)


def top_outliers(report: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The images the autoencoder reconstructs worst (flagged outliers first)."""
    table = report.dropna(subset=["reconstruction_error"])
    return table.sort_values(["outlier", "reconstruction_error"],
                             ascending=[False, False]).head(n).reset_index(drop=True)


def style_duplicate_counts(counts: pd.DataFrame):
    """The near-duplicate pair counts with the cross-split rows (leaks) highlighted."""
    def colour(row):
        leak = bool(row.get("cross_split")) and row.get("across_sequences", row["pairs"]) > 0
        return ["background-color: #f8d7da" if leak else ""] * len(row)
    return counts.style.apply(colour, axis=1)


def example_pairs(pairs: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """A few near-duplicate pairs worth looking at: cross-split leaks first, then pairs from two
    sequences, then within one sequence (expected), closest first."""
    if pairs.empty:
        return pairs
    cross = pairs["split_a"].astype(str) != pairs["split_b"].astype(str)
    order = pairs.assign(_cross=~cross, _same=pairs["same_sequence"].astype(bool))
    return order.sort_values(["_cross", "_same", "distance"]).head(n) \
        .drop(columns=["_cross", "_same"]).reset_index(drop=True)


def pair_caption(row: dict) -> str:
    kind = ("leak: " if str(row["split_a"]) != str(row["split_b"]) else "") + \
        ("same sequence" if row["same_sequence"] else "two sequences")
    return f"{row['split_a']} ↔ {row['split_b']} · {kind} · {row['distance']} bits differ"


def fig_embedding_map(table: pd.DataFrame, colour: str = "city") -> go.Figure:
    """The 2-D map as dots coloured by city or scene; each dot's path rides in customdata so a
    selection can show the images (plotly cannot show an image on hover)."""
    colour = colour if colour in table else "city"
    shown = table.assign(file=table["path"].map(lambda p: str(p).replace("\\", "/")
                                                .rsplit("/", 1)[-1]))
    fig = px.scatter(shown, x="x", y="y", color=colour, custom_data=["path"],
                     hover_data={"file": True, "city": True, "x": False, "y": False},
                     labels={"x": "", "y": ""})
    fig.update_traces(marker={"size": 6, "opacity": 0.75})
    fig.update_layout(dragmode="lasso", clickmode="event+select")
    return tidy(fig, height=520)


def selected_paths(event) -> list[str]:
    """The image paths of the points a plotly selection event (st.plotly_chart) picked."""
    try:
        points = (event or {}).get("selection", {}).get("points", [])
    except AttributeError:
        return []
    paths = []
    for point in points:
        data = point.get("customdata")
        path = data[0] if isinstance(data, (list, tuple)) and data else data
        if isinstance(path, str) and path not in paths:
            paths.append(path)
    return paths
