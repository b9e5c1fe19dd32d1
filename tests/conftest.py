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


def write_image(path, width=64, height=48, color=(120, 120, 120), fmt=None):
    """A small solid image file (top half `color`, bottom half dark), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2] = color
    Image.fromarray(array).save(path, format=fmt)
    return path
