"""Active learning, simulated on the demo: how many labels does each way of choosing them need?

The demo's training split is the pool; its cities are hidden and revealed only when a photo is
queried. Each run starts from one labelled sequence per city, queries batches of 40 photos with
cityclf.active.query (random, uncertainty, uncertainty + diversity), and after each batch solves
the head (logistic regression at a fixed C, as `cityclf pool update` does) and scores it on the
test split. The classifier and embeddings are the `--recipe fast` run's: MobileNetV2 at 224 px.
C is the one a head on the whole labelled training split chooses on validation.

Also measured: label-issue finding (cityclf.label_issues) on 5 % of training labels flipped,
and pseudo-labels (confident pool photos under their predicted city) on top of the best
strategy.

    .venv/bin/python bench/active.py [--seeds 3] [--budget 400] [--update-run RUN]

With --update-run, it instead times `cityclf pool update` for that run of the demo on a pool of
freshly drawn demo photos, 40 of them labelled: the first update (which embeds the run's own
photos once) and a second one (cached), against the run's own training time.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

BATCH = 40


def demo_embeddings():
    """MobileNetV2 embeddings of the demo's images (cached), labels, split and sequences."""
    from cityclf import config, zoo
    from cityclf.datasets import scan
    from cityclf.embeddings import embed
    from cityclf.pipeline import Preprocess
    from cityclf.splits import group_keys, load_split
    root = config.demo_dir()
    if not (root / "train_val").is_dir():
        from cityclf.synth import synthesize
        synthesize(root, progress=False)
    table = load_split(scan(root, progress=False), "sequence")
    classes = sorted(table["city"].unique())
    backbone = zoo.build("mobilenet_v2", len(classes), 224).parts[0][1]
    x, ok = embed(backbone, "mobilenet_v2-imagenet", scan(root, progress=False).id,
                  table["path"].to_numpy(), Preprocess(224), progress=True)
    table = table[ok].reset_index(drop=True)
    y = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return x[ok], y, table["split"].to_numpy(), group_keys(table).to_numpy(), len(classes)


def accuracy(fit, x, y) -> float:
    return float((fit.probabilities(x).argmax(1) == y).mean())


def simulate(x, y, split, groups, n_classes, C, strategy, seed, budget, pseudo=False):
    """Test accuracy after 0, 40, 80, ... queried labels (beyond the starting sequences)."""
    from cityclf.active import pseudo_threshold, query
    from cityclf.head import fit_head
    train, val, test = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    rng = np.random.default_rng(seed)
    start = []
    for city in range(n_classes):  # one whole sequence of each city, drawn at random
        sequences = np.unique(groups[train][y[train] == city])
        start += list(train[groups[train] == rng.choice(sequences)])
    known = np.array(start)
    curve = []
    while True:
        fit = fit_head(x[known], y[known], x[val], y[val], n_classes, grid=(C,))
        if pseudo:
            threshold = pseudo_threshold(fit.probabilities(x[val]), y[val])
            rest = np.setdiff1d(train, known)
            if threshold is not None and len(rest):
                probabilities = fit.probabilities(x[rest])
                sure = probabilities.max(1) >= threshold
                if sure.any():
                    fit = fit_head(np.vstack([x[known], x[rest][sure]]),
                                   np.concatenate([y[known], probabilities[sure].argmax(1)]),
                                   x[val], y[val], n_classes, grid=(C,))
        curve.append(accuracy(fit, x[test], y[test]))
        spent = len(known) - len(start)
        if spent >= budget:
            return np.array(curve), len(start)
        pool = np.setdiff1d(train, known)
        chosen = query(x[known], y[known], x[pool], C, n_classes, strategy, BATCH, seed)
        known = np.concatenate([known, pool[chosen]])


def labels_to_reach(curve: np.ndarray, target: float) -> str:
    reached = np.flatnonzero(curve >= target - 1e-9)
    return f"{reached[0] * BATCH}" if len(reached) else f"> {(len(curve) - 1) * BATCH}"


def time_update(run_id: str) -> None:
    """`active.update` on a pool of new demo photos with 40 labels, cold then warm."""
    import shutil
    import tempfile
    from pathlib import Path

    from cityclf import active
    from cityclf.pool import Pool
    from cityclf.runs import get_run
    from cityclf.synth import synthesize
    run = get_run(run_id)
    scratch = Path(tempfile.mkdtemp(prefix="cityclf-pool-"))
    drawn = synthesize(scratch / "drawn", cities=run.classes, per_city=12, seed=77,
                       progress=False)
    folder, truth = scratch / "pool", {}
    folder.mkdir()
    for i, path in enumerate(sorted(drawn.rglob("images/*.jpg"))):
        shutil.copy(path, folder / f"{i:04d}.jpg")
        truth[str(folder / f"{i:04d}.jpg")] = path.relative_to(drawn).parts[1]
    pool = Pool.open(folder)
    for path in list(truth)[:40]:
        pool.add_label(path, truth[path])
    timings = []
    for attempt in ("first (embeds the run's photos)", "second (cached)"):
        began = time.perf_counter()
        child = active.update(run, pool, progress=False)
        timings.append(time.perf_counter() - began)
        print(f"update, {attempt}: {timings[-1]:.1f} s -> {child.id} "
              f"(test top-1 {child.metrics['top1']:.3f}, parent {run.metrics['top1']:.3f})")
    trained = run.info["timings"]["train_seconds"]
    print(f"the run itself trained in {trained:.0f} s: a cached update is "
          f"{trained / timings[-1]:.0f}x faster")
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--update-run", help="time `cityclf pool update` for this demo run instead")
    args = parser.parse_args()
    if args.update_run:
        time_update(args.update_run)
        return
    from cityclf.active import STRATEGIES
    from cityclf.head import fit_head
    from cityclf.label_issues import find_issues

    x, y, split, groups, n_classes = demo_embeddings()
    train, val = split == "train", split == "val"
    full = fit_head(x[train], y[train], x[val], y[val], n_classes)
    C = full.C
    print(f"demo: {train.sum()} pool photos, {(split == 'test').sum()} test photos, "
          f"{n_classes} cities; head C = {C}; all {train.sum()} labels give test top-1 "
          f"{accuracy(full, x[split == 'test'], y[split == 'test']):.3f}")

    curves, seconds = {}, {}
    for strategy in STRATEGIES:
        began = time.perf_counter()
        runs = [simulate(x, y, split, groups, n_classes, C, strategy, seed, args.budget)
                for seed in range(args.seeds)]
        seconds[strategy] = (time.perf_counter() - began) / args.seeds
        curves[strategy] = np.mean([curve for curve, _ in runs], axis=0)
        start = runs[0][1]
    print(f"\ntest top-1 after each batch of {BATCH} (mean of {args.seeds} seeds; "
          f"{start}-odd starting labels, one sequence per city, not counted)")
    print("labels " + " ".join(f"{k * BATCH:>6}" for k in range(len(curves['random']))))
    for strategy, curve in curves.items():
        print(f"{strategy:>22}: " + " ".join(f"{v:6.3f}" for v in curve)
              + f"   ({seconds[strategy]:.0f} s per simulation)")
    target = curves["random"][-1]
    print(f"\nlabels needed to reach random sampling's top-1 at {args.budget} labels "
          f"({target:.3f}):")
    for strategy, curve in curves.items():
        print(f"  {strategy}: {labels_to_reach(curve, target)}")

    best = max((s for s in STRATEGIES if s != "random"),
               key=lambda s: curves[s][len(curves[s]) // 2:].mean())
    pseudo = np.mean([simulate(x, y, split, groups, n_classes, C, best, seed, args.budget,
                               pseudo=True)[0] for seed in range(args.seeds)], axis=0)
    print(f"\npseudo-labels with {best}: " + " ".join(f"{v:6.3f}" for v in pseudo))
    print(f"  change against without: mean {100 * (pseudo - curves[best]).mean():+.1f} pp, "
          f"at {args.budget} labels {100 * (pseudo[-1] - curves[best][-1]):+.1f} pp")

    rng = np.random.default_rng(0)
    rows = np.flatnonzero(train)
    flipped = rng.choice(rows, size=round(0.05 * len(rows)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    print(f"\nlabel issues on {len(flipped)} flipped of {len(rows)} training labels (5 %):")
    for by in ("image", "sequence"):
        began = time.perf_counter()
        found = find_issues(x[rows], noisy[rows], groups[rows], n_classes, C, by=by)
        flagged = set(rows[found["row"]])
        hits = len(flagged & set(flipped))
        print(f"  folds by {by}: {len(flagged)} flagged, recall {hits / len(flipped):.2f}, "
              f"precision {hits / max(1, len(flagged)):.2f} ({time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
