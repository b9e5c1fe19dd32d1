"""Test-time augmentation (several crops of a photo) and one answer for photos of one place."""
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cityclf import runs, tta
from cityclf.cli import main
from cityclf.inference import evaluate, predict_files, predict_place
from cityclf.metrics import combine_probabilities
from cityclf.pipeline import Preprocess, preprocess


def street(height=120, width=160):
    """Dark left half, bright right half (a mirror would swap them), a red dashboard below."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2:] = 200
    image[height * 3 // 4:] = (255, 0, 0)
    kept = height * 3 // 4
    image[:kept, :, 2] = np.linspace(0, 255, width).astype(np.uint8)  # gradients, so that
    image[:kept, :, 1] = np.linspace(100, 255, kept).astype(np.uint8)[:, None]  # crops differ
    return image


def test_views_crop_the_dashboard_first_and_never_mirror():
    pre = Preprocess(img_size=32, crop_bottom=0.25)
    views = tta.views(street(), pre).numpy()
    assert views.shape == (tta.N_VIEWS, 32, 32, 3) and views.dtype == np.float32
    red = (views[..., 0] > 150) & (views[..., 1] < 100)
    assert not red.any()  # no view shows the dashboard
    left, right = views[:, :, :12].mean(axis=(1, 2, 3)), views[:, :, -12:].mean(axis=(1, 2, 3))
    assert (left < right).all()  # dark stays on the left
    # The first view is the whole frame, exactly what prediction without TTA sees.
    np.testing.assert_array_equal(views[0], preprocess(tf.constant(street()), pre).numpy())
    assert len({view.tobytes() for view in views}) == tta.N_VIEWS  # every view differs


def test_views_follow_the_runs_preprocessing():
    views = tta.views(street(), Preprocess(img_size=16, grayscale=True)).numpy()
    assert views.shape == (tta.N_VIEWS, 16, 16, 3)
    assert (views[..., 0] == views[..., 1]).all() and (views[..., 1] == views[..., 2]).all()
    panorama = np.tile(street(80, 80), (1, 2, 1))  # 160×80, 2:1: its forward view is seen
    pre = Preprocess(img_size=16)
    np.testing.assert_array_equal(tta.views(panorama, pre).numpy()[0],
                                  preprocess(tf.constant(panorama), pre).numpy())


def test_combine_averages_over_views():
    views = np.array([[[0.6, 0.4], [0.2, 0.8]], [[1.0, 0.0], [0.8, 0.2]]])  # 2 photos × 2 views
    assert tta.combine(views) == pytest.approx(np.array([[0.4, 0.6], [0.9, 0.1]]))


def test_predict_paths_skips_unreadable_files(use_trained_home, tmp_path):
    from cityclf.inference import best_predictor, run_preprocess
    run = next(r for r in runs.list_runs() if r.info["model"] == "random_forest")
    photos = run.predictions()["path"].iloc[:3].tolist()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    probs, rows, _ = tta.predict_paths(best_predictor(run), [photos[0], tmp_path / "bad.jpg",
                                                             *photos[1:]], run_preprocess(run))
    assert rows.tolist() == [0, 2, 3]
    assert probs.shape == (3, tta.N_VIEWS, len(run.classes))
    assert probs.sum(axis=2) == pytest.approx(np.ones((3, tta.N_VIEWS)), abs=1e-5)


def sequence_frames(run, n=3):
    """Paths of `n` test frames of one sequence, and its city."""
    from cityclf.datasets import scan
    manifest = scan(run.info["dataset"]["root"], progress=False).manifest.set_index("path")
    test = run.predictions().assign(sequence=lambda t: t["path"].map(manifest["sequence_key"]))
    frames = next(group for _, group in test.groupby("sequence") if len(group) >= n)
    return frames["path"].iloc[:n].tolist(), frames["true_city"].iloc[0]


def test_predict_place_combines_the_readable_photos(use_trained_home, tmp_path):
    run = next(r for r in runs.list_runs() if r.info["model"] == "mobilenet_v2")
    frames, _ = sequence_frames(run)
    n_classes = len(run.classes)
    for use_tta in (False, True):
        place = predict_place(run, [*frames, tmp_path / "missing.jpg"], top=n_classes,
                              tta=use_tta)
        images = place["images"]
        assert place["n_images"] == 3 and "no such file" in images[3]["error"]
        assert [r["top"] for r in images[:3]] == [r["top"] for r in predict_files(
            run, frames, top=n_classes, tta=use_tta)]
        vectors = np.array([[dict(r["top"])[city] for city in run.classes] for r in images[:3]])
        expected = combine_probabilities(vectors)
        assert [city for city, _ in place["top"]][0] == run.classes[expected.argmax()]
        assert dict(place["top"])[run.classes[0]] == pytest.approx(expected[0], abs=1e-5)
    assert predict_place(run, [tmp_path / "missing.jpg"]) == {
        "images": [{"path": str(tmp_path / "missing.jpg"),
                    "error": "missing.jpg: no such file"}], "top": [], "n_images": 0}


def test_tta_changes_the_answer_but_not_its_form(use_trained_home):
    run = next(r for r in runs.list_runs() if r.info["model"] == "mobilenet_v2")
    photos = run.predictions()["path"].iloc[:4].tolist()
    plain, augmented = predict_files(run, photos), predict_files(run, photos, tta=True)
    for a, b in zip(plain, augmented):
        assert len(a["top"]) == len(b["top"]) == len(run.classes)
        assert sum(p for _, p in b["top"]) == pytest.approx(1, abs=1e-4)
    assert [a["top"] for a in plain] != [b["top"] for b in augmented]


@pytest.fixture
def private_run(use_trained_home, tmp_path, monkeypatch):
    """A copy of the trained MobileNetV2 run in a home of its own: evaluate writes into runs."""
    source = next(r for r in runs.list_runs() if r.info["model"] == "mobilenet_v2")
    shutil.copytree(source.path, tmp_path / "home2" / "models" / source.id)
    monkeypatch.setenv("CITYCLF_HOME", str(tmp_path / "home2"))
    return runs.get_run(source.id)


def test_evaluate_with_tta_keeps_the_plain_evaluation(private_run, capsys):
    run = private_run
    plain = evaluate(run, progress=False)
    augmented = evaluate(run, progress=False, tta=True)
    assert plain["top1"] == pytest.approx(run.metrics["top1"])
    assert augmented["out"] == plain["out"] + "-tta"
    assert augmented["n_images"] == plain["n_images"] and augmented["tta"] is True
    assert augmented["views"] == tta.N_VIEWS and "tta" not in plain
    saved = sorted(p.parent.name for p in (run.path / "evaluations").glob("*/metrics.json"))
    assert len(saved) == 2 and saved[1] == saved[0] + "-tta"
    assert json.loads((run.path / "evaluations" / saved[1] / "metrics.json").read_text()) == {
        k: v for k, v in augmented.items() if k not in ("dataset", "out", "unread")}
    assert 0 < augmented["n_sequences"] < augmented["n_images"]
    assert main(["evaluate", run.id, "--tta"]) == 0
    out = capsys.readouterr().out
    assert f"{tta.N_VIEWS} views" in out and "per sequence" in out and "-tta" in out


def test_predict_cli_same_place_and_failures(use_trained_home, tmp_path, capsys):
    run = next(r for r in runs.list_runs() if r.info["model"] == "random_forest")
    frames, _ = sequence_frames(run, 2)
    assert main(["predict", run.id, *frames, "--same-place", "--tta"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith("2 photos together: ")
    missing = str(tmp_path / "missing.jpg")
    assert main(["predict", run.id, frames[0], missing, "--same-place"]) == 2
    captured = capsys.readouterr()
    assert "1 photo together: " in captured.out
    assert "missing.jpg: no such file" in captured.err
    assert "1 of 2 files could not be read" in captured.err
    assert main(["predict", run.id, missing, "--json"]) == 2  # plain predict fails alike
    assert json.loads(capsys.readouterr().out)[0]["error"] == "missing.jpg: no such file"
    assert main(["predict", run.id, *frames, "--same-place", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_images"] == 2 and len(printed["images"]) == 2 and printed["top"]
