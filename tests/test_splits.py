import numpy as np
import pandas as pd
import pytest

from cityclf.datasets import scan
from cityclf.splits import assign_splits, load_split, save_split, split_info
from conftest import write_image


def manifest(n_cities=3, sequences=40, seed=0):
    """A manifest of sequences of 3-12 frames per city (no files needed to split)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cities):
        for s in range(sequences):
            for f in range(rng.integers(3, 13)):
                rows.append({"path": f"/d/c{c}/s{s}/{f}.jpg", "city": f"c{c}",
                             "sequence_key": f"c{c}s{s}"})
    return pd.DataFrame(rows)


def test_sequence_split_never_shares_a_sequence():
    m = manifest()
    split = assign_splits(m, val=0.15, test=0.15, seed=1)
    per_sequence = split.groupby(m["sequence_key"]).nunique()
    assert (per_sequence == 1).all()
    assert set(split) == {"train", "val", "test"}


def test_sequence_split_is_stratified_by_city_and_near_the_fractions():
    m = manifest(sequences=60)
    split = assign_splits(m, val=0.2, test=0.1, seed=0)
    fractions = pd.crosstab(m["city"], split, normalize="index")
    assert fractions["test"].between(0.06, 0.14).all()
    assert fractions["val"].between(0.15, 0.25).all()


def test_split_is_seeded():
    m = manifest()
    assert assign_splits(m, seed=3).equals(assign_splits(m, seed=3))
    assert not assign_splits(m, seed=3).equals(assign_splits(m, seed=4))


def test_random_split_leaks_sequences():
    m = manifest()
    split = assign_splits(m, seed=0, method="random")
    assert (split.groupby(m["sequence_key"]).nunique() > 1).any()


def test_images_without_sequence_are_their_own_group():
    m = manifest().assign(sequence_key=pd.NA)
    split = assign_splits(m, val=0.2, test=0.2, seed=0)
    assert split.value_counts(normalize=True)["test"] == pytest.approx(0.2, abs=0.03)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to less than 1"):
        assign_splits(manifest(), val=0.6, test=0.5)
    with pytest.raises(ValueError, match="split method"):
        assign_splits(manifest(), method="stratified")


def test_saved_split_is_reused_and_new_images_go_to_train(tmp_path):
    for i in range(40):
        write_image(tmp_path / f"ds/city{i % 2}/{i}.jpg")
    dataset = scan(tmp_path / "ds", progress=False)
    saved = save_split(dataset, val=0.25, test=0.25, seed=5)
    assert split_info(dataset)["id"] and split_info(dataset)["val"] == 0.25
    write_image(tmp_path / "ds/city0/new.jpg")
    reloaded = load_split(scan(tmp_path / "ds", progress=False))
    assert reloaded.set_index("path").loc[saved["path"], "split"].tolist() == saved["split"].tolist()
    assert reloaded.set_index("key").loc["city0/new.jpg", "split"] == "train"


def unbalanced_manifest(seed=0):
    """One city 20x the size of the other, as MSLS cities differ."""
    big, small = manifest(n_cities=1, sequences=200, seed=seed), manifest(n_cities=1, sequences=10)
    return pd.concat([big, small.replace({"c0": "c1"}, regex=True)], ignore_index=True)


def test_per_city_keeps_whole_sequences_up_to_about_n_images():
    table = unbalanced_manifest()
    splits = assign_splits(table, per_city=300, seed=1)
    used = table[splits != "unused"]
    counts = used["city"].value_counts()
    assert abs(counts["c0"] - 300) <= 12  # within half a sequence of 3-12 frames
    assert counts["c1"] == (table["city"] == "c1").sum()  # the small city keeps everything
    # never half a sequence: each sequence is all used or all unused
    assert (table.assign(s=splits).groupby("sequence_key")["s"].nunique() == 1).all()
    assert set(splits[table["city"] == "c0"]) == {"train", "val", "test", "unused"}
    assert splits.equals(assign_splits(table, per_city=300, seed=1))  # seeded
    with pytest.raises(ValueError, match="per_city"):
        assign_splits(table, per_city=0)


def test_a_per_city_split_is_recorded_and_keeps_new_images_out(tmp_path):
    for i in range(40):
        write_image(tmp_path / f"ds/city{int(i < 30)}/{i}.jpg")
    dataset = scan(tmp_path / "ds", progress=False)
    saved = save_split(dataset, val=0.2, test=0.2, seed=0, per_city=10)
    assert split_info(dataset)["per_city"] == 10
    assert (saved["split"] != "unused").sum() == 20
    write_image(tmp_path / "ds/city0/new.jpg")
    reloaded = load_split(scan(tmp_path / "ds", progress=False))
    assert reloaded.set_index("key").loc["city0/new.jpg", "split"] == "unused"
