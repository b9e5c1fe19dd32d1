"""The parallel scan (worker processes over chunks of paths) and its vectorised bookkeeping give
exactly what the single-process scan gives; re-scans open only what changed."""
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from cityclf import datasets
from cityclf.datasets import scan
from cityclf.images import is_image_name
from conftest import write_image
from test_datasets import write_msls_subset


@pytest.fixture
def pools(monkeypatch):
    """Every scan reads headers in a pool, 3 images a task; the pools started are counted."""
    started = []

    class Counted(ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(datasets, "ProcessPoolExecutor", Counted)
    monkeypatch.setattr(datasets, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(datasets, "HEADER_CHUNK", 3)
    return started


@pytest.fixture
def messy_msls(tmp_path):
    """An MSLS tree with a broken JPEG, an empty one and a text file among its images."""
    root = tmp_path / "msls"
    keys = [f"b{i}" for i in range(9)]
    write_msls_subset(root / "train_val/berlin/database", keys, "bd", pano_key="b8")
    write_msls_subset(root / "train_val/berlin/query", ["q1", "q2", "q3"], "bq")
    write_msls_subset(root / "train_val/tokyo/database", [f"t{i}" for i in range(5)], "td")
    images = root / "train_val/berlin/database/images"
    (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.txt").write_text("not an image")
    write_image(root / "train_val/tokyo/database/images/t0.jpg", 80, 60)  # another size
    return root


def test_parallel_scan_equals_single_process(messy_msls, pools):
    single = scan(messy_msls, progress=False, workers=1)
    assert pools == []
    shutil.rmtree(single.cache)
    parallel = scan(messy_msls, progress=False, workers=2)
    assert len(pools) == 1 and parallel.opened == single.opened == 19
    pd.testing.assert_frame_equal(parallel.manifest, single.manifest)
    pd.testing.assert_frame_equal(parallel.skipped, single.skipped)
    assert parallel.problems == single.problems
    reasons = dict(zip(parallel.skipped["path"].map(lambda p: Path(p).name),
                       parallel.skipped["reason"]))
    assert set(reasons) == {"broken.jpg", "empty.jpg", "notes.txt"}
    assert "empty file" in reasons["empty.jpg"] and reasons["notes.txt"] == "not an image"
    assert parallel.manifest.set_index("key").loc["t0", "width"] == 80
    assert "b8" not in set(parallel.manifest["key"])  # the panorama


def test_rescan_opens_nothing_until_files_change(messy_msls, pools, monkeypatch):
    first = scan(messy_msls, progress=False)
    assert first.opened == 19 and len(pools) == 1

    def no_image(path):
        raise AssertionError(f"{path} opened")
    real = datasets.image_size
    monkeypatch.setattr(datasets, "image_size", no_image)
    again = scan(messy_msls, progress=False)
    assert again.opened == 0 and len(pools) == 1
    pd.testing.assert_frame_equal(again.manifest, first.manifest)
    pd.testing.assert_frame_equal(again.skipped, first.skipped)
    assert again.problems == first.problems

    monkeypatch.setattr(datasets, "image_size", real)
    monkeypatch.setattr(datasets, "HEADER_CHUNK", 1)  # two tasks, so two workers
    images = messy_msls / "train_val/berlin/database/images"
    write_image(images / "b1.jpg", 96, 72)  # changed size and mtime
    write_image(images / "broken.jpg", 32, 24)  # repaired
    (images / "b2.jpg").unlink()
    changed = scan(messy_msls, progress=False)
    assert changed.opened == 2 and len(pools) == 2
    m = changed.manifest.set_index("key")
    assert (m.loc["b1", "width"], m.loc["b1", "height"]) == (96, 72)
    assert m.loc["broken", "width"] == 32 and "b2" not in m.index
    assert len(changed.manifest) == len(first.manifest)  # one image gone, one repaired


def test_is_image_matches_is_image_name():
    names = ["a.jpg", "A.JPG", "b.jpeg", "c.Png", "d.webp", ".jpg", "..jpg", "a..jpg", "a.",
             "a.jpg.", "x.tar.gz", "jpg", "é.WEBP", "new\nline.jpg", "a.jpg\n", "a.gif"]
    paths = pd.Series([f"/data/city/{name}" for name in names], dtype="str")
    assert datasets._is_image(paths).tolist() == [is_image_name(p) for p in paths]


def test_csv_join_is_a_left_merge():
    files = pd.DataFrame({"path": ["p1", "p2", "p3", "p4"], "key": ["k1", "k2", "k3", "k1"]},
                         dtype="str")
    table = pd.DataFrame({"key": ["k1", "k2", "zz", None], "pano": [True, False, True, False],
                          "lat": [1.0, 2.0, 3.0, 4.0],
                          "captured_at": pd.to_datetime([1, 2, 3, 4], unit="s")},
                         index=[5, 6, 7, 8]).astype({"key": "str"})  # as the CSV reader leaves it
    notes = []
    joined = datasets._join_csv(files, table, "raw.csv", notes)
    pd.testing.assert_frame_equal(joined, files.merge(table, on="key", how="left"))
    assert notes == ["raw.csv: 2 row(s) match no image",
                     "raw.csv: no row for 1 image(s); their fields stay empty"]
    matched = files.iloc[[0, 1]]
    pd.testing.assert_frame_equal(datasets._join_csv(matched, table.iloc[:2], "x", []),
                                  matched.merge(table.iloc[:2], on="key", how="left"))
