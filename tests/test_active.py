"""Active learning: ranking, labels that survive, a retrained child run, label issues, the page."""
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cityclf import active, cli
from cityclf.datasets import scan
from cityclf.label_issues import find_issues
from cityclf.pool import NONE_OF_THESE, Pool, PoolError, is_held_out
from cityclf.runs import get_run, list_runs
from cityclf.splits import load_split
from conftest import TINY_CITIES, rerun

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


# ------------------------------------------------------------------------------ ranking

def crafted_case():
    """Three cities around a circle, labelled; candidates: 30 near copies of one photo torn
    between cities 0 and 1 (one street's frames), 6 photos torn between other pairs or all
    three, and 20 photos deep inside a city."""
    rng = np.random.default_rng(0)
    centres = 4 * np.array([[np.cos(a), np.sin(a)] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)])
    known = np.vstack([rng.normal(c, 0.5, (20, 2)) for c in centres])
    labels = np.repeat([0, 1, 2], 20)
    street = rng.normal((centres[0] + centres[1]) / 2, 0.01, (30, 2))
    torn = [(centres[1] + centres[2]) / 2, (centres[0] + centres[2]) / 2, centres.mean(0)]
    spread = np.vstack([rng.normal(point, 0.05, (2, 2)) for point in torn])
    sure = np.vstack([rng.normal(1.6 * c, 0.3, (7, 2)) for c in centres])[:20]
    return known, labels, np.vstack([street, spread, sure])


def test_ranking_prefers_uncertain_and_diverse_photos():
    known, labels, candidates = crafted_case()
    street, spread, sure = np.arange(30), np.arange(30, 36), np.arange(36, 56)
    diverse = active.query(known, labels, candidates, C=1.0, n_classes=3, batch=6)
    assert not set(diverse) & set(sure)  # only uncertain photos
    assert len(set(diverse) & set(street)) <= 2  # not the street's frames over and over
    assert len(set(diverse) & set(spread)) >= 4
    uncertain = active.query(known, labels, candidates, C=1.0, n_classes=3, batch=6,
                             strategy="uncertainty")
    assert not set(uncertain) & set(sure)
    random = active.query(known, labels, candidates, C=1.0, n_classes=3, batch=6,
                          strategy="random")
    assert len(set(random)) == 6
    with pytest.raises(ValueError, match="strategy must be one of"):
        active.query(known, labels, candidates, C=1.0, n_classes=3, strategy="loudest")


def test_pseudo_threshold_is_where_validation_is_right_often_enough():
    confidence = np.linspace(0.99, 0.51, 100)
    probabilities = np.column_stack([confidence, 1 - confidence])
    truth = np.zeros(100, int)
    truth[60:] = 1  # the 40 least confident answers are wrong
    threshold = active.pseudo_threshold(probabilities, truth, precision=0.95, min_support=20)
    right_above = (truth[confidence >= threshold] == 0).mean()
    assert right_above >= 0.95 and threshold < confidence[59]
    assert active.pseudo_threshold(probabilities, np.ones(100, int)) is None


# ------------------------------------------------------------------------------ labels

def _label_many(folder: str, start: int, n: int) -> None:
    pool = Pool(Path(folder))
    for i in range(start, start + n):
        pool.add_label(f"{folder}/{i:03d}.png", "tokyo")


def photos_folder(tmp_path, n: int) -> Path:
    from conftest import write_image
    folder = tmp_path / "mine"
    for i in range(n):
        write_image(folder / f"{i:03d}.png", color=(i % 255, 90, 200))
    return folder


def test_labels_survive_a_restart_and_concurrent_writers(tmp_path):
    folder = photos_folder(tmp_path, 60)
    pool = Pool.open(folder)
    context = multiprocessing.get_context("fork")  # two processes, as two servers or tabs
    writers = [context.Process(target=_label_many, args=(str(pool.folder), k * 30, 30))
               for k in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    pool.add_label(f"{pool.folder}/000.png", "boston")  # relabelled: the last label wins
    again = Pool.open(folder)  # as after a restart: everything is read from disk
    labels = again.labels()
    assert len(labels) == 60 and len(again.label_log()) == 61
    assert labels.set_index("path").loc[f"{pool.folder}/000.png", "city"] == "boston"
    assert labels["held_out"].tolist() == [is_held_out(p) for p in labels["path"]]
    assert not list(again.cache.glob(".labels.csv.*"))  # no temporary file left behind
    with pytest.raises(PoolError, match="not a photo of the pool"):
        again.add_label(str(tmp_path / "elsewhere.png"), "tokyo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="holds no photos"):
        Pool.open(tmp_path / "empty")


# ------------------------------------------------------------------------------ retraining

@pytest.fixture
def active_home(trained_home, tmp_path, monkeypatch):
    """A writable copy of the trained home (update registers runs) and a pool of new photos of
    the same cities, with their true cities."""
    home = tmp_path / "active home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("data"))
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(trained_home / "data" / "demo")  # the runs' dataset
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    from cityclf.synth import synthesize
    drawn = synthesize(tmp_path / "drawn", cities=TINY_CITIES, per_city=12, size=(96, 72),
                       seed=3, progress=False)
    folder, truth = tmp_path / "my photos", {}
    folder.mkdir()
    for i, path in enumerate(sorted(drawn.rglob("images/*.jpg"))):
        target = folder / f"{i:03d}.jpg"
        shutil.copy(path, target)
        truth[str(target)] = path.relative_to(drawn).parts[1]
    run = next(r for r in list_runs() if r.info["model"] == "mobilenet_v2")
    return run, folder, truth


def test_update_registers_a_child_run_that_keeps_the_test_split(active_home):
    run, folder, truth = active_home
    test_photo = load_split(scan(run.info["dataset"]["root"], progress=False)).query(
        "split == 'test'")["path"].iloc[0]
    shutil.copy(test_photo, folder / "copy_of_a_test_photo.jpg")
    pool = Pool.open(folder)
    batch = active.next_batch(run, pool, progress=False, batch=8)
    assert len(batch) == 8 and len(set(batch)) == 8
    for path in list(truth)[:20]:
        pool.add_label(path, truth[path])
    pool.add_label(str(pool.folder / "copy_of_a_test_photo.jpg"), TINY_CITIES[0])
    pool.add_label(list(truth)[20], NONE_OF_THESE)

    child = active.update(run, pool, progress=False)
    assert child.id in [r.id for r in list_runs()]
    info = child.info["active"]
    assert child.info["parent"] == run.id and info["labels_file"] == str(pool.labels_file)
    assert info["none_of_these"] == 1
    trained_on = [p for p in list(truth)[:20] if not is_held_out(p)]
    copy_trained = not is_held_out(str(pool.folder / "copy_of_a_test_photo.jpg"))
    assert info["labels"] == len(trained_on)  # the copy of a test photo is never trained on
    assert info["left_out_as_test_copies"] == int(copy_trained)
    assert sorted(child.predictions()["path"]) == sorted(run.predictions()["path"])
    assert info["curve"][0]["labels"] == 0 and info["curve"][-1]["labels"] == info["labels"]
    assert child.metrics["top1"] is not None and (child.path / "model.keras").exists()
    # the child predicts with its new head: its model's answers are the ones it was scored on
    from cityclf.inference import load_predictor, run_preprocess
    from cityclf.pipeline import load_images
    predictions = child.predictions()
    images, rows = load_images(predictions["path"], run_preprocess(child))
    answers = load_predictor(child).predict_proba(images)
    assert np.abs(answers.max(1) - predictions["prob1"].to_numpy()[rows]).max() < 1e-4


def test_pool_commands(active_home, capsys):
    run, folder, truth = active_home
    path = next(iter(truth))
    assert cli.main(["pool", "label", str(folder), path, "paris", "--run", run.id]) == 2
    assert "not a city of the run" in capsys.readouterr().err
    assert cli.main(["pool", "label", str(folder), path, truth[path], "--run", run.id]) == 0
    assert cli.main(["pool", "labels", str(folder)]) == 0
    assert f"{path},{truth[path]}," in capsys.readouterr().out
    assert cli.main(["pool", "label", str(folder), path, NONE_OF_THESE]) == 0  # the last wins
    assert cli.main(["pool", "update", str(folder), "--run", run.id]) == 2
    assert "label some first" in capsys.readouterr().err
    assert cli.main(["pool", "add", str(folder / "nothing here"), "--run", run.id]) == 2
    assert "is not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ label issues

def clustered_streets(rng):
    """Five cities as clusters of 8-frame sequences (frames of one sequence look alike)."""
    centres = rng.normal(0, 1, (5, 32))
    y = np.repeat(np.arange(5), 160)
    groups = np.repeat(np.arange(100), 8)
    street = rng.normal(0, 0.35, (100, 32))[groups]
    return centres[y] + street + rng.normal(0, 0.35, (800, 32)), y, groups


def test_planted_label_noise_is_found():
    """5 % of the labels flipped, frame by frame."""
    rng = np.random.default_rng(1)
    x, y, groups = clustered_streets(rng)
    flipped = rng.choice(800, 40, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 5, 40)) % 5
    found = find_issues(x, noisy, groups, 5, C=0.1)
    hits = len(set(found["row"]) & set(flipped))
    assert hits / 40 >= 0.8 and hits / len(found) >= 0.5
    assert (found.set_index("row").loc[list(set(found["row"]) & set(flipped)), "suggested"]
            == y[list(set(found["row"]) & set(flipped))]).mean() > 0.9


def test_a_whole_sequence_filed_under_the_wrong_city_needs_sequence_folds():
    x, y, groups = clustered_streets(np.random.default_rng(2))
    wrong = np.flatnonzero(groups == 7)  # a sequence of city 0 filed under city 1
    noisy = y.copy()
    noisy[wrong] = 1
    by_sequence = set(find_issues(x, noisy, groups, 5, C=0.1, by="sequence")["row"])
    by_image = set(find_issues(x, noisy, groups, 5, C=0.1)["row"])
    assert len(by_sequence & set(wrong)) >= 6 > len(by_image & set(wrong))


# ------------------------------------------------------------------------------ the page

def test_label_page_labels_three_photos_and_retrains(active_home):
    run, folder, truth = active_home
    pool = Pool.open(folder)
    for path in list(truth)[-10:]:  # some labels already: retraining needs non-held-out ones
        pool.add_label(path, truth[path])
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.selectbox(key="run_pick").set_value(run.id).run()
    at.switch_page("pages/6_label.py")
    at = rerun(at)
    assert at.selectbox(key="label_pool").value == str(pool.folder)
    for n in range(3):
        at.button(key="guess_1").click()
        at = rerun(at)
    assert len(pool.labels()) == 13
    assert "Saved:" in "".join(c.value for c in at.caption)
    at.button(key="label_update").click()
    at = rerun(at)
    children = [r for r in list_runs() if r.info.get("parent") == run.id]
    assert len(children) == 1
    assert any("test top-1" in s.value for s in at.success)
    assert at.get("plotly_chart")


def test_label_page_explains_runs_without_a_head(use_trained_home):
    forest = next(r for r in list_runs() if r.info["model"] == "random_forest")
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.selectbox(key="run_pick").set_value(forest.id).run()
    at.switch_page("pages/6_label.py")
    at = rerun(at)
    assert "no pretrained backbone" in at.info[0].value
    assert get_run(forest.id)  # nothing written


def test_dataset_page_shows_label_issues_by_sequence(active_home):
    run, _, _ = active_home
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.selectbox(key="run_pick").set_value(run.id).run()
    at.switch_page("pages/1_dataset.py")
    at = rerun(at)
    at.button(key="issues_find").click()
    at = rerun(at)
    from cityclf.label_issues import read_label_issues
    found = read_label_issues(run)
    assert found is not None
    shown = "\n".join(c.value for c in at.caption)
    assert f"{len(found):,} likely mislabelled images" in shown or "No likely mislabelled" in \
        "\n".join(s.value for s in at.success)
