"""How well the scene tagger agrees with the synthetic ground truth, and how fast it is.

A fresh synthetic dataset (a seed never used for fitting) is tagged in an empty cityclf home, so
the time includes every MobileNetV2 embedding (but not the one-off weight conversion). Run:
    .venv/bin/python bench/scenes.py [--cities 8] [--per-city 60] [--seed 2024]
    .venv/bin/python bench/scenes.py --sheet /tmp/scenes_contact_sheet.png   # real photos, by eye
    .venv/bin/python bench/scenes.py --fit        # refit the weight table of cityclf/scenes.py
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.optimize import minimize
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cityclf import scenes  # noqa: E402
from cityclf.datasets import scan  # noqa: E402
from cityclf.images import load_rgb  # noqa: E402
from cityclf.projector import imagenet_model  # noqa: E402
from cityclf.synth import ALL_CITIES, SCENES, synthesize  # noqa: E402

FIT_SEED = 111  # the weights in cityclf/scenes.py were fitted on this seed; never evaluate on it
FIT_PER_CITY = 100
TILE = 240


def ground_truth(root: Path) -> pd.DataFrame:
    """key -> scene from the synthetic dataset's scene.csv files (for evaluation only)."""
    return pd.concat([pd.read_csv(path, index_col=0, dtype={"key": str})
                      for path in sorted(root.glob("train_val/*/*/scene.csv"))])


def evaluate(args) -> None:
    root = synthesize(Path(args.work) / "scenes-bench", cities=args.cities, per_city=args.per_city,
                      seed=args.seed, progress=False)
    dataset = scan(root, progress=False)
    imagenet_model()  # converting the offline weights is a one-off, not tagging time
    start = time.perf_counter()
    tags = scenes.tag_scenes(dataset, progress=False)
    cold = time.perf_counter() - start
    scenes.cache_path(dataset).unlink()
    start = time.perf_counter()
    scenes.tag_scenes(dataset, progress=False)
    warm = time.perf_counter() - start
    table = dataset.manifest[["path", "key", "night"]].merge(tags, on="path") \
        .merge(ground_truth(root).rename(columns={"scene": "truth"}), on="key")
    truth, guess = table["truth"], table["scene"]
    right = truth == guess
    print(f"{len(table)} synthetic images ({args.cities} cities x {args.per_city}, seed "
          f"{args.seed}, 320x240), {os.cpu_count()} cores")
    print(f"accuracy {right.mean():.1%}  (day {right[~table['night'].fillna(False)].mean():.1%}, "
          f"night {right[table['night'].fillna(False)].mean():.1%})")
    print(f"night_guess agrees with the night metadata on "
          f"{(table['night_guess'] == table['night']).mean():.1%}")
    confusion = pd.crosstab(truth.rename("truth"), guess.rename("tagged")) \
        .reindex(index=SCENES, columns=SCENES, fill_value=0)
    print(confusion.to_string())
    print(f"images/s: {len(table) / cold:.1f} from scratch (embeddings included), "
          f"{len(table) / warm:.1f} with the MobileNetV2 embeddings already cached")


# What each cue means in the real world: the scenes it may vote for (+) and against (-). Fitting
# keeps every weight on its side of zero, so a cue cannot learn a quirk of the drawings that
# would reverse its meaning on photos.
SIGNS = {
    "sky": ("highway park", "city_centre"),
    "sky_sides": ("highway park suburban", "city_centre"),
    "sky_centre": ("highway", ""),
    "vegetation": ("park suburban", "city_centre"),
    "vegetation_middle": ("park", "city_centre"),
    "grass_sides": ("park suburban highway", "city_centre"),
    "flat_grey_sides": ("city_centre highway", "park"),
    "vertical_edges": ("city_centre suburban", "highway park"),
    "warm_sides": ("city_centre suburban", "highway park"),
    "slanted_edges_upper": ("city_centre suburban", "highway park"),
}
# ImageNet's evidence is not fitted: it enters each scene's score as the plain log-probability of
# that scene's classes. On drawings it is weak (the fit would shrink it), on photos it is the
# better half, and the accuracy on drawings is the same whether it weighs 0.4 or 1.


def weight_bounds(std: np.ndarray) -> list[tuple]:
    """L-BFGS-B bounds of the standardised weights, feature by feature, scene by scene."""
    bounds = []
    for cue, scale in zip(scenes.SCORED, std):
        for scene in SCENES:
            if cue in SIGNS:
                votes_for, votes_against = (names.split() for names in SIGNS[cue])
                bounds.append((0, None) if scene in votes_for else
                              (None, 0) if scene in votes_against else (0, 0))
            else:  # imagenet_<scene>: weight 1 on its own scene, in raw units
                own = cue == f"imagenet_{scene}"
                bounds.append((scale, scale) if own else (0, 0))
    return bounds + [(None, None)] * len(SCENES)  # intercepts


def fit_bounded_softmax(x: np.ndarray, y: np.ndarray, bounds: list[tuple]):
    """Multinomial logistic regression (no penalty) with bounded weights: (weights, intercepts)."""
    n, f = x.shape
    onehot = np.eye(len(SCENES))[y]

    def loss(theta):
        weights, bias = theta[:-len(SCENES)].reshape(f, -1), theta[-len(SCENES):]
        scores = x @ weights + bias
        log_p = scores - logsumexp(scores, axis=1, keepdims=True)
        error = (np.exp(log_p) - onehot) / n
        return -(log_p * onehot).sum() / n, np.r_[(x.T @ error).ravel(), error.sum(axis=0)]

    start = np.array([low if low is not None and low == high else 0 for low, high in bounds])
    theta = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x
    return theta[:-len(SCENES)].reshape(f, -1), theta[-len(SCENES):]


def fit(args) -> None:
    """Fit the weight table on a synthetic dataset of every city style and print it."""
    root = synthesize(Path(args.work) / "scenes-fit", cities=ALL_CITIES,
                      per_city=FIT_PER_CITY, seed=FIT_SEED, progress=True)
    dataset = scan(root, progress=False)
    features = scenes.scene_features(dataset.manifest["path"], dataset).dropna()
    truth = dataset.manifest[["path", "key"]].merge(ground_truth(root), on="key")
    features = features.merge(truth[["path", "scene"]], on="path")
    x = features[scenes.SCORED].to_numpy()
    mean, std = x.mean(axis=0), x.std(axis=0)
    y = features["scene"].map(SCENES.index).to_numpy()
    weights, bias = fit_bounded_softmax((x - mean) / std, y, weight_bounds(std))
    weights, bias = weights / std[:, None], bias - (mean / std) @ weights  # per raw feature
    accuracy = ((x @ weights + bias).argmax(axis=1) == y).mean()
    print(f"fitted on {len(features)} images, training accuracy {accuracy:.1%}; the table:")
    print(f"{'feature':20}" + "".join(f"{scene:>12}" for scene in SCENES))
    for name, row in zip(["intercept"] + scenes.SCORED, np.vstack([bias, weights])):
        print(f"{name:20}" + "".join(f"{value:12.4g}" for value in row))


def real_photos() -> list[Path]:
    """The photographs that ship with scikit-image, scikit-learn and matplotlib."""
    import matplotlib
    import skimage
    import sklearn
    names = {Path(skimage.__file__).parent / "data": ["astronaut.png", "camera.png", "chelsea.png",
                                                       "coffee.png", "rocket.jpg", "brick.png",
                                                       "grass.png", "gravel.png",
                                                       "motorcycle_left.png"],
             Path(sklearn.__file__).parent / "datasets" / "images": ["china.jpg", "flower.jpg"],
             Path(matplotlib.get_data_path()) / "sample_data": ["grace_hopper.jpg"]}
    return [folder / name for folder, files in names.items() for name in files
            if (folder / name).is_file()]


def contact_sheet(args) -> None:
    """Real photos (one folder-layout dataset) and a synthetic frame per scene, each with its
    tag and the tag its own features alone give (before its neighbours' vote)."""
    work = Path(args.work)
    photos = work / "photos" / "real"
    photos.mkdir(parents=True, exist_ok=True)
    for path in real_photos():
        Image.fromarray(load_rgb(path)).save(photos / f"{path.stem}.jpg", quality=92)
    synthetic = synthesize(work / "scenes-sheet", cities=8, per_city=24, seed=args.seed,
                           progress=False)
    tiles = []
    for root, one_per_scene in ((work / "photos", False), (synthetic, True)):
        dataset = scan(root, progress=False)
        tags = scenes.tag_scenes(dataset, progress=False)
        features = pd.read_parquet(scenes.cache_path(dataset)).set_index("path").loc[tags["path"]]
        alone = np.asarray(SCENES)[scenes.scene_scores(features).argmax(axis=1)]
        tags = tags.assign(alone=alone)
        if one_per_scene:
            tags = tags.drop_duplicates("scene")
        tiles += [(row.path, f"{row.scene} {row.scene_confidence:.0%} (alone: {row.alone})"
                   + (" night" if row.night_guess else "")) for row in tags.itertuples()]
    columns = 4
    sheet = Image.new("RGB", (columns * TILE, -(-len(tiles) // columns) * TILE), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, label) in enumerate(tiles):
        image = Image.fromarray(load_rgb(path))
        image.thumbnail((TILE, TILE - 20))
        x, y = (i % columns) * TILE, (i // columns) * TILE
        sheet.paste(image, (x, y))
        draw.text((x + 4, y + TILE - 18), f"{Path(path).stem[:10]}: {label}", fill="black")
    sheet.save(args.sheet)
    print(f"{len(tiles)} tagged images -> {args.sheet}")
    for path, label in tiles:
        print(f"  {Path(path).name:24} {label}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cities", type=int, default=8)
    parser.add_argument("--per-city", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--sheet", help="write a contact sheet of tagged photos to this PNG")
    parser.add_argument("--fit", action="store_true", help="refit and print the weight table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CITYCLF_HOME"] = str(Path(tmp) / "home")  # an empty cache: honest timings
        args.work = tmp
        if not args.fit and args.seed == FIT_SEED:
            parser.error("evaluate on another seed than the fitting one")
        fit(args) if args.fit else contact_sheet(args) if args.sheet else evaluate(args)


if __name__ == "__main__":
    main()
