"""Every test gets its own cityclf home, so no test reads or writes the repository's data/ or models/."""
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def cityclf_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return home


def rerun(at):
    """Run a Streamlit AppTest and fail on any exception element the page shows."""
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def write_image(path, width=64, height=48, color=(120, 120, 120), fmt=None):
    """A small solid image file (top half `color`, bottom half dark), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2] = color
    Image.fromarray(array).save(path, format=fmt)
    return path


TINY_CITIES = ("tokyo", "boston", "helsinki")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic MSLS-layout dataset (3 cities × 36 images, 96×72) shared by the session."""
    from cityclf.synth import synthesize
    return synthesize(tmp_path_factory.mktemp("tiny") / "demo", cities=TINY_CITIES, per_city=36,
                      size=(96, 72), seed=0, progress=False)


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory, tiny_dataset):
    """A cityclf home with the tiny dataset as its demo and three real trained runs.

    Trained once per session (about half a minute): a random forest, a LeNet and a MobileNetV2
    with a transfer head. Tests that read runs use this home; tests that write runs use their own.
    """
    import shutil

    from cityclf.train import TrainConfig, train
    home = tmp_path_factory.mktemp("trained_home")
    demo = home / "data" / "demo"
    shutil.copytree(tiny_dataset, demo)
    previous = os.environ.get("CITYCLF_HOME")
    os.environ["CITYCLF_HOME"] = str(home)
    try:
        for model, size, epochs in (("random_forest", 32, 1), ("lenet", 32, 2),
                                    ("mobilenet_v2", 64, 3)):
            train(TrainConfig(data=str(demo), model=model, img_size=size, epochs=epochs),
                  progress=False)
    finally:
        if previous is None:
            os.environ.pop("CITYCLF_HOME")
        else:
            os.environ["CITYCLF_HOME"] = previous
    return home


@pytest.fixture
def use_trained_home(trained_home, monkeypatch):
    """Point this test's CITYCLF_HOME at the shared trained home (read-only by convention)."""
    monkeypatch.setenv("CITYCLF_HOME", str(trained_home))
    return trained_home
