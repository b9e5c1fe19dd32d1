"""`cityclf data scan` at MSLS scale, each way against today's in the same run, projected to 1.6 M.

Writes an MSLS-shaped tree of tiny JPEGs (a few hundred distinct ones written under many keys, so
it takes seconds), with MSLS's CSVs per city and subset and cities as unequal as MSLS's, then
times: the first scan in parallel, single-process, and today's way (the scan of commit TODAY,
whose header loop assigns each image's size to its pandas row); the re-scan of the unchanged
tree, new and today's; and each one's peak memory against the manifest's own size. Every scan
runs in a fresh process with its own cityclf home, so its peak RSS and cache are its own. Last,
bench/scale_embeddings.py (when present) is run on a sample of the tree's images.

    .venv/bin/python bench/scale.py [--files 100000] [--out DIR] [--trials 3] [--skip-today]
        [--skip-embeddings]

The machine is shared, so its speed drifts: the new scan runs in paired trials (parallel and
single-process back to back, in turn) and ratios are taken within a trial. Today's first scan
takes minutes at 100,000 images, so it runs once.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TODAY = "e634d23302e6af600e9e9ff3653801923da43857"  # the last commit with the per-row scan
MSLS_IMAGES = 1_600_000
CITIES = ("melbourne", "london", "tokyo", "boston", "saopaulo", "moscow", "toronto", "amsterdam",
          "helsinki", "paris", "bangkok", "berlin", "phoenix", "zurich", "budapest", "trondheim",
          "austin", "ottawa", "goa", "amman", "nairobi", "manila", "cph", "sf")
TEST_CITIES = ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala")
ZIPF = 1.2  # city sizes fall as 1/rank^1.2: the largest is ~60× the smallest of 30
DISTINCT_JPEGS = 300
BROKEN_EVERY = 20_000  # one truncated JPEG per this many files, so skipping is exercised
KEY_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                             "S1")


def _jpegs(rng) -> list[bytes]:
    """A few hundred distinct tiny JPEGs (mostly 64×48, some portrait), encoded once."""
    blobs = []
    for i in range(DISTINCT_JPEGS):
        size = (48, 64) if i % 10 == 0 else (64, 48)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
        blobs.append(buffer.getvalue())
    return blobs


def _keys(rng, n: int) -> np.ndarray:
    """n random 22-character keys like MSLS's."""
    return KEY_ALPHABET[rng.integers(0, len(KEY_ALPHABET), (n, 22))].view("S22").ravel().astype(str)


def _city_sizes(n_files: int) -> dict[tuple[str, str], int]:
    """Images per (split, city): Zipf-like, shuffled so size has nothing to do with name."""
    names = [("train_val", c) for c in CITIES] + [("test", c) for c in TEST_CITIES]
    weights = 1 / np.arange(1, len(names) + 1) ** ZIPF
    order = np.random.default_rng(1).permutation(len(names))
    counts = np.maximum(np.floor(weights / weights.sum() * n_files).astype(int), 8)
    counts[0] += n_files - counts.sum()
    return {names[i]: int(counts[rank]) for rank, i in enumerate(order)}


def _subset_tables(rng, n: int, test: bool) -> dict[str, pd.DataFrame]:
    """The CSVs of one query/database folder (MSLS's test cities have only two of them)."""
    keys = _keys(rng, n)
    lengths = rng.integers(4, 13, n // 4 + 1)
    sequence = np.repeat(np.arange(len(lengths)), lengths)[:n]
    frame = np.arange(n) - np.searchsorted(sequence, sequence)
    sequence_keys = _keys(rng, len(lengths))[sequence]
    pano = (rng.random(len(lengths)) < 0.015)[sequence]
    night = (rng.random(len(lengths)) < 0.1)[sequence]
    captured = (rng.integers(1_400_000_000, 1_600_000_000, len(lengths))[sequence] * 1000
                + frame * 2000)
    flags = {c: rng.random(n) < 0.5 for c in ("w2s", "s2w", "d2n", "n2d", "o2n", "n2o")}
    tables = {"seq_info.csv": pd.DataFrame({"key": keys, "sequence_key": sequence_keys,
                                            "frame_number": frame}),
              "subtask_index.csv": pd.DataFrame({"key": keys, **flags, "all": True})}
    if not test:
        lat, lon = rng.uniform(-40, 60), rng.uniform(-120, 150)
        tables["raw.csv"] = pd.DataFrame({
            "key": keys, "lon": (lon + rng.normal(0, 0.03, n)).round(7),
            "lat": (lat + rng.normal(0, 0.03, n)).round(7), "ca": rng.uniform(0, 360, n).round(2),
            "captured_at": captured, "pano": pano})
        tables["postprocessed.csv"] = pd.DataFrame({
            "key": keys, "easting": rng.uniform(3e5, 7e5, n).round(3),
            "northing": rng.uniform(1e6, 6e6, n).round(3), "unique_cluster": sequence,
            "control_panel": rng.random(n) < 0.05, "night": night,
            "view_direction": np.array(["Forward", "Backward", "Sideways"])[
                rng.integers(0, 3, len(lengths))[sequence]]})
    return tables


def generate(out: Path, n_files: int, seed: int = 0) -> list[str]:
    """Write the tree under `out`; returns the image paths written, in writing order."""
    rng = np.random.default_rng(seed)
    blobs = _jpegs(rng)
    paths, written = [], 0
    for (split, city), count in _city_sizes(n_files).items():
        n_query = max(1, round(0.2 * count))
        for subset, n in (("query", n_query), ("database", count - n_query)):
            folder = out / split / city / subset
            (folder / "images").mkdir(parents=True, exist_ok=True)
            tables = _subset_tables(rng, n, split == "test")
            for name, table in tables.items():
                table.to_csv(folder / name)
            for key in tables["seq_info.csv"]["key"]:
                path = f"{folder}/images/{key}.jpg"
                blob = blobs[written % len(blobs)]
                written += 1
                with open(path, "wb") as file:
                    file.write(blob[:100] if written % BROKEN_EVERY == 0 else blob)
                paths.append(path)
    return paths


# ------------------------------------------------------------------------------- one scan
def _today_module():
    """cityclf.datasets as of commit TODAY, loaded from git: today's way, exactly."""
    import types
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{TODAY}:cityclf/datasets.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("cityclf.datasets_today")
    module.__package__ = "cityclf"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"cityclf/datasets.py@{TODAY[:7]}", "exec"), module.__dict__)
    return module


def _cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the pool's workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(way: str, root: str, workers: int, out: Path) -> None:
    """One scan in this fresh process (its cityclf home set by the parent); writes its figures
    to out/result.json and the manifest to out/manifest.parquet for the comparison."""
    import importlib
    importlib.import_module("pyarrow.parquet")  # what any scan imports: a fixed cost, not its own
    from cityclf import datasets
    module = _today_module() if way == "today" else datasets
    timed = {"headers": 0.0, "cpu": 0.0}
    if way != "today":  # the header reading alone, the part that runs in parallel
        read_headers = datasets._read_headers

        def timed_read(*args):
            start, cpu = time.perf_counter(), _cpu_seconds()
            try:
                return read_headers(*args)
            finally:  # the pool's workers have been waited for: their CPU time is counted
                timed["headers"] += time.perf_counter() - start
                timed["cpu"] += _cpu_seconds() - cpu
        datasets._read_headers = timed_read
    before = _rss_mib()
    start = time.perf_counter()
    dataset = (module.scan(root, progress=False) if way == "today"
               else module.scan(root, progress=False, workers=workers))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.mkdir(parents=True, exist_ok=True)
    dataset.manifest.to_parquet(out / "manifest.parquet")
    skipped = sorted(map(tuple, dataset.skipped.astype(str).to_numpy().tolist()))
    (out / "result.json").write_text(json.dumps({
        "seconds": seconds, "header_seconds": timed["headers"], "header_cpu": timed["cpu"],
        "opened": dataset.opened,
        "images": len(dataset.manifest), "skipped": skipped, "problems": dataset.problems,
        "rss_before_mib": before, "peak_mib": peak, "workers_peak_mib": workers_peak,
        "manifest_mib": dataset.manifest.memory_usage(deep=True).sum() / 2**20}))


def measure(way: str, root: Path, home: Path, workers: int, out: Path) -> dict:
    """Run `child` in a fresh process with `home` as its cityclf home; its result."""
    env = dict(os.environ, CITYCLF_HOME=str(home))
    subprocess.run([sys.executable, __file__, "--child", way, "--out", str(root),
                    "--workers", str(workers), "--result", str(out)], env=env, check=True)
    result = json.loads((out / "result.json").read_text())
    result["manifest"] = out / "manifest.parquet"
    return result


# ------------------------------------------------------------------------------ reporting
def report(name: str, value: str) -> None:
    """One figure, one line (also what bench/scale_embeddings.py reports through)."""
    print(f"  {name:<46} {value}", flush=True)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _cores(r: dict) -> str:
    """How many cores' worth of CPU the header reading got (CPU seconds per second): below the
    workers' count, other processes held the rest; the kernel shares the CPUs by session."""
    return f"{r['header_cpu'] / r['header_seconds']:.1f}"


def _same(a: dict, b: dict) -> bool:
    """Whether two scans gave the same manifest, skipped files and notes."""
    try:
        pd.testing.assert_frame_equal(pd.read_parquet(a["manifest"]),
                                      pd.read_parquet(b["manifest"]))
    except AssertionError:
        return False
    return a["skipped"] == b["skipped"] and a["problems"] == b["problems"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="images in the tree")
    parser.add_argument("--out", help="write (or re-use) the tree here and keep it "
                                      "(default: a temporary folder, removed at the end)")
    parser.add_argument("--workers", type=int, default=0, help="0: one per usable core")
    parser.add_argument("--trials", type=int, default=3,
                        help="paired trials of the new scan (the machine's speed drifts)")
    parser.add_argument("--skip-today", action="store_true",
                        help="skip today's first scan (minutes at 100,000 files)")
    parser.add_argument("--skip-embeddings", action="store_true")
    parser.add_argument("--child", choices=["today", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.out, args.workers, Path(args.result))

    from cityclf.datasets import _usable_cores
    workers = args.workers or _usable_cores()
    work = Path(tempfile.mkdtemp(prefix="cityclf-scale-"))
    root = Path(args.out) if args.out else work / "msls"
    try:
        start = time.perf_counter()
        if (root / "train_val").is_dir():
            paths = sorted(str(p) for p in root.glob("*/*/*/images/*.jpg"))
            print(f"re-using the tree in {root} ({len(paths):,} images)")
        else:
            paths = generate(root, args.files)
            print(f"wrote {len(paths):,} images in {_seconds(time.perf_counter() - start)} "
                  f"to {root}")
        n = len(paths)
        scale = MSLS_IMAGES / n
        sizes = pd.Series([len(list(c.glob("*/images/*"))) for c in root.glob("*/*/")])
        load_before = os.getloadavg()[0]
        print(f"{len(sizes)} cities, {sizes.max():,} to {sizes.min():,} images "
              f"({sizes.max() / sizes.min():.0f}x); {workers} worker(s); "
              f"load average: {load_before:.1f}")

        print(f"\nfirst scan and re-scan, new: {args.trials} paired trials, parallel and "
              f"single-process in turn (each scan in a fresh process and cityclf home)")
        trials = []
        for t in range(args.trials):
            trial = {}
            for name, n_workers in [("parallel", workers), ("single", 1)][::1 - 2 * (t % 2)]:
                trial[name] = measure("new", root, work / f"home-{name}-{t}", n_workers,
                                      work / f"{name}-{t}")
            trial["re-scan"] = measure("new", root, work / f"home-parallel-{t}", workers,
                                       work / f"re-scan-{t}")
            trials.append(trial)
            p, s = trial["parallel"], trial["single"]
            report(f"trial {t + 1}: parallel, single, re-scan",
                   f"{p['seconds']:.1f} s, {s['seconds']:.1f} s "
                   f"({s['seconds'] / p['seconds']:.2f}x; header reading alone "
                   f"{s['header_seconds'] / p['header_seconds']:.2f}x on {_cores(p)} vs "
                   f"{_cores(s)} cores), {trial['re-scan']['seconds']:.1f} s")

        def median(name: str, key: str = "seconds") -> float:
            return float(np.median([trial[name][key] for trial in trials]))

        def ratios(key: str = "seconds") -> str:
            r = [trial["single"][key] / trial["parallel"][key] for trial in trials]
            return f"{np.median(r):.2f}x (trials {min(r):.2f}-{max(r):.2f})"

        first, again = trials[0]["parallel"], trials[0]["re-scan"]
        today = {}
        if not args.skip_today and subprocess.run(
                ["git", "-C", str(REPO), "cat-file", "-e", f"{TODAY}:cityclf/datasets.py"],
                capture_output=True).returncode:
            print(f"\ntoday's way skipped: commit {TODAY[:7]} is not in this checkout")
        elif not args.skip_today:
            print("\ntoday's way (commit " + TODAY[:7] + "), once: minutes at 100,000 images")
            today["first"] = measure("today", root, work / "home-today", 1, work / "today")
            today["re-scan"] = measure("today", root, work / "home-today", 1, work / "re-today")
            for name, r in today.items():
                report(name, f"{_seconds(r['seconds'])}, {r['opened']:,} opened")
        report("same manifest, skipped, notes: single-process",
               "yes" if _same(first, trials[0]["single"]) else "NO")
        report("same manifest, skipped, notes: re-scan",
               "yes" if _same(first, again) and again["opened"] == 0 else "NO")
        if today:
            report("same manifest, skipped, notes: today's way",
                   "yes" if _same(first, today["first"]) else "NO")

        print("\npeak memory (RSS of the scanning process, largest over the trials; after "
              f"imports: {first['rss_before_mib']:.0f} MiB)")
        manifest = first["manifest_mib"]
        report("manifest (memory_usage(deep=True))",
               f"{manifest:.1f} MiB; 1.6 M: {manifest * scale / 1024:.2f} GiB")
        memory = {}
        for name, key in (("first scan, parallel", "parallel"), ("first scan, single", "single"),
                          ("re-scan", "re-scan")):
            worst = max((trial[key] for trial in trials),
                        key=lambda r: r["peak_mib"] - r["rss_before_mib"])
            memory[name] = worst
        memory.update({f"{name}, today's way": r for name, r in
                       (("first scan", today.get("first")), ("re-scan", today.get("re-scan")))
                       if r})
        growths = {}
        for name, r in memory.items():
            growth = growths[name] = r["peak_mib"] - r["rss_before_mib"]
            workers_note = (f"; largest worker {r['workers_peak_mib']:.0f} MiB"
                            if name == "first scan, parallel" else "")
            report(name, f"peak {r['peak_mib']:.0f} MiB, +{growth:.0f} MiB over imports = "
                         f"{growth / manifest:.1f}x the manifest{workers_note}; 1.6 M: "
                         f"~{(r['rss_before_mib'] + growth * scale) / 1024:.1f} GiB")

        print(f"\nsummary ({n:,} images in {len(sizes)} cities; {workers} cores; load average "
              f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; medians of "
              f"{args.trials} trials; 1.6 M projections are linear, fixed costs scaled too)")
        lines = [("first scan, parallel", f"{median('parallel'):.1f} s "
                                          f"(1.6 M: {_seconds(median('parallel') * scale)})"),
                 ("  vs single-process new", ratios()),
                 ("  header reading alone, vs single", ratios("header_seconds")),
                 ("  cores' worth it got, parallel vs single",
                  " ".join(f"{_cores(t['parallel'])}/{_cores(t['single'])}" for t in trials)),
                 ("  its CPU seconds, parallel vs single",
                  f"{median('parallel', 'header_cpu'):.1f} vs {median('single', 'header_cpu'):.1f}"
                  )]
        if today:
            t = today["first"]["seconds"]
            lines.append(("  vs today's way", f"{t / median('parallel'):.1f}x (today: "
                                              f"{_seconds(t)}, 1.6 M: {_seconds(t * scale)})"))
        lines.append(("re-scan, unchanged tree", f"{median('re-scan'):.1f} s "
                                                 f"(1.6 M: {_seconds(median('re-scan') * scale)})"))
        if today:
            t = today["re-scan"]["seconds"]
            lines.append(("  vs today's way", f"{t / median('re-scan'):.1f}x (today: "
                                              f"{_seconds(t)}, 1.6 M: {_seconds(t * scale)})"))
        for name in ("first scan, parallel", "re-scan"):
            r = memory[name]
            lines.append((f"peak memory, {name.split(',')[0]}",
                          f"+{growths[name]:.0f} MiB = {growths[name] / manifest:.1f}x the "
                          f"manifest ({manifest:.0f} MiB); 1.6 M: ~"
                          f"{(r['rss_before_mib'] + growths[name] * scale) / 1024:.1f} GiB"))
        for name, value in lines:
            report(name, value)

        if not args.skip_embeddings and (REPO / "bench" / "scale_embeddings.py").is_file():
            print("\nembeddings (bench/scale_embeddings.py)", flush=True)
            sys.path.insert(0, str(REPO / "bench"))
            import scale_embeddings
            scale_embeddings.run(paths[:3000], report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
