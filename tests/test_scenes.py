"""The scene tagger: output, caching, agreement with the synthetic ground truth, attach_scenes."""
import base64
import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cityclf import scenes
from cityclf.datasets import scan
from cityclf.synth import SCENES


@pytest.fixture
def dataset(tiny_dataset):
    return scan(tiny_dataset, progress=False)


def ground_truth(root) -> pd.DataFrame:
    return pd.concat([pd.read_csv(path, index_col=0, dtype={"key": str})
                      for path in root.glob("train_val/*/*/scene.csv")])


def test_tags_every_image_with_a_known_scene_deterministically(dataset):
    tags = scenes.tag_scenes(dataset, progress=False)
    assert list(tags.columns) == ["path", "scene", "scene_confidence", "night_guess"]
    assert sorted(tags["path"]) == sorted(dataset.manifest["path"])
    assert set(tags["scene"]) <= set(SCENES)
    assert tags["scene_confidence"].between(0.25, 1).all()  # the top of 4 probabilities
    assert scenes.cache_path(dataset).is_file()

    scenes.cache_path(dataset).unlink()
    again = scenes.tag_scenes(dataset, progress=False)
    pd.testing.assert_frame_equal(tags, again)


def test_second_call_computes_nothing_and_later_only_new_or_changed_files(tiny_dataset, tmp_path,
                                                                         monkeypatch):
    root = tmp_path / "demo"
    shutil.copytree(tiny_dataset, root)
    dataset = scan(root, progress=False)
    first = scenes.tag_scenes(dataset, progress=False)
    computed = []
    real_features = scenes.scene_features
    monkeypatch.setattr(scenes, "scene_features", lambda paths, *args, **kwargs: (
        computed.append(sorted(paths)), real_features(paths, *args, **kwargs))[1])
    pd.testing.assert_frame_equal(scenes.tag_scenes(dataset, progress=False), first)
    assert computed == []

    changed = dataset.manifest["path"].iloc[5]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = root / "train_val" / "tokyo" / "database" / "images" / "copy.jpg"
    shutil.copy(dataset.manifest["path"].iloc[0], new)
    grown = scenes.tag_scenes(scan(root, progress=False), progress=False)
    assert computed == [sorted([changed, str(new)])]
    assert len(grown) == len(first) + 1


def test_tags_agree_with_the_synthetic_ground_truth_well_above_chance(dataset, tiny_dataset):
    tags = scenes.tag_scenes(dataset, progress=False)
    table = dataset.manifest[["path", "key"]].merge(tags, on="path") \
        .merge(ground_truth(tiny_dataset).rename(columns={"scene": "truth"}), on="key")
    accuracy = (table["scene"] == table["truth"]).mean()
    majority = table["truth"].value_counts(normalize=True).iloc[0]
    assert accuracy >= max(0.5, majority + 0.15), (accuracy, majority)  # measured: 0.64, 0.41


def test_new_weights_rescore_cached_features_without_recomputing(dataset, monkeypatch):
    scenes.tag_scenes(dataset, progress=False)
    monkeypatch.setattr(scenes, "scene_features", lambda *a, **k: pytest.fail("recomputed"))
    weights = scenes.WEIGHTS.copy()
    weights.loc["intercept", "park"] = 1000.0  # a tagger that calls everything a park
    monkeypatch.setattr(scenes, "WEIGHTS", weights)
    monkeypatch.setattr(scenes, "TAGGER", "changed")
    assert set(scenes.tag_scenes(dataset, progress=False)["scene"]) == {"park"}


def test_attach_scenes_adds_tags_and_fills_missing_night(dataset):
    manifest = dataset.manifest.copy()
    assert scenes.attach_scenes(manifest, dataset) is manifest  # not tagged yet: unchanged
    tags = scenes.tag_scenes(dataset, progress=False)
    manifest.loc[:9, "night"] = pd.NA
    attached = scenes.attach_scenes(manifest, dataset)
    assert len(attached) == len(manifest)
    assert attached["scene"].notna().all() and attached["scene_confidence"].notna().all()
    assert attached["night"].notna().all()
    guesses = dict(zip(tags["path"], tags["night_guess"]))
    filled = attached.loc[:9]
    assert (filled["night"].astype(bool) == filled["path"].map(guesses)).all()
    kept = attached.loc[10:, "night"].to_numpy()
    assert np.array_equal(kept, dataset.manifest.loc[10:, "night"].to_numpy())


def test_night_guess_agrees_with_the_night_metadata(dataset):
    table = dataset.manifest.merge(scenes.tag_scenes(dataset, progress=False), on="path")
    assert (table["night_guess"] == table["night"]).mean() > 0.9


def test_embedding_map_places_every_sampled_image_with_its_scene(dataset, tmp_path):
    from cityclf.projector import embedding_map, thumbnail_uri
    scenes.tag_scenes(dataset, progress=False)
    pca = embedding_map(dataset, "pca", progress=False)
    assert list(pca.columns) == ["path", "city", "x", "y", "scene"]
    assert len(pca) == len(dataset.manifest) and pca["scene"].notna().all()
    assert pca[["x", "y"]].std().min() > 0
    tsne = embedding_map(dataset, "tsne", sample=30, seed=1, progress=False)
    assert len(tsne) == 30 and set(tsne["path"]) <= set(dataset.manifest["path"])
    with pytest.raises(ValueError):
        embedding_map(dataset, "umap")

    uri = thumbnail_uri(dataset.manifest["path"].iloc[0], size=32)
    assert uri.startswith("data:image/jpeg;base64,")
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(thumbnail.size) == 32
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert thumbnail_uri(str(tmp_path / "broken.jpg")) == ""
