"""The fast LiteRT path must give Keras' answers, record its evidence, and step aside when broken."""
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from cityclf import fast
from cityclf.fileio import write_json_atomic
from cityclf.inference import load_predictor, run_preprocess
from cityclf.pipeline import load_images
from cityclf.runs import Run, RunError, get_run


@pytest.fixture(scope="module")
def fast_runs(trained_home, tmp_path_factory):
    """Copies of the trained runs (the shared home stays read-only), Keras ones converted once."""
    models = tmp_path_factory.mktemp("fast_home") / "models"
    copies = {}
    for source in (trained_home / "models").iterdir():
        if source.name.startswith("."):
            continue
        run = get_run(shutil.copytree(source, models / source.name))
        copies[run.info["model"]] = run
        fast.ensure_fast(run)
    return copies


@pytest.mark.parametrize("model", ["lenet", "mobilenet_v2"])
def test_fast_path_agrees_with_keras_on_the_test_images(fast_runs, model):
    run = fast_runs[model]
    images, _ = load_images(run.predictions()["path"], run_preprocess(run))
    expected = load_predictor(run).predict_proba(images)
    got = fast.load_fast_predictor(run).predict_proba(images)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("workers", [1, 3])
def test_interpreters_split_a_batch_without_mixing_its_order(fast_runs, workers):
    """Each image's row must be its own, however many interpreters share the batch."""
    run = fast_runs["lenet"]
    images, _ = load_images(run.predictions()["path"][:5], run_preprocess(run))
    flatbuffer = (run.path / fast.FAST_MODEL).read_bytes()
    one_by_one = np.concatenate([fast.FastPredictor(flatbuffer, 1).predict_proba(image[None])
                                 for image in images])
    together = fast.FastPredictor(flatbuffer, workers).predict_proba(images)
    assert len(set(map(tuple, np.round(one_by_one, 4)))) > 1  # distinct rows, so order shows
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)


@pytest.mark.parametrize("model", ["lenet", "mobilenet_v2"])
def test_fast_json_records_the_verification(fast_runs, model):
    run = fast_runs[model]
    record = json.loads((run.path / "fast.json").read_text())
    assert record["ok"] and record["reason"] is None
    assert record["verified_on"] == "test split"
    assert record["images"] == len(run.predictions())
    assert 0 <= record["max_abs_diff"] < fast.TOLERANCE and record["top1_identical"]
    assert (run.path / "model.tflite").stat().st_size > 0


def test_a_verified_run_is_not_converted_again(fast_runs, monkeypatch):
    monkeypatch.setattr(fast, "to_tflite", lambda model: pytest.fail("converted again"))
    assert fast.ensure_fast(fast_runs["lenet"]).ok


def test_forest_gets_no_fast_path(fast_runs):
    run = fast_runs["random_forest"]
    assert fast.ensure_fast(run) is None
    assert fast.load_fast_predictor(run) is None
    assert not (run.path / "fast.json").exists()


@pytest.fixture
def lenet_copy(fast_runs, tmp_path):
    """A converted LeNet run this test may damage."""
    return get_run(shutil.copytree(fast_runs["lenet"].path, tmp_path / "lenet"))


def test_corrupt_tflite_falls_back_with_a_recorded_reason(lenet_copy):
    tflite = lenet_copy.path / "model.tflite"
    tflite.write_bytes(b"not a flatbuffer" + tflite.read_bytes()[16:])
    assert fast.load_fast_predictor(lenet_copy) is None
    record = fast.read_fast_info(lenet_copy)
    assert not record.ok and "model.tflite" in record.reason
    assert load_predictor(lenet_copy).predict_proba(np.zeros((1, 32, 32, 3))).shape == (1, 3)


def test_unloadable_tflite_is_reported_by_the_predictor():
    with pytest.raises(fast.FastPathError, match="LiteRT cannot load"):
        fast.FastPredictor(b"garbage" * 100)


def test_failed_conversion_is_recorded_and_retried_only_on_rebuild(lenet_copy, monkeypatch):
    def broken(model):
        raise RuntimeError("converter exploded")
    monkeypatch.setattr(fast, "to_tflite", broken)
    info = fast.ensure_fast(lenet_copy, rebuild=True)
    assert not info.ok and "converter exploded" in info.reason
    assert not (lenet_copy.path / "model.tflite").exists()
    assert fast.load_fast_predictor(lenet_copy) is None
    monkeypatch.undo()
    assert fast.ensure_fast(lenet_copy).ok is False  # the recorded failure stands...
    assert fast.ensure_fast(lenet_copy, rebuild=True).ok  # ...until asked to retry
    assert fast.load_fast_predictor(lenet_copy) is not None


def test_failed_verification_keeps_keras(lenet_copy, monkeypatch):
    monkeypatch.setattr(fast.FastPredictor, "predict_proba",
                        lambda self, images: np.full((len(images), self.n_classes), 1 / 3, np.float32))
    info = fast.ensure_fast(lenet_copy, rebuild=True)
    assert not info.ok and info.reason.startswith("verification failed")
    assert info.max_abs_diff > fast.TOLERANCE
    assert not (lenet_copy.path / "model.tflite").exists()


def test_a_new_keras_model_gets_a_new_check(lenet_copy, monkeypatch):
    conversions = []
    convert = fast.to_tflite
    monkeypatch.setattr(fast, "to_tflite", lambda model: conversions.append(1) or convert(model))
    record = fast.read_fast_info(lenet_copy)
    keras_file = lenet_copy.path / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes())  # rewritten, same bytes: still verified
    assert fast.ensure_fast(lenet_copy).ok and not conversions
    write_json_atomic(lenet_copy.path / "fast.json", {**asdict(record), "keras_sha256": "old"})
    assert fast.ensure_fast(lenet_copy).ok and conversions == [1]


def test_missing_test_images_verify_on_noise(lenet_copy, monkeypatch):
    def unreadable(run):
        raise RunError("predictions unreadable")
    monkeypatch.setattr(Run, "predictions", unreadable)
    info = fast.ensure_fast(lenet_copy, rebuild=True)
    assert info.ok and info.verified_on.startswith("random images") and info.images == 32
