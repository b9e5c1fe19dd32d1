"""Data quality: rule flags on crafted images, autoencoder outliers, near-duplicates, the report."""
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from cityclf import quality
from cityclf.datasets import scan
from cityclf.splits import load_split
from cityclf.synth import synthesize

NOISE = 3  # random-noise images planted among the tiny dataset's 108 street scenes


@pytest.fixture(scope="module")
def street_photo(tmp_path_factory):
    """A daylight synthetic street scene at the demo's 320×240."""
    root = synthesize(tmp_path_factory.mktemp("street") / "demo", cities=["boston"], per_city=6,
                      size=(320, 240), seed=3, progress=False)
    manifest = scan(root, progress=False).manifest
    return manifest.loc[manifest["night"] == False, "path"].iloc[0]  # noqa: E712


def crafted(folder, street_photo) -> pd.DataFrame:
    """One image per rule (named after the flag it should raise) and a normal one: a manifest."""
    rng = np.random.default_rng(0)
    street = Image.open(street_photo)
    grey = np.full((240, 320, 3), 128, np.uint8)
    grey[:12, :40] = 30  # a small dark corner: mostly, not perfectly, uniform
    images = {
        "too_dark": Image.new("RGB", (320, 240)),
        "too_bright": Image.new("RGB", (320, 240), "white"),
        "blurred": street.filter(ImageFilter.GaussianBlur(5)),
        "mostly_uniform": Image.fromarray(grey),
        "extreme_aspect": Image.fromarray(rng.integers(0, 255, (20, 1000, 3), dtype=np.uint8)),
        "tiny": Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
        "normal": street,
    }
    rows = []
    for name, image in images.items():
        path = folder / f"{name}.png"
        image.save(path)
        rows.append({"path": str(path), "width": image.width, "height": image.height})
    return pd.DataFrame(rows)


def test_each_crafted_image_is_flagged_for_its_reason_and_a_street_is_not(tmp_path,
                                                                          street_photo):
    flags = quality.rule_flags(crafted(tmp_path, street_photo), progress=False)
    flags["name"] = flags["path"].str.rsplit("/", n=1).str[-1].str.removesuffix(".png")
    flags = flags.set_index("name")
    for flag in quality.FLAGS:
        assert flags.loc[flag, flag], (flag, flags.loc[flag].to_dict())
    assert not flags.loc["normal", quality.FLAGS + ["unreadable"]].any()
    assert not flags.loc["too_bright", "too_dark"] and not flags.loc["too_dark", "too_bright"]
    reasons = quality.flag_reasons(flags.loc["blurred"])
    assert any(reason.startswith("sharpness ") and reason.endswith(f"< {quality.BLURRED:g}")
               for reason in reasons)


@pytest.fixture
def planted(tiny_dataset, tmp_path):
    """The tiny dataset plus random-noise images in one city's folder.

    The noise is coarse (8 px blocks of random colour): pixel-fine noise would be averaged
    away by the resize to the autoencoder's input and look like a flat grey frame.
    """
    root = tmp_path / "planted"
    shutil.copytree(tiny_dataset, root)
    rng = np.random.default_rng(1)
    folder = root / "train_val" / "boston" / "database" / "images"
    noise = [folder / f"noise{i}.jpg" for i in range(NOISE)]
    for path in noise:
        blocks = rng.integers(0, 255, (9, 12, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((96, 72), Image.NEAREST).save(path)
    return root, {str(path) for path in noise}


def test_autoencoder_ranks_planted_noise_among_the_worst_reconstructions(planted, monkeypatch):
    root, noise = planted
    dataset = scan(root, progress=False)
    result = quality.autoencoder_outliers(dataset, img_size=32, fraction=0.03, progress=False)
    assert len(result) == len(dataset.manifest) and result["outlier"].sum() == 4  # ceil(3 %)
    assert noise <= set(result.loc[result["outlier"], "path"])
    streets = result.loc[~result["path"].isin(noise), "reconstruction_error"]
    assert result.loc[result["path"].isin(noise), "reconstruction_error"].min() > streets.median()

    monkeypatch.setattr(quality, "autoencoder_outliers", lambda *a, **k: pytest.fail("retrained"))
    originals, rebuilt, shown = quality.reconstructions(dataset, sorted(noise)[:2] + ["missing"])
    assert originals.shape == rebuilt.shape == (2, 32, 32, 3) and rebuilt.dtype == np.uint8
    assert shown == sorted(noise)[:2]


def test_near_duplicates_find_a_copy_in_another_split(tiny_dataset, tmp_path):
    root = tmp_path / "copied"
    shutil.copytree(tiny_dataset, root)
    original = sorted((root / "train_val" / "tokyo" / "database" / "images").glob("*.jpg"))[0]
    copy = root / "train_val" / "boston" / "query" / "images" / "copy.jpg"
    Image.open(original).save(copy, quality=70)  # slightly re-encoded, another city's folder
    dataset = scan(root, progress=False)
    splits = load_split(dataset)[["path", "split"]]
    splits["split"] = np.where(splits["path"] == str(copy), "test",
                               np.where(splits["path"] == str(original), "train", splits["split"]))

    pairs = quality.near_duplicates(dataset, splits)
    planted = pairs[(pairs["path_a"].isin([str(original), str(copy)]))
                    & (pairs["path_b"].isin([str(original), str(copy)]))]
    assert len(planted) == 1 and planted["distance"].iloc[0] <= 2
    assert not planted["same_sequence"].iloc[0]
    assert pairs["same_sequence"].any()  # consecutive frames: expected near-duplicates

    counts = quality.duplicate_counts(pairs).set_index(["split_a", "split_b"])
    assert counts.loc[("test", "train"), "across_sequences"] >= 1
    assert counts.loc[("test", "train"), "cross_split"]
    assert (counts["pairs"] == counts["within_sequence"] + counts["across_sequences"]).all()
    assert counts["pairs"].sum() == len(pairs)


def test_report_is_cached_and_flagged_paths_hold_planted_outliers(planted, monkeypatch):
    root, noise = planted
    black = root / "train_val" / "helsinki" / "database" / "images" / "black.jpg"
    Image.new("RGB", (96, 72)).save(black)
    dataset = scan(root, progress=False)
    report = quality.quality_report(dataset, progress=False)
    assert len(report) == len(dataset.manifest)
    assert {"sharpness", "blurred", "reconstruction_error", "outlier", "duplicates",
            "leaks"} <= set(report.columns)
    assert report.loc[report["path"] == str(black), "too_dark"].item()

    flagged = quality.flagged_paths(dataset)
    assert str(black) in flagged and noise <= flagged
    assert len(flagged) < len(dataset.manifest) / 4

    monkeypatch.setattr(quality, "rule_flags", lambda *a, **k: pytest.fail("recomputed"))
    pd.testing.assert_frame_equal(quality.quality_report(dataset, progress=False), report)
