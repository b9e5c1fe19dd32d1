"""Generated streets (cityclf.gan): a real class-conditional GAN trained for a few steps on the
tiny dataset, killed with SIGKILL after its first checkpoint and resumed; its samples, its
place in the run registry, --gan-augment, and the Generated streets page."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityclf import gan, gan_quality, runs
from cityclf.datasets import scan
from cityclf.splits import load_split
from cityclf.train import TrainConfig, train
from conftest import TINY_CITIES, rerun

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "pages/7_generated_streets.py"
STEPS, EVAL_EVERY = 12, 3  # four epochs: four checkpoints, four distances
# The first process measures its first epoch, is checkpointed, measures its second and then
# waits there to be killed: the kill lands after the first checkpoint and before the second.
KILLED_RUN = """
import sys, time
from cityclf import gan, gan_quality
measure = gan_quality.DistanceLog.on_epoch_end
def then_wait(self, epoch, logs=None):
    measure(self, epoch, logs)
    if epoch >= 1:
        time.sleep(120)
gan_quality.DistanceLog.on_epoch_end = then_wait
gan.train_gan(gan.GanConfig(data=sys.argv[1], img_size=32, steps=%d, eval_every=%d,
                            batch_size=16, width=8), progress=False)
""" % (STEPS, EVAL_EVERY)


def link_trained_home(home: Path, trained_home: Path) -> None:
    """`home` sees the trained home's dataset (as its demo) and its classifier runs, and keeps
    what it writes (a GAN run, caches) to itself; it starts with a copy of the converted
    weights (MobileNetV2's, the photo check's network) rather than converting them again."""
    (home / "data").symlink_to(trained_home / "data")
    shutil.copytree(trained_home / "cache" / "weights", home / "cache" / "weights")
    (home / "models").mkdir(exist_ok=True)
    for run in (trained_home / "models").iterdir():
        if not run.name.startswith("."):
            (home / "models" / run.name).symlink_to(run)


@pytest.fixture(scope="module")
def gan_home(tmp_path_factory, trained_home):
    """A home with a GAN run of the tiny dataset, trained in a process killed with SIGKILL
    after its first checkpoint, then resumed here; and what the kill left behind."""
    home = tmp_path_factory.mktemp("gan_home")
    link_trained_home(home, trained_home)
    previous = os.environ.get("CITYCLF_HOME")
    os.environ["CITYCLF_HOME"] = str(home)
    try:
        data = str(home / "data" / "demo")
        process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, data],
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metadata = home / "models" / ".partial"
        deadline = time.monotonic() + 240
        while not any(_epochs(path) >= 1 for path in metadata.glob("*/checkpoint/*.json")):
            assert process.poll() is None, "the GAN run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        interrupted = runs.interrupted_runs("gan")
        left = {"interrupted": interrupted, "as_classifier": runs.interrupted_runs(),
                "history": pd.read_csv(metadata / interrupted[0] / ".history-gan.csv")}
        run = gan.resume_gan(interrupted[0], progress=False)
        yield home, run, left
    finally:
        if previous is None:
            os.environ.pop("CITYCLF_HOME")
        else:
            os.environ["CITYCLF_HOME"] = previous


def _epochs(metadata: Path) -> int:
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture
def gan_run(gan_home, monkeypatch):
    home, run, _ = gan_home
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return run


def test_a_killed_run_resumes_from_its_checkpoint_and_completes(gan_home, monkeypatch):
    home, run, left = gan_home
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    assert len(left["interrupted"]) == 1 and left["as_classifier"] == []  # not a classifier's
    assert left["history"]["step"].tolist()[0] == EVAL_EVERY  # it had trained an epoch or two
    # Resumed at the first checkpoint, with the optimisers' own step counts restored (a fresh
    # start would have counted only the steps taken after the resume).
    assert run.info["resumed_at_steps"] == [EVAL_EVERY]
    assert run.info["steps_done"] == STEPS
    history = run.history()
    assert history["step"].tolist() == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert history.loc[0, "d_loss"] == pytest.approx(left["history"].loc[0, "d_loss"])
    assert run.info["status"] == "complete" and runs.interrupted_runs("gan") == []
    assert not (run.path / "checkpoint").exists()  # only needed to resume
    assert list((run.path / "tensorboard").rglob("events.out.tfevents.*"))
    steps = sorted(p.name for p in (run.path / "samples").iterdir())
    assert steps == [f"step-{s:06d}.jpg" for s in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)]


def test_samples_have_the_right_shape_and_differ_by_city(gan_run):
    tokyo = gan.sample(gan_run.id, "tokyo", n=4, seed=7)
    assert tokyo.shape == (4, 32, 32, 3) and tokyo.dtype == np.uint8
    assert np.array_equal(tokyo, gan.sample(gan_run, "tokyo", n=4, seed=7))  # seeded
    assert not np.array_equal(tokyo[0], tokyo[1])  # the noise differs from image to image
    boston = gan.sample(gan_run, "boston", n=4, seed=7)  # the same noise, another city
    assert np.abs(tokyo.astype(float) - boston).mean() > 0.5
    with pytest.raises(ValueError, match="knows no city 'paris'"):
        gan.sample(gan_run, "paris")
    picture = gan.sheet(tokyo, columns=2)
    assert picture.shape == (2 * 32 + 2, 2 * 32 + 2, 3)


def test_a_gan_run_records_its_settings_and_its_measures(gan_run):
    info = gan_run.info
    assert info["kind"] == "gan" and sorted(info["classes"]) == sorted(TINY_CITIES)
    assert info["config"]["steps"] == STEPS and info["preprocess"]["img_size"] == 32
    quality = info["quality"]
    assert "not the Inception FID" in quality["embedding"]
    for measure in ("floor", "untrained", "final"):
        assert set(quality[measure]["per_city"]) == set(TINY_CITIES)
        assert quality[measure]["mean"] > 0
    # The floor compares real images with real ones: far closer than an untrained generator.
    assert quality["floor"]["mean"] < quality["untrained"]["mean"]
    assert quality["final"]["mean"] == pytest.approx(gan_run.history()["frechet"].iloc[-1])
    # The best classifier of the dataset, on generated and on real images at the GAN's size.
    recognised = quality["classifier"]
    assert runs.get_run(recognised["run"]).metrics["top1"] == max(
        run.metrics["top1"] for run in runs.list_runs())
    for images in ("generated", "real"):
        assert 0 <= recognised[images]["mean"] <= 1


def test_gan_runs_are_listed_apart_from_classifiers(gan_run):
    found, problems = runs.find_runs()
    assert gan_run.id not in {run.id for run in found} and not problems
    assert [run.id for run in runs.gan_runs()] == [gan_run.id]
    table = runs.gan_table(runs.gan_runs())
    assert table.loc[0, "frechet"] == gan_run.info["quality"]["final"]["mean"]
    with pytest.raises(runs.RunError, match="is a GAN"):
        runs.get_run(gan_run.id)  # a classifier was asked for (predict, evaluate, compare...)
    with pytest.raises(runs.RunError, match="not a GAN"):
        runs.get_run(found[0].id, kind="gan")


def test_frechet_distance_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(1.0, 2.0, size=(30, 6))
    from scipy.linalg import sqrtm
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert gan_quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert gan_quality.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_gan_augment_adds_generated_images_to_training_only(gan_run):
    data = str(Path(os.environ["CITYCLF_HOME"]) / "data" / "demo")
    run = train(TrainConfig(data=data, model="random_forest", img_size=32, name="augmented",
                            gan_augment=gan_run.id, gan_ratio=0.5), progress=False)
    table = load_split(scan(data, progress=False))
    real_train = table.loc[table["split"] == "train", "city"].value_counts()
    record = run.info["gan_augment"]
    assert record["run"] == gan_run.id and record["ratio"] == 0.5
    assert record["per_city"] == {city: round(0.5 * real_train[city]) for city in TINY_CITIES}
    folder = Path(record["folder"])
    generated = sorted(folder.rglob("*.png"))
    assert len(generated) == record["n_images"] > 0
    # Validation and test are the dataset's own; only training grew (the forest saw them all).
    counts = table["split"].value_counts()
    assert run.info["split"]["counts"] == {name: int(counts[name])
                                           for name in ("train", "val", "test")}
    tested = set(run.predictions()["path"])
    assert tested == set(table.loc[table["split"] == "test", "path"])
    assert not any(path.startswith(str(folder)) for path in tested)
    forest = joblib.load(run.path / "model.joblib").steps[-1][1]
    assert forest.estimators_[0].tree_.weighted_n_node_samples[0] == \
        real_train.sum() + record["n_images"]


def test_gan_augment_refuses_a_classifier_and_a_gan_of_other_cities(gan_run):
    data = str(Path(os.environ["CITYCLF_HOME"]) / "data" / "demo")
    classifier = runs.list_runs()[0]
    with pytest.raises(ValueError, match="is a city classifier, not a GAN"):
        train(TrainConfig(data=data, model="random_forest", img_size=32,
                          gan_augment=classifier.id), progress=False)
    with pytest.raises(ValueError, match="trained on other cities"):
        gan.training_images(gan_run.id, ["paris", "rome"], {"paris": 4, "rome": 4}, 0.25, 0)
    with pytest.raises(ValueError, match="gan_ratio"):
        TrainConfig(data=data, model="random_forest", gan_augment=gan_run.id, gan_ratio=0)


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGE)
    return rerun(at)


def test_the_page_shows_samples_the_curve_and_real_beside_generated(gan_run):
    at = open_page()
    assert at.title[0].value == "Generated streets"
    assert {m.label for m in at.metric} >= {"Fréchet distance, trained", "floor: real vs real",
                                           "ceiling: untrained", "classifier top-1 on generated"}
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in chart["data"]} == {*TINY_CITIES, "mean over cities"}
    # One row of samples per city, then eight real and eight generated images of one city.
    images = at.get("image")
    assert [e.captions for e in images[:3]] == [[city] for city in sorted(TINY_CITIES)]
    assert [len(e.proto.imgs) for e in images[3:]] == [8, 8]
    assert "not the Inception FID" in "\n".join(c.value for c in at.caption)
    before = [e.value for e in images[3:]]
    at.selectbox(key="gan_city").set_value("boston")
    at.number_input(key="gan_seed").set_value(3)
    after = [e.value for e in rerun(at).get("image")[3:]]
    assert all(a != b for a, b in zip(before, after))  # other real and generated streets


def test_the_page_without_a_gan_run_says_how_to_train_one(trained_home, cityclf_home):
    link_trained_home(cityclf_home, trained_home)
    at = open_page()
    message = "\n".join(i.value for i in at.info)
    assert "No GAN run of this dataset yet" in message and "cityclf gan train --data" in message
