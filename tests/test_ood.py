"""The out-of-distribution gate, fitted on a copy of the tiny MobileNetV2 run: a coffee cup is not
a street photo, a demo test photo is, and a run with missing or damaged gate files has no gate."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from cityclf import ood
from cityclf.datasets import scan
from cityclf.images import is_image_name, load_rgb
from cityclf.inference import prepare_image, run_preprocess
from cityclf.pipeline import load_images
from cityclf.runs import Run
from cityclf.splits import load_split

REAL_PHOTOS = Path(__file__).parents[2] / "shared" / "real-photos"


def split_paths(run: Run, part: str):
    table = load_split(scan(run.info["dataset"]["root"], progress=False),
                       run.info["split"]["method"])
    return table.loc[table["split"] == part, "path"]


def gated_home(trained_home: Path, home: Path, models=("mobilenet_v2",)) -> dict[str, Path]:
    """`home` with copies of trained_home's runs of `models`, each with a gate fitted (as training
    fits it), by model. The home shares trained_home's data and converted weights, so the gate
    network is converted once a session."""
    (home / "data").symlink_to(trained_home / "data")
    (home / "cache").mkdir(parents=True)
    (trained_home / "cache" / "weights").mkdir(parents=True, exist_ok=True)
    (home / "cache" / "weights").symlink_to(trained_home / "cache" / "weights")
    copies = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CITYCLF_HOME", str(home))
        for source in sorted((trained_home / "models").iterdir()):
            if source.name.startswith(".") or Run(source).info["model"] not in models:
                continue
            run = Run(shutil.copytree(source, home / "models" / source.name))
            ood.fit_gate(run.path, split_paths(run, "train"), split_paths(run, "val"),
                         run_preprocess(run), progress=False)
            copies[run.info["model"]] = run.path
    return copies


@pytest.fixture(scope="module")
def gated_copy(trained_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("gated_home")
    return home, Run(gated_home(trained_home, home)["mobilenet_v2"])


@pytest.fixture
def gated(gated_copy, monkeypatch):
    """The gated run, with this test's CITYCLF_HOME pointed at its home."""
    home, run = gated_copy
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return run


def test_fit_gate_records_its_thresholds_and_returns_them(gated, tmp_path):
    recorded = json.loads((gated.path / ood.GATE_FILE).read_text())
    assert 0 < recorded["street_min"] < 1 and 0 < recorded["distance_max"] < 2
    assert recorded["reference_images"] == len(split_paths(gated, "train"))
    assert recorded["calibration_images"] == len(split_paths(gated, "val"))
    assert sum(recorded["validation_verdicts"].values()) == recorded["calibration_images"]
    again = ood.fit_gate(tmp_path, split_paths(gated, "train"), split_paths(gated, "val"),
                         run_preprocess(gated), progress=False)  # seeded: the same gate
    assert json.loads((tmp_path / ood.GATE_FILE).read_text()) == again
    assert {k: v for k, v in again.items() if k != "seconds"} == \
        {k: v for k, v in recorded.items() if k != "seconds"}


def text_page() -> np.ndarray:
    page = Image.new("RGB", (320, 240), (245, 242, 235))
    draw = ImageDraw.Draw(page)
    for y in range(10, 230, 14):
        draw.text((10, y), "Invoice 2024-117: total amount due within thirty days", fill=(20, 20, 20))
    return np.asarray(page)


def test_a_coffee_cup_is_not_a_street_photo_and_other_things_are_flagged(gated):
    gate, pre = ood.load_gate(gated), run_preprocess(gated)
    coffee, = gate.assess(prepare_image(skimage.data.coffee(), pre)[None])
    assert coffee["verdict"] == "not_street"
    assert coffee["message"].startswith("Not a street photo: it looks like ")  # 64 px: eggnog
    others = {"cat": skimage.data.chelsea(), "astronaut": skimage.data.astronaut(),
              "rocket": skimage.data.rocket(), "text": text_page(),
              "noise": np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8),
              "flat grey": np.full((240, 320, 3), 128, np.uint8)}
    verdicts = gate.assess(np.stack([prepare_image(image, pre) for image in others.values()]))
    assert {name: v["verdict"] for name, v in zip(others, verdicts) if v["verdict"] == "ok"} == {}


def test_demo_test_photos_come_back_ok(gated):
    """Most of them: the tiny split tests one sequence per city, its frames are alike, and a
    gate calibrated on about 25 validation frames may call one whole sequence unfamiliar."""
    images, _ = load_images(split_paths(gated, "test"), run_preprocess(gated))
    verdicts = ood.load_gate(gated).assess(images)
    ok = [v for v in verdicts if v["verdict"] == "ok"]
    assert len(ok) >= len(images) / 2
    assert ok[0]["message"] == ood.MESSAGES["ok"]
    assert all(set(v) == {"verdict", "street_score", "distance", "message"} for v in verdicts)


def test_assess_takes_any_image_size_and_empty_batches(gated):
    gate = ood.load_gate(gated)
    street = load_rgb(split_paths(gated, "test").iloc[0])
    for size in (40, 224, 300):
        verdict, = gate.assess(np.asarray(Image.fromarray(street).resize((size, size)),
                                          np.float32)[None])
        assert verdict["verdict"] in ("ok", "not_street", "unfamiliar")
    assert gate.assess(np.zeros((0, 64, 64, 3), np.float32)) == []


def test_missing_or_damaged_gate_files_mean_no_gate(gated, tmp_path):
    def copy(name, damage=None):
        folder = tmp_path / name
        folder.mkdir()
        for file in (ood.GATE_FILE, ood.REFERENCE_FILE):
            shutil.copy(gated.path / file, folder / file)
        if damage:
            damage(folder)
        return ood.load_gate(folder)

    assert isinstance(copy("intact"), ood.Gate)
    assert ood.load_gate(Run(tmp_path)) is None  # an older run: no gate files
    assert copy("no json", lambda f: (f / ood.GATE_FILE).unlink()) is None
    assert copy("no npz", lambda f: (f / ood.REFERENCE_FILE).unlink()) is None
    assert copy("bad json", lambda f: (f / ood.GATE_FILE).write_text("{not json")) is None
    assert copy("empty json", lambda f: (f / ood.GATE_FILE).write_text("[]")) is None
    assert copy("cut npz", lambda f: (f / ood.REFERENCE_FILE).write_bytes(
        (f / ood.REFERENCE_FILE).read_bytes()[:1000])) is None

    def other_version(folder):
        info = json.loads((folder / ood.GATE_FILE).read_text())
        (folder / ood.GATE_FILE).write_text(json.dumps({**info, "version": ood.VERSION + 1}))
    assert copy("other version", other_version) is None


@pytest.mark.skipif(not REAL_PHOTOS.is_dir(), reason=f"no real photos in {REAL_PHOTOS}")
def test_real_photos_get_a_verdict(gated):
    """Real photos are only looked at (never used to set a threshold): every one gets a verdict."""
    gate, pre = ood.load_gate(gated), run_preprocess(gated)
    for folder in sorted(p for p in REAL_PHOTOS.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if is_image_name(p))
        images = np.stack([prepare_image(load_rgb(p), pre) for p in photos])
        verdicts = gate.assess(images)
        assert len(verdicts) == len(photos)
        assert all(v["verdict"] in ("ok", "not_street", "unfamiliar") and v["message"]
                   for v in verdicts)
