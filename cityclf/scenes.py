"""Scene type of every image (highway, suburban, city centre, park) without any scene labels.

Real datasets come without scene labels, so the tagger reads two kinds of evidence that mean the
same in a drawing and in a photo: where sky, vegetation, flat grey ground and built-up edges lie
in the frame (OpenCV on a 96 px copy), and how much of its belief the ImageNet MobileNetV2 puts on
classes that belong to a scene type (palaces and shops in a centre, picket fences in a suburb,
lakesides in a park, trailer trucks on a highway). A linear score per scene weighs them: the
ImageNet evidence enters as a plain log-probability, the image cues with weights fitted on the
synthetic demo's ground truth (`bench/scenes.py --fit`) under signs fixed by what each cue means
in the real world (sky never votes for a city centre), kept below as a readable table. Finally
each image's scores are averaged with those of its most similar images (by embedding) from other
sequences: one frame's odd colours are outvoted by look-alike scenes.

Tags are cached beside the manifest and computed only for new or changed files.
"""
from __future__ import annotations

import hashlib
import io
import os

import cv2
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from .backbones import IMAGENET_CLASSES
from .datasets import Dataset, _stat
from .pipeline import Preprocess, make_dataset
from .projector import imagenet_embeddings, imagenet_probabilities
from .splits import group_keys
from .synth import SCENES

STATS_PREPROCESS = Preprocess(96, crop_bottom=0.25)  # the bottom quarter may be a dashboard
FLAT_GRADIENT = 40     # Sobel magnitude below which a pixel belongs to a flat area (sky, road)
EDGE_GRADIENT = 100    # ... and above which it is an edge
NIGHT_BRIGHTNESS = 0.25  # mean HSV value (0..1) below which a frame is guessed to be at night
NEIGHBOURS = 20        # similar images, from other sequences, whose scores an image averages with
NEIGHBOUR_POOL = 5000  # neighbours are searched among at most this many images (seeded sample)
MAX_OWN_GROUP = 60     # frames of its own sequence an image's search may skip before giving up
NEIGHBOUR_DISTANCE = 0.35  # cosine distance beyond which images are not alike enough to vote
MIN_PROBABILITY = 1e-4  # floor for the log of a class group's probability
TAGS = ["scene", "scene_confidence", "night_guess"]

# ImageNet classes that, in the real world, are seen mostly in one scene type.
SCENE_CLASSES = {
    "highway": ["trailer truck", "moving van", "tow truck", "recreational vehicle", "snowplow",
                "suspension bridge", "steel arch bridge", "viaduct", "dam", "racer", "sports car"],
    "suburban": ["picket fence", "mailbox", "patio", "mobile home", "barn", "tile roof", "thatch",
                 "lawn mower", "birdhouse", "chainlink fence", "greenhouse", "garbage truck",
                 "school bus", "pot", "boathouse"],
    "city_centre": ["streetcar", "trolleybus", "traffic light", "street sign", "cab",
                    "parking meter", "pay-phone", "cinema", "restaurant", "bakery", "barbershop",
                    "bookshop", "butcher shop", "confectionery", "grocery store", "shoe shop",
                    "tobacco shop", "toyshop", "palace", "monastery", "church", "mosque",
                    "library", "prison", "bell cote", "triumphal arch", "dome", "obelisk",
                    "sliding door", "window shade", "fountain", "motor scooter", "moped",
                    "minibus", "police van", "ambulance", "fire engine"],
    "park": ["park bench", "lakeside", "valley", "alp", "cliff", "promontory", "seashore",
             "sandbar", "volcano", "geyser", "hay", "maze", "daisy", "rapeseed", "golfcart",
             "stone wall", "worm fence", "swing"],
}
CUES = ["sky", "sky_sides", "sky_centre", "vegetation", "vegetation_middle", "grass_sides",
        "flat_grey_sides", "vertical_edges", "warm_sides", "slanted_edges_upper"]
STATISTICS = CUES + ["brightness"]  # brightness only guesses night: darkness says nothing of scene
EVIDENCE = [f"imagenet_{scene}" for scene in SCENES]
FEATURES = STATISTICS + EVIDENCE
SCORED = CUES + EVIDENCE

# Weight of each feature in each scene's score (fitted by `bench/scenes.py --fit`).
WEIGHTS = pd.read_csv(io.StringIO("""
feature                  highway    suburban city_centre        park
intercept                  5.584       7.044      -5.097       7.663
sky                        15.48           0      -13.82           0
sky_sides                  21.32       3.169      -27.44       7.649
sky_centre                 1.843           0           0           0
vegetation                     0       4.734           0           0
vegetation_middle              0           0     -0.7509       6.013
grass_sides                14.45       4.069      -25.33       13.45
flat_grey_sides            1.897           0       10.48      -1.585
vertical_edges             -71.2           0           0           0
warm_sides                -14.89       5.838       17.93      -8.878
slanted_edges_upper            0     0.03605       123.1      -37.14
imagenet_highway               1           0           0           0
imagenet_suburban              0           1           0           0
imagenet_city_centre           0           0           1           0
imagenet_park                  0           0           0           1
"""), sep=r"\s+", index_col=0)

# Which tagger made a cached tag: new weights or settings re-score cached features.
TAGGER = hashlib.sha1(f"{WEIGHTS.to_csv()}{NEIGHBOURS}{NEIGHBOUR_POOL}{NEIGHBOUR_DISTANCE}"
                      f"{NIGHT_BRIGHTNESS}".encode()).hexdigest()[:10]


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Where sky, vegetation, flat grey ground and edges lie in one (H, W, 3) uint8 frame."""
    hue, sat, val = cv2.split(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    red, blue = rgb[..., 0].astype(np.int16), rgb[..., 2].astype(np.int16)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    dx, dy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    gradient = np.hypot(dx, dy)
    flat = cv2.blur(gradient, (3, 3)) < FLAT_GRADIENT
    sky_like = flat & (((blue > red + 5) & (val > 90)) | ((sat < 45) & (val > 140)))
    sky = np.cumprod(sky_like, axis=0).astype(bool)  # sky hangs from the top edge
    green = (hue > 25) & (hue < 90) & (sat > 50) & (val > 40)
    autumn = (hue >= 12) & (hue <= 25) & (sat > 120) & (val > 120)  # yellow and orange leaves
    vegetation = green | autumn
    flat_grey = flat & (sat < 50) & ~sky  # road, pavement, shoulders
    edges = gradient > EDGE_GRADIENT
    vertical = edges & (np.abs(dx) > 2 * np.abs(dy))  # facades, poles, trunks
    slanted = edges & (np.abs(np.abs(dx) - np.abs(dy)) < 0.5 * gradient)  # roofs, cornices
    warm = (red > blue + 20) & (sat > 40) & ~vegetation  # brick, render, roof tiles

    height, width = grey.shape
    third = width // 3
    upper, middle, lower = (slice(0, height // 2), slice(height // 4, 3 * height // 4),
                            slice(height // 2, height))

    def sides(mask, rows):
        return np.concatenate([mask[rows, :third], mask[rows, -third:]]).mean()

    skyline = sky.mean(axis=0)  # per column, the share of it that is sky
    values = dict(
        sky=sky.mean(), sky_sides=np.r_[skyline[:third], skyline[-third:]].mean(),
        sky_centre=skyline[third:-third].mean(), vegetation=vegetation.mean(),
        vegetation_middle=vegetation[height // 3: 2 * height // 3].mean(),
        grass_sides=sides(vegetation, lower), flat_grey_sides=sides(flat_grey, lower),
        vertical_edges=vertical[middle].mean(), warm_sides=sides(warm, middle),
        slanted_edges_upper=slanted[upper].mean(), brightness=val.mean() / 255)
    return {name: float(value) for name, value in values.items()}


def imagenet_scene_evidence(probs: np.ndarray) -> np.ndarray:
    """(n, 4) log of the probability ImageNet puts on each scene type's classes."""
    index = {name: i for i, name in enumerate(IMAGENET_CLASSES)}
    summed = [probs[:, [index[name] for name in SCENE_CLASSES[scene]]].sum(axis=1)
              for scene in SCENES]
    return np.log(np.stack(summed, axis=1) + MIN_PROBABILITY)


def cache_path(dataset: Dataset):
    return dataset.cache / "scenes.parquet"


def scene_features(paths, dataset: Dataset, progress: bool = True) -> pd.DataFrame:
    """path + FEATURES for each path (NaN where it does not decode): the expensive part."""
    paths = pd.Series(list(paths), dtype="str", name="path")
    stats = {}
    for images, rows in make_dataset(paths, pre=STATS_PREPROCESS, batch_size=64, cache=False):
        for image, row in zip(images.numpy().astype(np.uint8), rows.numpy()):
            stats[row] = image_statistics(image)
    stats = pd.DataFrame.from_dict(stats, orient="index", columns=STATISTICS)
    vectors, ok = imagenet_embeddings(dataset, paths, progress)
    evidence = pd.DataFrame(imagenet_scene_evidence(imagenet_probabilities(vectors[ok])),
                            index=np.flatnonzero(ok), columns=EVIDENCE)
    return pd.concat([paths, stats, evidence], axis=1)


def scene_scores(features: pd.DataFrame) -> np.ndarray:
    """(n, 4) log-probabilities of the scene types from the weight table alone."""
    scores = features[SCORED].to_numpy() @ WEIGHTS.loc[SCORED].to_numpy() \
        + WEIGHTS.loc["intercept"].to_numpy()
    return scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)


def smooth_over_neighbours(scores: np.ndarray, vectors: np.ndarray, groups: np.ndarray,
                           k: int = NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """Each row's scores averaged with the mean scores of its k most similar rows of other groups.

    Frames of one sequence share their mistakes, so only other sequences get a vote, and only
    images that look alike (unrelated photos never come within NEIGHBOUR_DISTANCE).
    """
    pool = np.random.default_rng(seed).permutation(len(scores))[:NEIGHBOUR_POOL]
    own = int(pd.Series(groups).value_counts().max()) if len(groups) else 0
    wanted = min(len(pool), k + min(own, MAX_OWN_GROUP))
    if wanted < 2:
        return scores
    distances, found = NearestNeighbors(n_neighbors=wanted, metric="cosine") \
        .fit(vectors[pool]).kneighbors(vectors)
    smoothed = scores.copy()
    for i, (neighbours, distance) in enumerate(zip(pool[found], distances)):
        alike = neighbours[(groups[neighbours] != groups[i]) & (distance < NEIGHBOUR_DISTANCE)]
        others = alike[:k]
        if len(others):
            smoothed[i] = (scores[i] + scores[others].mean(axis=0)) / 2
    return smoothed - np.logaddexp.reduce(smoothed, axis=1, keepdims=True)


def _tags(features: pd.DataFrame, manifest: pd.DataFrame, dataset: Dataset,
          progress: bool) -> pd.DataFrame:
    """Scene, confidence and night guess for every featured image (neighbours need them all)."""
    vectors, _ = imagenet_embeddings(dataset, features["path"], progress)
    groups = group_keys(manifest.set_index("path").loc[features["path"]].reset_index())
    scores = smooth_over_neighbours(scene_scores(features), vectors, groups.to_numpy())
    return pd.DataFrame({"path": features["path"],
                         "scene": np.asarray(SCENES)[scores.argmax(axis=1)],
                         "scene_confidence": np.exp(scores.max(axis=1)),
                         "night_guess": features["brightness"] < NIGHT_BRIGHTNESS})


def tag_scenes(dataset: Dataset, progress: bool = True) -> pd.DataFrame:
    """path, scene, scene_confidence, night_guess for every readable image of the dataset."""
    paths = dataset.manifest["path"]  # size and mtime tell a cached row is about the same file
    stamps = pd.concat([paths, _stat(paths)], axis=1).reset_index(drop=True)
    try:
        known = stamps.merge(pd.read_parquet(cache_path(dataset)), on=list(stamps.columns))
    except (OSError, ValueError, KeyError):
        known = stamps.iloc[:0].reindex(columns=[*stamps.columns, *FEATURES, *TAGS, "tagger"])
    todo = stamps.loc[~stamps["path"].isin(known["path"]), "path"]
    if todo.empty and (known["tagger"] == TAGGER).all():
        table = known
    else:
        features = known[["path"] + FEATURES]
        if len(todo):
            features = pd.concat([features, scene_features(todo, dataset, progress)],
                                 ignore_index=True)
        readable = features.dropna(subset=FEATURES).reset_index(drop=True)
        table = stamps.merge(features, on="path").merge(
            _tags(readable, dataset.manifest, dataset, progress), on="path", how="left")
        table = table.astype({"scene": "str", "night_guess": "boolean"}).assign(tagger=TAGGER)
        tmp = cache_path(dataset).with_suffix(".tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, cache_path(dataset))
    return table.dropna(subset=["scene"])[["path"] + TAGS].reset_index(drop=True)


def attach_scenes(manifest: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """The manifest plus scene and scene_confidence, with `night` guessed where metadata has none.

    Unchanged when the dataset has not been tagged yet (reading never triggers tagging).
    """
    try:
        tags = pd.read_parquet(cache_path(dataset), columns=["path"] + TAGS)
    except (OSError, ValueError):
        return manifest
    out = manifest.drop(columns=["scene", "scene_confidence"], errors="ignore") \
        .merge(tags, on="path", how="left")
    out["night"] = out["night"].astype("boolean").fillna(out["night_guess"].astype("boolean"))
    return out.drop(columns="night_guess")
