"""The synthetic dataset: MSLS layout, determinism, sequences, and the city cues it promises."""
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import chi2_contingency

from cityclf import synth

MSLS_COLUMNS = {
    "raw.csv": ["key", "lon", "lat", "ca", "captured_at", "pano"],
    "seq_info.csv": ["key", "sequence_key", "frame_number"],
    "subtask_index.csv": ["key", "w2s", "s2w", "d2n", "n2d", "o2n", "n2o", "all"],
    "postprocessed.csv": ["key", "easting", "northing", "unique_cluster", "control_panel", "night",
                          "view_direction"],
    "scene.csv": ["key", "scene"],
}
TINY = dict(cities=("london", "boston", "helsinki"), per_city=24, size=(96, 72), seed=0,
            progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.synthesize(tmp_path_factory.mktemp("tiny"), workers=1, **TINY)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Enough sequences for statistics: two right-hand and two left-hand cities."""
    return synth.synthesize(tmp_path_factory.mktemp("medium"),
                            cities=("phoenix", "amsterdam", "london", "tokyo"), per_city=120,
                            size=(96, 72), seed=3, progress=False, workers=2)


def frames(root) -> pd.DataFrame:
    """Every frame with its city, split, metadata and image path, read the way MSLS readers do."""
    tables = []
    for folder in sorted((root / "train_val").glob("*/*")):
        table = pd.read_csv(folder / "raw.csv", index_col=0)
        for name in ("seq_info.csv", "postprocessed.csv", "scene.csv"):
            table = table.merge(pd.read_csv(folder / name, index_col=0), on="key")
        tables.append(table.assign(city=folder.parent.name, split=folder.name,
                                   path=[folder / "images" / f"{key}.jpg" for key in table["key"]]))
    return pd.concat(tables, ignore_index=True)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32)


def sampled_conditions(city, count, seed=0):
    """Sequence conditions as _render_sequence draws them, without drawing any image."""
    for index in range(count):
        rng = np.random.default_rng([seed, synth._city_id(city), index])
        yield synth._conditions(synth._sequence_style(city, rng), 8, rng)


def test_every_csv_has_msls_columns_after_an_unnamed_index(tiny):
    for city in TINY["cities"]:
        for split in ("query", "database"):
            folder = tiny / "train_val" / city / split
            for name, columns in MSLS_COLUMNS.items():
                header = (folder / name).read_text().splitlines()[0]
                assert header == "," + ",".join(columns), f"{folder / name}"
                table = pd.read_csv(folder / name, index_col=0)
                assert list(table.index) == list(range(len(table)))


def test_every_key_has_an_image_and_every_image_a_key(tiny):
    for folder in (tiny / "train_val").glob("*/*"):
        images = {path.stem for path in (folder / "images").glob("*.jpg")}
        for name in MSLS_COLUMNS:
            assert set(pd.read_csv(folder / name, index_col=0)["key"]) == images, f"{folder / name}"
    table = frames(tiny)
    assert len(table) == TINY["per_city"] * len(TINY["cities"])
    assert table["key"].is_unique
    assert table["key"].str.fullmatch(r"[A-Za-z0-9_-]{22}").all()


def test_metadata_values_look_like_msls(tiny):
    table = frames(tiny)
    assert table["view_direction"].isin(["Forward", "Backward", "Sideways"]).all()
    assert table["scene"].isin(synth.SCENES).all()
    for column in ("pano", "night", "control_panel"):
        assert table[column].dtype == bool
    years = pd.to_datetime(table["captured_at"], unit="ms").dt.year
    assert years.between(2013, 2021).all()
    for city, group in table.groupby("city"):
        style = synth.city_style(city)
        assert (group["lat"] - style["lat"]).abs().max() < 0.5
        assert (group["lon"] - style["lon"]).abs().max() < 0.5
    first, second = table.iloc[0], table.iloc[1]  # consecutive frames a few metres apart
    metres = np.hypot(first["easting"] - second["easting"], first["northing"] - second["northing"])
    assert 1 < metres < 40
    assert "synthetic" in (tiny / "README.txt").read_text().lower()


def test_images_have_the_requested_size(tiny):
    for path in frames(tiny)["path"]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == TINY["size"]


def all_files(root) -> dict:
    return {path.relative_to(root): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tiny, tmp_path):
    again = synth.synthesize(tmp_path / "again", workers=2, **TINY)
    assert all_files(again) == all_files(tiny)


def test_a_different_seed_gives_a_different_dataset(tiny, tmp_path):
    other = synth.synthesize(tmp_path / "other", workers=1, **{**TINY, "seed": 1})
    assert set(frames(other)["key"]).isdisjoint(frames(tiny)["key"])
    first = lambda root: pixels(frames(root).sort_values(["city", "split"])["path"].iloc[0])
    assert np.abs(first(other) - first(tiny)).mean() > 5


def test_sequences_are_4_to_12_consecutive_frames_of_one_scene(tiny):
    table = frames(tiny)
    for _, sequence in table.groupby("sequence_key"):
        assert 4 <= len(sequence) <= 12
        assert sorted(sequence["frame_number"]) == list(range(len(sequence)))
        for column in ("city", "split", "scene", "night", "control_panel", "view_direction"):
            assert sequence[column].nunique() == 1, column
        assert sequence.sort_values("frame_number")["captured_at"].is_monotonic_increasing


@pytest.mark.parametrize("per_city", [4, 5, 13, 16, 17, 24, 100, 301])
def test_plans_cover_per_city_exactly_with_whole_sequences_in_query(per_city):
    plan = synth._plan_city("tokyo", per_city, seed=0)
    assert sum(length for length, _ in plan) == per_city
    assert all(4 <= length <= 12 for length, _ in plan)
    splits = [split for _, split in plan]
    assert ("query" in splits) == (len(plan) > 1)
    if len(plan) >= 20:
        assert 0.15 <= splits.count("query") / len(plan) <= 0.25


def test_frames_move_forward_by_zooming_in(tiny):
    """Later frames of a forward sequence show the centre magnified: a centre crop of frame 0,
    scaled up, looks more like the last frame than frame 0 itself does."""
    table = frames(tiny)
    forward = table[(table["view_direction"] == "Forward") & ~table["pano"]]
    closer = []
    for _, sequence in forward.groupby("sequence_key"):
        sequence = sequence.sort_values("frame_number")
        first, last = Image.open(sequence["path"].iloc[0]), pixels(sequence["path"].iloc[-1])
        w, h = first.size
        zoomed = first.crop((w * 0.06, h * 0.06, w * 0.94, h * 0.94)).resize((w, h))
        unzoomed_error = np.abs(np.asarray(first, np.float32) - last).mean()
        closer.append(np.abs(np.asarray(zoomed, np.float32) - last).mean() < unzoomed_error)
    assert np.mean(closer) > 0.6


def test_scene_mix_differs_by_city(medium):
    sequences = frames(medium).drop_duplicates("sequence_key")
    counts = pd.crosstab(sequences["city"], sequences["scene"]).loc[["phoenix", "amsterdam"]]
    assert chi2_contingency(counts.loc[:, counts.sum() > 0])[1] < 0.01
    share = counts.div(counts.sum(axis=1), axis=0)
    assert share.loc["phoenix", "highway"] > share.loc["amsterdam", "highway"]
    assert share.loc["amsterdam", "city_centre"] > share.loc["phoenix", "city_centre"]


def test_about_ten_percent_of_sequences_are_at_night_and_a_few_are_panoramas():
    conditions = [c for city in ("boston", "tokyo") for c in sampled_conditions(city, 1500)]
    assert 0.08 < np.mean([c["night"] for c in conditions]) < 0.12
    assert 0.11 < np.mean([c["dashboard"] for c in conditions]) < 0.19
    assert 0.003 < np.mean([c["pano"] for c in conditions]) < 0.03
    assert np.mean([c["view"] == "Forward" for c in conditions]) > 0.8


def test_night_frames_are_dark_and_taken_at_night_hours(medium):
    table = frames(medium)
    brightness = table["path"].map(lambda path: pixels(path).mean())
    assert table["night"].any()
    assert brightness[table["night"]].mean() < 0.5 * brightness[~table["night"]].mean()
    utc = table["city"].map(lambda city: synth.city_style(city)["utc"])
    local_hour = [(datetime.fromtimestamp(ms / 1000, timezone.utc) + timedelta(hours=offset)).hour
                  for ms, offset in zip(table["captured_at"], utc)]
    night_hours = pd.Series(local_hour)[table["night"].values]
    assert night_hours.isin([20, 21, 22, 23, 0, 1, 2, 3, 4, 5]).all()


def test_dashboard_frames_are_dark_at_the_bottom(medium):
    table = frames(medium)
    day = table[~table["night"]]
    bottom = day["path"].map(lambda path: pixels(path)[-8:].mean())
    assert day["control_panel"].any()
    assert bottom[day["control_panel"]].mean() < 0.6 * bottom[~day["control_panel"]].mean()


def road_asymmetry(image: np.ndarray) -> float:
    """How much more road-coloured surface lies left of centre than right, just below the
    horizon. Driving on the right, the oncoming lanes are on the left, so this is positive."""
    h, w, _ = image.shape
    band = image[int(h * 0.58):int(h * 0.7)]
    ahead = image[int(h * 0.62):int(h * 0.68), int(w * 0.45):int(w * 0.55)]
    own_lane = np.median(ahead.reshape(-1, 3), axis=0)
    road = (np.abs(band - own_lane).sum(axis=-1) < 30).mean(axis=0)
    return road[: w // 2].mean() - road[w // 2:].mean()


def test_left_hand_cities_have_the_oncoming_road_on_the_right(medium):
    table = frames(medium)
    table = table[table["scene"] != "highway"]  # on a divided highway the camera may be in any lane
    left_hand = table["city"].map(lambda city: synth.city_style(city)["left_hand"])
    side = table["path"].map(lambda path: road_asymmetry(pixels(path))).groupby(left_hand).mean()
    assert side[False] > 0.03 and side[True] < -0.03
    assert side[False] - side[True] > 0.15


def test_a_left_hand_city_is_the_mirror_image_of_its_right_hand_twin(tmp_path, monkeypatch):
    options = dict(cities=["boston"], per_city=16, size=(96, 72), progress=False, workers=1)
    right = frames(synth.synthesize(tmp_path / "right", **options))
    monkeypatch.setitem(synth.CITY_STYLES, "boston",
                        {**synth.CITY_STYLES["boston"], "left_hand": True})
    left = frames(synth.synthesize(tmp_path / "left", **options))
    assert list(left["key"]) == list(right["key"])
    for a, b in zip(left["path"], right["path"]):
        assert np.abs(pixels(a)[:, ::-1] - pixels(b)).mean() < 3
        assert np.abs(pixels(a) - pixels(b)).mean() > 6


def test_every_known_city_style_renders(tmp_path):
    assert len(synth.ALL_CITIES) >= 24 and synth.DEFAULT_CITIES == synth.ALL_CITIES[:8]
    assert {synth.city_style(c)["left_hand"] for c in synth.DEFAULT_CITIES} == {True, False}
    root = synth.synthesize(tmp_path / "all", cities=len(synth.ALL_CITIES), per_city=4,
                            size=(48, 36), progress=False)
    assert sorted(frames(root)["city"].unique()) == sorted(synth.ALL_CITIES)


def test_unknown_cities_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="atlantis"):
        synth.synthesize(tmp_path / "a", cities=["atlantis"], per_city=4, progress=False)
    foreign = tmp_path / "real_msls"
    (foreign / "train_val" / "london").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synth.synthesize(foreign, cities=1, per_city=4, progress=False)
    assert (foreign / "train_val" / "london").is_dir()


def test_msls_test_cities_have_only_seq_info_and_subtask_index(tmp_path, capsys):
    """`data synth --msls-test-cities N` adds N cities shaped like MSLS's test subset; the
    train_val part stays byte for byte what it is without the option."""
    from cityclf.cli import main
    from cityclf.datasets import scan
    options = dict(cities=["london"], per_city=8, size=(48, 36), seed=0, progress=False, workers=1)
    plain = synth.synthesize(tmp_path / "plain", **options)
    assert main(["data", "synth", "--out", str(tmp_path / "with_test"), "--cities", "london",
                 "--per-city", "8", "--size", "48x36", "--msls-test-cities", "2"]) == 0
    root = tmp_path / "with_test"
    assert all_files(root / "train_val") == all_files(plain / "train_val")
    assert sorted(p.name for p in (root / "test").iterdir()) == ["athens", "miami"]
    for folder in (root / "test").glob("*/*"):
        assert sorted(p.name for p in folder.iterdir()) == ["images", "seq_info.csv",
                                                           "subtask_index.csv"]
        images = {path.stem for path in (folder / "images").glob("*.jpg")}
        for name in synth.MSLS_TEST_CSVS:
            header = (folder / name).read_text().splitlines()[0]
            assert header == "," + ",".join(MSLS_COLUMNS[name])
            assert set(pd.read_csv(folder / name, index_col=0)["key"]) == images
    dataset = scan(root, progress=False)
    assert dataset.manifest.groupby("city").size().to_dict() == {"athens": 8, "london": 8,
                                                                 "miami": 8}
    assert [note.split(":")[0] for note in dataset.problems] == ["test"]
    with pytest.raises(ValueError, match="msls_test_cities"):
        synth.synthesize(tmp_path / "too_many", **{**options, "cities": len(synth.ALL_CITIES)},
                         msls_test_cities=1)
