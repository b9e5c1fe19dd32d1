"""Test-time augmentation (cityclf.tta) against plain prediction: top-1 and time per image, for a
MobileNetV2 head run on a demo-like synthetic dataset's test split, in one run.

Both ways read the test images from disk as `cityclf evaluate` does (tf.data decoding, the run's
fast path), so the time per image is what an evaluation pays, decoding included; the model's
share is shown beside it. The TTA views are combined both ways cityclf could (mean probability,
mean log-probability), and each view is scored alone, to show which views help. The dataset and
the run are made on first use in their own cityclf home (a few minutes) and re-used after. Run:
    .venv/bin/python bench/tta.py [--home /tmp/cityclf-bench-tta] [--per-city 300] [--repeats 3]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cityclf import config, tta  # noqa: E402
from cityclf.datasets import scan  # noqa: E402
from cityclf.fast import FastPredictor  # noqa: E402
from cityclf.inference import best_predictor, run_preprocess  # noqa: E402
from cityclf.metrics import combine_probabilities, compute_metrics, predictions_table  # noqa: E402
from cityclf.pipeline import load_images  # noqa: E402
from cityclf.runs import list_runs  # noqa: E402
from cityclf.synth import synthesize  # noqa: E402
from cityclf.train import TrainConfig, train  # noqa: E402


def mobilenet_run(root: Path, per_city: int, seed: int):
    """The dataset's MobileNetV2 head run (224 px, sequence split, as the demo's), made if none."""
    if not (root / "train_val").is_dir():
        synthesize(root, per_city=per_city, seed=seed, progress=False)
    dataset = scan(root, progress=False)
    for run in list_runs(dataset.id):
        if run.info["model"] == "mobilenet_v2" and run.info["split"]["method"] == "sequence":
            return run, dataset
    cfg = TrainConfig(data=str(root), model="mobilenet_v2", img_size=224, epochs=40, patience=5)
    return train(cfg, progress=False), dataset


def plain(predictor, paths, pre):
    """(n, C) probabilities, kept rows, model seconds: as `cityclf evaluate` without TTA."""
    images, rows = load_images(paths, pre)
    start = time.perf_counter()
    probabilities = predictor.predict_proba(images)
    return probabilities, rows, time.perf_counter() - start


def timed(way, repeats):
    """The result and wall-clock seconds of the way's fastest repeat (the machine is shared)."""
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = way()
        seconds = time.perf_counter() - start
        if best is None or seconds < best[1]:
            best = result, seconds
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/cityclf-bench-tta"))
    parser.add_argument("--per-city", type=int, default=300, help="images per city (8 cities)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic dataset's seed")
    parser.add_argument("--repeats", type=int, default=3, help="timings per way; the best counts")
    args = parser.parse_args()
    os.environ["CITYCLF_HOME"] = str(args.home.resolve())
    run, dataset = mobilenet_run(config.data_dir() / "tta-bench", args.per_city, args.seed)
    test = run.predictions()[["path", "true_city"]]
    paths = test["path"].to_numpy()
    predictor, pre = best_predictor(run), run_preprocess(run)

    (probs, rows, plain_model), plain_wall = timed(lambda: plain(predictor, paths, pre),
                                                   args.repeats)
    (views, view_rows, tta_model), tta_wall = timed(
        lambda: tta.predict_paths(predictor, paths, pre), args.repeats)
    assert (rows == view_rows).all()
    n, truth = len(rows), test["true_city"].to_numpy()[rows]

    def scores(probabilities):
        table = predictions_table(paths[rows], truth, probabilities, run.classes)
        return compute_metrics(table, run.classes, dataset.manifest)

    ways = {"plain": (probs, plain_wall, plain_model),
            "TTA, mean probability (cityclf)": (tta.combine(views), tta_wall, tta_model),
            "TTA, mean log-probability": (combine_probabilities(views, axis=1), None, None)}
    found = {name: scores(probabilities) for name, (probabilities, _, _) in ways.items()}
    engine = "LiteRT fast path" if isinstance(predictor, FastPredictor) else "Keras"
    print(f"run {run.id}: {n} test images in {found['plain']['n_sequences']} sequences, "
          f"{tta.N_VIEWS} views (crops at scale {tta.SCALE}), {engine}")
    print(f"{'':32} {'top-1':>6} {'per sequence':>12} {'ms/image':>9} {'model ms':>9}")
    for name, (_, wall, model) in ways.items():
        timing = f" {1000 * wall / n:9.2f} {1000 * model / n:9.2f}" if wall else ""
        print(f"{name:32} {found[name]['top1']:6.3f} {found[name]['sequence_top1']:12.3f}{timing}")
    for v, (scale, top, left) in enumerate(tta.VIEWS):
        print(f"  view {v} alone (scale {scale}, top {top}, left {left}): "
              f"{scores(views[:, v])['top1']:.3f}")
    plain_scores, tta_scores = found["plain"], found["TTA, mean probability (cityclf)"]
    print(f"ratio TTA / plain: {tta_wall / plain_wall:.1f}x the time per image "
          f"({tta_model / plain_model:.1f}x the model's); top-1 "
          f"{tta_scores['top1'] - plain_scores['top1']:+.3f}, per sequence "
          f"{tta_scores['sequence_top1'] - plain_scores['sequence_top1']:+.3f}")


if __name__ == "__main__":
    main()
