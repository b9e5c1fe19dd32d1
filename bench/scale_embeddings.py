"""Embeddings at MSLS scale (1.6 M images), each new way against today's in the same run:

(a) MobileNetV2 at 224 px through the verified LiteRT fast path against Keras
    ``predict_on_batch``, on the same decoded batches, and end to end (decode, LiteRT, store);
(b) the sharded float16 store (cityclf.embedstore) against the old one-``.npz`` cache (rewritten
    whole on every increment, loaded whole on every lookup): rows/s, disk bytes, peak memory;
(c) the head streamed over the store (cityclf.head.fit_head_streaming) against ``fit_head`` on
    the same rows in memory: seconds and peak memory.

Store and head variants each run in a fresh process, so each peak RSS is its own. bench/scale.py
calls ``run(paths, report)``; alone, this makes ~2,000 small JPEGs first:

    .venv/bin/python bench/scale_embeddings.py [--images 2000] [--store-rows 200000]
        [--head-rows 300000] [--subsample 20000] ...
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

MSLS_IMAGES = 1_600_000
DIM = 1280  # MobileNetV2's embedding
BATCH = 32
INCREMENTS = 4  # the store benchmark adds its rows in this many embedding runs
WRITE_BATCH = 1024  # rows handed to the writer at once
SUBSET = 10_000  # rows of a small lookup (one city, a validation split)
INDEX_BYTES_PER_ROW = 350  # an open store's index (path -> shard, row), measured at 200,000 rows

Report = Callable[[str, str], None]


def run(paths: list[str], report: Report, keras_images: int = 512, litert_images: int = 2048,
        store_rows: int = 200_000, head_rows: int = 300_000, classes: int = 20,
        subsample: int = 20_000) -> None:
    """All three measurements; ``paths`` are small JPEGs (cycled if fewer than needed)."""
    embedding_speed(paths, report, keras_images, litert_images)
    with tempfile.TemporaryDirectory(prefix="cityclf-scale-embeddings-") as folder:
        store_speed(Path(folder), report, store_rows)
    with tempfile.TemporaryDirectory(prefix="cityclf-scale-head-") as folder:
        head_speed(Path(folder), report, head_rows, classes, subsample)


# ------------------------------------------------------------------------ (a) embedding speed
def embedding_speed(paths: list[str], report: Report, keras_images: int,
                    litert_images: int) -> None:
    from cityclf import config
    from cityclf.backbones import mobilenet_v2
    from cityclf.embeddings import embed_rows
    from cityclf.fast import fast_backbone
    from cityclf.pipeline import Preprocess, make_dataset
    pre = Preprocess(224)
    sample = [str(p) for p in np.resize(np.asarray(paths, dtype=object), litert_images)]
    start = time.perf_counter()
    backbone = mobilenet_v2((224, 224, 3), include_top=False)  # offline ImageNet weights
    fast = fast_backbone(backbone, "mobilenet_v2-imagenet")  # verified once, then cached
    report("embed: backbone + fast path ready", f"{time.perf_counter() - start:.1f} s")
    if fast is None:
        report("embed: LiteRT fast path", "unavailable (conversion or check failed)")
        return

    start = time.perf_counter()
    batches = [images.numpy().astype(np.uint8) for images, _ in
               make_dataset(sample, pre=pre, batch_size=BATCH, cache=False)]
    decoded = sum(len(b) for b in batches)
    decode_rate = decoded / (time.perf_counter() - start)
    report("embed: decode + resize (tf.data)", f"{decode_rate:.0f} images/s ({decoded} images)")

    # Keras and LiteRT take turns on the first batches (the machine is shared and its speed
    # drifts: the speedup is taken on those), then LiteRT goes on alone.
    def timed(predict, batch) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        return np.asarray(predict(batch)), time.perf_counter() - start

    first = batches[0].astype(np.float32)
    backbone.predict_on_batch(first), fast.predict_proba(first)  # warm-up: tracing, allocation
    paired = -(-keras_images // BATCH)
    keras_s = litert_s = paired_s = worst = 0.0
    for i, batch in enumerate(batches):
        got, seconds = timed(fast.predict_proba, batch.astype(np.float32))
        litert_s += seconds
        if i < paired:
            expected, seconds = timed(backbone.predict_on_batch, batch.astype(np.float32))
            keras_s, paired_s = keras_s + seconds, litert_s
            worst = max(worst, float(np.abs(expected - got).max() / np.abs(expected).max()))
    keras_n, litert_n = sum(len(b) for b in batches[:paired]), decoded
    keras_rate, litert_rate = keras_n / keras_s, litert_n / litert_s
    report("embed: Keras predict_on_batch (today below 500 new images)",
           f"{keras_rate:.0f} images/s ({keras_n} images); 1.6 M: {_hours(keras_rate)}")
    report("embed: LiteRT fast_backbone",
           f"{litert_rate:.0f} images/s ({litert_n} images); 1.6 M: {_hours(litert_rate)}; "
           f"{keras_s / paired_s:.2f}x Keras on the same {keras_n} images (goal >= 2.5x), "
           f"max |diff| {worst:.1e} of the largest value")

    dataset_id = f"bench-scale-{uuid.uuid4().hex[:8]}"  # a fresh store, removed afterwards
    try:
        start = time.perf_counter()
        _, ok = embed_rows(backbone, "mobilenet_v2-imagenet", dataset_id, sample, pre,
                           batch_size=BATCH, progress=False)
        e2e = len(sample) / (time.perf_counter() - start)
        report("embed: embed_rows end to end (decode, LiteRT, store)",
               f"{e2e:.0f} images/s ({ok.sum()} of {len(sample)} readable); 1.6 M: {_hours(e2e)}")
    finally:
        shutil.rmtree(config.cache_dir() / "embeddings" / dataset_id, ignore_errors=True)


def _hours(images_per_s: float) -> str:
    return f"{MSLS_IMAGES / images_per_s / 3600:.1f} h"


# ------------------------------------------------------------------------------ (b) the store
def store_speed(folder: Path, report: Report, rows: int) -> None:
    for way in ("npz", "store"):
        write = _child("write", way, folder, rows)
        report(f"store: {way} write, {INCREMENTS} increments of {rows // INCREMENTS}",
               f"{write['rows_per_s']:,.0f} rows/s, {_mib_of(write['disk_bytes'])} on disk, "
               f"peak RSS {_mib(write)}")
        look = _child("lookup", way, folder, rows)
        report(f"store: {way} lookup of {SUBSET} random rows",
               f"{look['subset_rows_per_s']:,.0f} rows/s (opening included)")
        report(f"store: {way} lookup of all {rows} rows, shuffled, as one array",
               f"{look['all_rows_per_s']:,.0f} rows/s, peak RSS {_mib(look)}")
    streamed = _child("stream", "store", folder, rows)
    report(f"store: store streamed in chunks, all {rows} rows, shuffled",
           f"{streamed['rows_per_s']:,.0f} rows/s, peak RSS {_mib(streamed)}")


def _store_keys(n: int) -> list[tuple[str, int, int]]:
    return [(f"/data/msls/train_val/city{i % 20:02d}/database/images/{i:022d}.jpg", 90_000, i)
            for i in range(n)]


def _rows(start: int, n: int) -> np.ndarray:
    return np.random.default_rng(start).random((n, DIM), dtype=np.float32) * 6


def _store_write(way: str, folder: Path, n: int) -> dict:
    """INCREMENTS embedding runs, each adding its rows a batch at a time as embed() does; only
    the writing is timed (the rows are made outside the clock)."""
    from cityclf.embedstore import EmbeddingStore
    keys, step, seconds = _store_keys(n), -(-n // INCREMENTS), 0.0
    npz = folder / "old.npz"
    for first in range(0, n, step):
        began = time.perf_counter()
        known = _npz_read(npz) if way == "npz" else EmbeddingStore(folder / "store").writer()
        seconds += time.perf_counter() - began
        for start in range(first, min(first + step, n), WRITE_BATCH):
            vectors = _rows(start, min(WRITE_BATCH, first + step - start, n - start))
            part = keys[start:start + len(vectors)]
            began = time.perf_counter()
            if way == "npz":  # today's: all rows in a dict, then all rewritten
                known.update(zip((k[0] for k in part), vectors))
            else:
                known.add(part, vectors)
            seconds += time.perf_counter() - began
        began = time.perf_counter()
        if way == "npz":
            tmp = folder / f".old.{os.getpid()}.tmp.npz"
            np.savez(tmp, paths=np.array(list(known)), embeddings=np.stack(list(known.values())))
            os.replace(tmp, npz)
        else:
            known.commit()
        del known
        seconds += time.perf_counter() - began
    disk = npz.stat().st_size if way == "npz" else \
        sum(p.stat().st_size for p in (folder / "store").iterdir())
    return {"rows_per_s": n / seconds, "disk_bytes": disk}


def _npz_read(path: Path) -> dict:
    """As the old cityclf.embeddings._read did."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return dict(zip(saved["paths"].tolist(), saved["embeddings"]))
    except OSError:
        return {}


def _store_lookup(way: str, folder: Path, n: int) -> dict:
    from cityclf.embedstore import EmbeddingStore
    keys = _store_keys(n)
    order = np.random.default_rng(0).permutation(n)
    subset = [keys[i] for i in order[:SUBSET]]
    every = [keys[i] for i in order]
    result = {}
    for name, query in (("subset_", subset), ("all_", every)):
        began = time.perf_counter()
        if way == "npz":
            known = _npz_read(folder / "old.npz")
            got = np.stack([known[k[0]] for k in query])
            del known
        else:
            got = EmbeddingStore(folder / "store").rows(query).read()
        result[f"{name}rows_per_s"] = len(got) / (time.perf_counter() - began)
        del got
    return result


def _store_stream(way: str, folder: Path, n: int) -> dict:
    """Every row, shuffled, a bounded chunk at a time: what the streamed head reads per pass."""
    from cityclf.embedstore import EmbeddingStore
    keys = _store_keys(n)
    every = [keys[i] for i in np.random.default_rng(0).permutation(n)]
    began, total = time.perf_counter(), 0.0
    for chunk in EmbeddingStore(folder / "store").rows(every).chunks():
        total += float(chunk[:, 0].sum())
    return {"rows_per_s": n / (time.perf_counter() - began)}


# ------------------------------------------------------------------------- (c) streaming head
def head_speed(folder: Path, report: Report, rows: int, classes: int, subsample: int) -> None:
    made = _child("head_data", "store", folder, rows, classes)
    report(f"head: {rows} training + {rows // 10} validation rows x {DIM} float16, {classes} "
           f"classes", f"written in {made['seconds']:.0f} s ({_mib_of(made['disk_bytes'])})")
    streamed = _child("head_fit", "stream", folder, rows, classes, subsample)
    memory = _child("head_fit", "memory", folder, rows, classes, subsample, streamed["C"])
    scale = MSLS_IMAGES / rows
    report("head: fit_head_streaming (C chosen on the subsample's grid)",
           f"{streamed['seconds']:.0f} s ({streamed['grid_seconds']:.0f} s choosing C on "
           f"{subsample} rows, {streamed['iterations']} L-BFGS iterations on all), peak RSS "
           f"{_mib(streamed)}; val loss {streamed['val_loss']:.4f}, accuracy "
           f"{streamed['val_accuracy']:.4f}")
    report("head: fit_head in memory at the same C only (today; its 9-C grid costs more)",
           f"{memory['seconds']:.0f} s, peak RSS {_mib(memory)}; val loss "
           f"{memory['val_loss']:.4f}, accuracy {memory['val_accuracy']:.4f}")
    stream_1m6 = streamed["grid_seconds"] + (streamed["seconds"] - streamed["grid_seconds"]) * scale
    memory_gib = (memory["rss_kib"] - memory["base_kib"]) * 1024 * scale / 2**30
    index_gib = INDEX_BYTES_PER_ROW * (MSLS_IMAGES - rows * 1.1) / 2**30
    report("head: projected to 1.6 M rows (linear in rows, same iterations)",
           f"streaming ~{stream_1m6 / 60:.0f} min, peak RSS as above + {index_gib:.1f} GiB of "
           f"store index; in memory ~{memory['seconds'] * scale / 60:.0f} min per C and "
           f"~{memory_gib:.0f} GiB")


def _head_data(folder: Path, n: int, classes: int) -> dict:
    """Pooled-ReLU-like features: a city centre per class plus noise, clipped at 0."""
    from cityclf.embedstore import EmbeddingStore
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (classes, DIM)) * rng.uniform(0, 2, DIM)
    y = rng.integers(0, classes, n + n // 10)
    keys, began = _head_keys(len(y)), time.perf_counter()
    with EmbeddingStore(folder / "head").writer() as writer:
        for start in range(0, len(y), 4096):
            t = y[start:start + 4096]
            x = np.maximum(centres[t] + 2.5 * rng.standard_normal((len(t), DIM), np.float32), 0)
            writer.add(keys[start:start + 4096], x)
    np.save(folder / "labels.npy", y)
    disk = sum(p.stat().st_size for p in (folder / "head").iterdir())
    return {"seconds": time.perf_counter() - began, "disk_bytes": disk}


def _head_keys(n: int) -> list[tuple[str, int, int]]:
    return [(f"/head/{i:08d}.jpg", 0, i) for i in range(n)]


def _head_fit(way: str, folder: Path, n: int, classes: int, subsample: int,
              C: float | None = None) -> dict:
    from cityclf.embedstore import EmbeddingStore
    from cityclf.head import fit_head, fit_head_streaming
    y = np.load(folder / "labels.npy")
    rows = EmbeddingStore(folder / "head").rows(_head_keys(len(y)))
    train, val = rows[:n], rows[n:]
    base = _peak_kib()
    began = time.perf_counter()
    if way == "stream":
        fit = fit_head_streaming(train, y[:n], val, y[n:], classes, subsample=subsample)
        row = fit.chosen
        grid = row["choose_C_seconds"]
    else:
        fit = fit_head(train.read(), y[:n], val.read(), y[n:], classes, grid=(C,))
        row, grid = fit.chosen, 0.0
    return {"seconds": time.perf_counter() - began, "grid_seconds": grid, "C": fit.C,
            "iterations": row.get("iterations"), "val_loss": row["val_loss"],
            "val_accuracy": row["val_accuracy"], "base_kib": base}


# ---------------------------------------------------------------------------- child processes
def _peak_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and
    exec, so a child would report its parent's peak (here, TensorFlow's)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _mib_of(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def _mib(result: dict) -> str:
    peak = result["rss_kib"] / 1024
    return f"{peak:,.0f} MiB ({peak - result['base_kib'] / 1024:,.0f} over the imports)"


def _child(task: str, way: str, folder: Path, *args) -> dict:
    """Run one measurement in a fresh process: its peak RSS is then its own."""
    out = subprocess.run([sys.executable, __file__, "--child", task, way, str(folder),
                          *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(task: str, way: str, folder: str, *args: str) -> None:
    from cityclf import embedstore, head  # what every variant imports, before the baseline
    del embedstore, head
    base = _peak_kib()
    numbers = [float(a) if "." in a or "e" in a else int(a) for a in args]
    work = {"write": _store_write, "lookup": _store_lookup, "stream": _store_stream,
            "head_data": _head_data, "head_fit": _head_fit}[task]
    result = work(*(([way] if task != "head_data" else []) + [Path(folder)] + numbers))
    result["rss_kib"] = _peak_kib()
    result.setdefault("base_kib", base)
    print(json.dumps(result))


def _make_jpegs(folder: Path, n: int) -> list[str]:
    """n small JPEGs (64x48 noise, a few hundred distinct) in an MSLS-like tree."""
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"city{i % 20:02d}" / "query" / "images" / f"{i:08d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(path, quality=70)
        paths.append(str(path))
    return paths


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="small JPEGs to make")
    parser.add_argument("--keras-images", type=int, default=512)
    parser.add_argument("--litert-images", type=int, default=2048)
    parser.add_argument("--store-rows", type=int, default=200_000)
    parser.add_argument("--head-rows", type=int, default=300_000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--subsample", type=int, default=20_000,
                        help="rows C is chosen on (cityclf's default: 100,000)")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cityclf-jpegs-") as folder:
        paths = _make_jpegs(Path(folder), args.images)
        run(paths, lambda name, value: print(f"{name}: {value}", flush=True), args.keras_images,
            args.litert_images, args.store_rows, args.head_rows, args.classes, args.subsample)
    print(f"total: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
