"""The embedding store is append-only and crash-safe: rows read back as written, a changed file is
a miss, kill -9 and concurrent writers leave every published row readable; the head streamed over
it matches the in-memory one; and embed() works through it."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.metrics import log_loss

from cityclf.embedstore import EmbeddingStore, file_key, remove_orphans
from cityclf.head import fit_head, fit_head_streaming
from conftest import write_image

DIM = 48


def expected(j: int) -> np.ndarray:
    """Row j, exact in float16, and different from every other row in the tests."""
    return np.r_[j, (j * 7 + np.arange(DIM - 1)) % 97].astype(np.float16)


def keys_of(js) -> list[tuple[str, int, int]]:
    return [(f"/img/{j}.jpg", 1000 + j, j) for j in js]


# Another process appending rows first..last as expected() and keys_of() make them.
WRITER = f"""
import sys, numpy as np
from cityclf.embedstore import EmbeddingStore
folder, first, last, shard_rows = sys.argv[1], *map(int, sys.argv[2:5])
with EmbeddingStore(folder).writer(shard_rows) as writer:
    for j in range(first, last, 16):
        js = np.arange(j, min(j + 16, last))
        rows = np.c_[js, (js[:, None] * 7 + np.arange({DIM} - 1)) % 97].astype(np.float16)
        writer.add([(f"/img/{{k}}.jpg", 1000 + k, k) for k in js.tolist()], rows)
"""


def start_writer(folder, first, last, shard_rows):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(first), str(last),
                             str(shard_rows)])


def assert_intact(store: EmbeddingStore, js) -> np.ndarray:
    """Every row of ``js`` the store has equals what was written; returns which it has."""
    rows = store.rows(keys_of(js))
    found = rows.found
    np.testing.assert_array_equal(rows[found].read(),
                                  np.stack([expected(j) for j in np.asarray(js)[found]]))
    return found


def test_rows_append_and_read_back_in_order_and_in_chunks(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    assert len(store) == 0 and store.rows(keys_of(range(3))).read().shape == (3, 0)
    with store.writer(shard_rows=10) as writer:
        writer.add(keys_of(range(25)), np.stack([expected(j) for j in range(25)]))
    assert len(list((tmp_path / "store").glob("*.keys.json"))) == 3  # 10 + 10 + 5
    store.refresh()
    with store.writer(shard_rows=10) as writer:  # a later append; 20..24 again, newest wins
        writer.add(keys_of(range(20, 40)), np.stack([expected(j) for j in range(20, 40)]))
    reopened = EmbeddingStore(tmp_path / "store")
    assert len(reopened) == 40
    order = [39, 0, 22, 7, 41]  # 41 was never written: a zero row, not found
    rows = reopened.rows(keys_of(order))
    np.testing.assert_array_equal(rows.found, [True, True, True, True, False])
    got = rows.read()
    assert got.dtype == np.float32 and got.shape == (5, DIM) and not got[4].any()
    np.testing.assert_array_equal(got[:4], np.stack([expected(j) for j in order[:4]]))
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(2))), got)
    np.testing.assert_array_equal(rows[[2, 0]].read(), got[[2, 0]])


def test_a_file_changed_in_place_is_a_miss(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 100)
    store = EmbeddingStore(tmp_path / "store")
    with store.writer() as writer:
        writer.add([file_key(image)], np.ones((1, 4)))
    store.refresh()
    assert store.rows([file_key(image)]).found.all()
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same size
    assert not store.rows([file_key(image)]).found.any()
    image.write_bytes(b"x" * 101)  # rewritten: another size
    assert not store.rows([file_key(image)]).found.any()
    assert file_key(tmp_path / "missing.jpg") is None
    assert not store.rows([None]).found.any()


def test_kill_9_mid_write_leaves_a_readable_store(tmp_path):
    folder = tmp_path / "store"
    writer = start_writer(folder, 0, 10**7, shard_rows=256)
    deadline = time.monotonic() + 60
    try:  # kill it after a few shards, when a temporary file is there if we catch one
        while time.monotonic() < deadline and len(list(folder.glob("*.keys.json"))) < 4:
            time.sleep(0.01)
        catch = time.monotonic() + 2
        while time.monotonic() < catch and not list(folder.glob(".*.tmp")):
            pass
        assert writer.poll() is None, "the writer ended before it was killed"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    store = EmbeddingStore(folder)
    written = len(store)
    assert written >= 4 * 256 and written % 256 == 0  # whole shards only
    assert assert_intact(store, range(written + 1024)).sum() == written
    remove_orphans(folder, age_s=0)  # nobody is writing now: whatever is left is an orphan
    assert not list(folder.glob(".*")) and \
        len(list(folder.glob("*.npy"))) == len(list(folder.glob("*.keys.json")))
    with store.writer(shard_rows=256) as more:  # and it takes new rows
        more.add(keys_of(range(10**8, 10**8 + 5)), np.stack([expected(j) for j in range(5)]))
    store.refresh()
    assert len(store) == written + 5


def test_two_writers_at_once_leave_every_key_readable(tmp_path):
    folder = tmp_path / "store"
    writers = [start_writer(folder, 0, 1200, 100), start_writer(folder, 600, 1800, 100)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    store = EmbeddingStore(folder)
    assert len(store) == 1800 and assert_intact(store, range(1800)).all()


def cities(n, n_classes, dim, seed=0):
    """Non-negative features with a signal, overlapping enough that the optimum is not flat."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, (n_classes, dim)) * rng.uniform(0.05, 3, dim)
    y = rng.integers(0, n_classes, n)
    return np.clip(centres[y] + rng.normal(0, 4, (n, dim)), 0, 6), y


@pytest.mark.parametrize("n_classes, labels, balanced", [
    (4, None, False),
    (3, [0, 2], False),        # two cities (scikit-learn's binary form), the middle one absent
    (3, [0, 1, 1, 2], True)])  # unbalanced, every city weighed alike
def test_streaming_head_matches_the_in_memory_head(tmp_path, n_classes, labels, balanced):
    x, y = cities(3000, len(labels) if labels else 4, 32)
    y = y if labels is None else np.asarray(labels)[y]
    store = EmbeddingStore(tmp_path / "store")
    with store.writer(shard_rows=700) as writer:
        writer.add(keys_of(range(len(x))), x)
    store.refresh()
    rows, train = store.rows(keys_of(range(len(x)))), np.arange(len(x)) < 2400
    val_x = rows[~train].read()
    memory = fit_head(rows[train].read(), y[train], val_x, y[~train], n_classes, balanced=balanced)
    # C chosen alike on all rows, then solved by streaming from a subsample's start
    streamed = fit_head_streaming(rows[train], y[train], rows[~train], y[~train], n_classes,
                                  grid=(memory.C,), balanced=balanced, subsample=400,
                                  chunk_rows=500)
    assert streamed.C == memory.C and streamed.chosen["iterations"] > 0
    ours, theirs = streamed.probabilities(val_x), memory.probabilities(val_x)
    assert log_loss(y[~train], ours, labels=range(n_classes)) == pytest.approx(
        log_loss(y[~train], theirs, labels=range(n_classes)), abs=2e-3)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() > 0.98
    assert streamed.chosen["val_loss"] == pytest.approx(memory.chosen["val_loss"], abs=2e-3)
    assert streamed.chosen["train_rows"] == 2400 and "streamed" in streamed.summary()["solver"]
    if labels == [0, 2]:
        assert ours[:, 1].max() < 1e-6
    # the full search: C chosen on a subsample, every grid row reported
    searched = fit_head_streaming(rows[train], y[train], rows[~train], y[~train], n_classes,
                                  balanced=balanced, subsample=1000, chunk_rows=500)
    assert len(searched.search) == 9 and searched.chosen["train_rows"] == 2400
    assert searched.chosen["val_loss"] < memory.chosen["val_loss"] + 0.05


class MeanColour:
    """A backbone stand-in: the mean colour of each image, counting the images it sees."""

    images = 0

    def predict_on_batch(self, images):
        self.images += len(images)
        return np.asarray(images).mean((1, 2))


def test_embed_through_the_store(tmp_path):
    from cityclf.embeddings import embed, embed_rows, store_folder
    from cityclf.pipeline import Preprocess
    pre, backbone = Preprocess(32), MeanColour()
    paths = [write_image(tmp_path / f"{i}.jpg", color=(40 * i, 100, 200)) for i in range(4)]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths.append(tmp_path / "bad.jpg")
    legacy = store_folder("ds", "fake", pre)
    legacy = legacy.with_name(legacy.name + ".npz")
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"an old cache")

    vectors, ok = embed(backbone, "fake", "ds", paths, pre, progress=False)
    assert vectors.shape == (5, 3) and vectors.dtype == np.float32 and not legacy.exists()
    np.testing.assert_array_equal(ok, [True] * 4 + [False])
    assert not vectors[4].any() and backbone.images == 4
    again, ok_again = embed(backbone, "fake", "ds", paths + paths[:1], pre, progress=False)
    assert backbone.images == 4  # nothing new: only the unreadable one is decoded again
    np.testing.assert_array_equal(again[:5], vectors)
    np.testing.assert_array_equal(again[5], vectors[0])

    write_image(paths[0], color=(250, 0, 0))  # changed content
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    changed, _ = embed(backbone, "fake", "ds", paths, pre, progress=False)
    assert backbone.images == 6
    assert not np.allclose(changed[0], vectors[0])
    np.testing.assert_array_equal(changed[1:], vectors[1:])

    rows, ok = embed_rows(backbone, "fake", "ds", paths, pre, progress=False)
    assert backbone.images == 6 and rows.dim == 3
    np.testing.assert_array_equal(np.concatenate(list(rows[ok].chunks(3))), changed[ok])
