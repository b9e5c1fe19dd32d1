import pandas as pd
import pytest

from cityclf import datasets
from cityclf.datasets import MANIFEST_COLUMNS, DatasetError, scan
from conftest import write_image


def write_msls_subset(folder, keys, city_seq, pano_key=None, with_raw=True, with_post=True,
                      captured_at=None, sequence_column="sequence_key"):
    """A tiny MSLS query/database folder: images plus the CSVs with MSLS's columns."""
    for key in keys:
        write_image(folder / "images" / f"{key}.jpg", 64, 48)
    n = len(keys)
    if with_raw:
        times = [1_500_000_000_000 + i for i in range(n)] if captured_at is None else captured_at
        pd.DataFrame({"key": keys, "lon": [10.0 + i for i in range(n)], "lat": [50.0] * n,
                      "ca": [90.0] * n, "captured_at": times,
                      "pano": [k == pano_key for k in keys]}).to_csv(folder / "raw.csv")
    pd.DataFrame({"key": keys, sequence_column: [f"{city_seq}{i // 2}" for i in range(n)],
                  "frame_number": [i % 2 for i in range(n)]}).to_csv(folder / "seq_info.csv")
    pd.DataFrame({"key": keys, **{c: [False] * n for c in
                                  ("w2s", "s2w", "d2n", "n2d", "o2n", "n2o", "all")}}
                 ).to_csv(folder / "subtask_index.csv")
    if with_post:
        pd.DataFrame({"key": keys, "easting": [1.0] * n, "northing": [2.0] * n,
                      "unique_cluster": [0] * n, "control_panel": [i == 0 for i in range(n)],
                      "night": [i == 1 for i in range(n)], "view_direction": ["Forward"] * n}
                     ).to_csv(folder / "postprocessed.csv")


@pytest.fixture
def msls_root(tmp_path):
    root = tmp_path / "msls"
    write_msls_subset(root / "train_val/berlin/query", ["b1", "b2", "b3", "b4"], "bq",
                      pano_key="b4")
    write_msls_subset(root / "train_val/berlin/database", ["b5", "b6"], "bd")
    write_msls_subset(root / "train_val/tokyo/database", ["t1", "t2", "t3"], "td")
    (root / "train_val/tokyo/query/images").mkdir(parents=True)
    write_msls_subset(root / "train_val/tokyo/query", [], "tq")  # header-only CSVs, no images
    write_msls_subset(root / "test/miami/query", ["m1", "m2"], "mq", with_raw=False)
    return root


def test_msls_layout_joins_csvs_on_key(msls_root):
    dataset = scan(msls_root, progress=False)
    m = dataset.manifest.set_index("key")
    assert dataset.layout == "msls"
    assert list(dataset.manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert "b4" not in m.index  # the panorama is dropped
    assert sorted(m.index) == ["b1", "b2", "b3", "b5", "b6", "m1", "m2", "t1", "t2", "t3"]
    assert m.loc["b2", "lon"] == 11.0 and m.loc["t3", "lon"] == 12.0
    assert m.loc["b3", "sequence_key"] == "bq1" and m.loc["b3", "frame_number"] == 0
    assert bool(m.loc["b1", "control_panel"]) and bool(m.loc["b2", "night"])
    assert m.loc["b1", "captured_at"] == pd.Timestamp(1_500_000_000_000, unit="ms")
    assert m.loc["t1", "view_direction"] == "Forward"
    assert (m["width"] == 64).all() and (m["height"] == 48).all()
    # The test split has no GPS: missing values, not a crash.
    assert pd.isna(m.loc["m1", "lat"]) and m.loc["m1", "msls_split"] == "test"
    assert dataset.summary().loc["berlin", "images"] == 5
    assert [note for note in dataset.problems if note.startswith("test:")] == [
        "test: 1 city has no raw.csv (as in MSLS's test subset): no GPS, capture times or "
        "panorama flags, so panoramas cannot be dropped"]


@pytest.mark.parametrize("values, expected", [
    ([1_500_000_000_000, 1_500_000_000_500], ["2017-07-14 02:40", "2017-07-14 02:40:00.5"]),
    ([1_500_000_000, 1_500_000_000.5], ["2017-07-14 02:40", "2017-07-14 02:40:00.5"]),
    ([20160513, 20161231], ["2016-05-13", "2016-12-31"]),  # converters' YYYYMMDD
    (["2016-05-13", "2016-05-13 14:20:31"], ["2016-05-13", "2016-05-13 14:20:31"]),
    (["2016-05-13T14:20:31Z", "2016-05-13T14:20:31+02:00"],
     ["2016-05-13 14:20:31", "2016-05-13 12:20:31"]),  # zones become UTC
    (["20160513", "1500000000000"], ["2016-05-13", "2017-07-14 02:40"]),  # one column, two forms
])
def test_capture_times_are_read_in_every_form(tmp_path, values, expected):
    root = tmp_path / "msls"
    write_msls_subset(root / "train_val/rome/database", ["r1", "r2"], "r", captured_at=values)
    dataset = scan(root, progress=False)
    times = dataset.manifest.set_index("key")["captured_at"]
    assert times.dtype == "datetime64[us]"
    assert list(times[["r1", "r2"]]) == [pd.Timestamp(t) for t in expected]
    assert not [note for note in dataset.problems if "captured_at" in note]


def test_unreadable_capture_times_are_missing_with_one_note_per_file(tmp_path):
    root = tmp_path / "msls"
    keys = ["r1", "r2", "r3", "r4"]
    write_msls_subset(root / "train_val/rome/database", keys, "r",
                      captured_at=["soon", "2016-05-13", "2016-13-45", 42])
    dataset = scan(root, progress=False)
    times = dataset.manifest.set_index("key")["captured_at"]
    assert times["r2"] == pd.Timestamp("2016-05-13") and times[["r1", "r3", "r4"]].isna().all()
    assert [note for note in dataset.problems if "captured_at" in note] == [
        "train_val/rome/database/raw.csv: 3 unreadable value(s) in captured_at"]


def test_sequence_id_is_read_as_sequence_key(tmp_path):
    root = tmp_path / "msls"
    write_msls_subset(root / "train_val/rome/database", ["r1", "r2", "r3", "r4"], "r",
                      sequence_column="sequence_id")
    dataset = scan(root, progress=False)
    assert list(dataset.manifest["sequence_key"]) == ["r0", "r0", "r1", "r1"]
    assert dataset.problems == []


def test_test_cities_without_raw_or_postprocessed_get_one_note(tmp_path):
    root = tmp_path / "msls"
    write_msls_subset(root / "train_val/rome/database", ["r1", "r2", "r3", "r4"], "r")
    for city in ("miami", "athens"):
        for subset in ("query", "database"):
            write_msls_subset(root / f"test/{city}/{subset}", [f"{city}{subset}{i}" for i in
                                                               range(2)], city,
                              with_raw=False, with_post=False)
    dataset = scan(root, progress=False)
    assert dataset.manifest.groupby("city").size().to_dict() == {"athens": 4, "miami": 4,
                                                                 "rome": 4}
    assert dataset.problems == [
        "test: 2 cities have no raw.csv / postprocessed.csv (as in MSLS's test subset): no GPS, "
        "capture times or panorama flags, so panoramas cannot be dropped; no night, "
        "control-panel or view-direction flags"]


def test_panoramas_kept_on_request(msls_root):
    assert "b4" in set(scan(msls_root, progress=False, drop_panoramas=False).manifest["key"])


def test_folder_layout_nested_with_junk(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "Paris/a.jpg")
    write_image(root / "Paris/2019/deep/er/b.PNG", fmt="PNG")
    write_image(root / "Paris/c.JPEG", fmt="JPEG")
    write_image(root / "Rome/x/y.webp", fmt="WEBP")
    (root / "Rome/notes.txt").write_text("not an image")
    (root / "Rome/broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "Empty").mkdir()
    (root / "loose.jpg").write_bytes(b"")  # a file at the top level has no city
    dataset = scan(root, progress=False)
    assert dataset.layout == "folders"
    assert dataset.manifest.groupby("city").size().to_dict() == {"Paris": 3, "Rome": 1}
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: p.split("/")[-1]),
                       dataset.skipped["reason"]))
    assert reasons["notes.txt"] == "not an image"
    assert "not a readable image" in reasons["broken.jpg"]
    assert set(dataset.manifest["key"]) == {"Paris/a.jpg", "Paris/2019/deep/er/b.PNG",
                                            "Paris/c.JPEG", "Rome/x/y.webp"}
    assert dataset.manifest["sequence_key"].isna().all()


def test_second_scan_opens_no_image_until_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "folders"
    for i in range(6):
        write_image(root / f"city{i % 2}/{i}.jpg")
    first = scan(root, progress=False)
    assert first.opened == 6

    opened = []
    real = datasets.image_size
    monkeypatch.setattr(datasets, "image_size", lambda p: opened.append(p) or real(p))
    second = scan(root, progress=False)
    assert opened == [] and second.opened == 0
    pd.testing.assert_frame_equal(first.manifest, second.manifest)

    write_image(root / "city0/0.jpg", width=80)  # changed size and mtime
    third = scan(root, progress=False)
    assert [p.split("/")[-1] for p in opened] == ["0.jpg"]
    assert third.manifest.set_index("key").loc["city0/0.jpg", "width"] == 80


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "folders"
    write_image(root / "a/1.jpg")
    dataset = scan(root, progress=False)
    (dataset.cache / "files.parquet").write_bytes(b"garbage")
    assert scan(root, progress=False).opened == 1


def test_bad_roots_give_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        scan(tmp_path / "missing", progress=False)
    (tmp_path / "empty/city").mkdir(parents=True)
    (tmp_path / "empty/city/readme.md").write_text("hi")
    with pytest.raises(DatasetError, match="no readable images"):
        scan(tmp_path / "empty", progress=False)


def test_known_datasets_lists_scanned_roots(tmp_path):
    write_image(tmp_path / "ds/a/1.jpg")
    scan(tmp_path / "ds", progress=False)
    assert [d["root"] for d in datasets.known_datasets()] == [str((tmp_path / "ds").resolve())]
