"""The command line as a script sees it: the real `cityclf` in a fresh process, its exit status,
its stderr free of library log lines, and predict without TensorFlow when the run allows it."""
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cityclf import fast, lite
from cityclf.cli import main
from cityclf.runs import Run

REPO = Path(__file__).resolve().parent.parent
# What TensorFlow, absl, oneDNN, XNNPACK and CUDA print on their own when left alone.
NOISE = ("oneDNN", "absl::InitializeLog", "XNNPACK", "tensorflow/core", "cuda", "W0000", "I0000",
         "E0000", "WARNING: All log messages", "cpu_feature_guard")
# Runs main() as `cityclf` does, then writes which heavy libraries were imported to $MODULES_OUT.
WRAPPER = """
import json, os, sys
from cityclf.cli import main
status = main(sys.argv[1:])
with open(os.environ["MODULES_OUT"], "w") as out:
    json.dump([name for name in ("tensorflow", "keras") if name in sys.modules], out)
sys.exit(status)
"""


@pytest.fixture(scope="module")
def cli_home(trained_home, tmp_path_factory):
    """A home with copies of the trained runs (evaluate writes into its run), sharing
    trained_home's data and converted weights (the gate network among them)."""
    home = tmp_path_factory.mktemp("cli_home")
    (home / "data").symlink_to(trained_home / "data")
    (home / "cache").mkdir()
    (home / "cache" / "weights").symlink_to(trained_home / "cache" / "weights")
    runs = {}
    for source in (trained_home / "models").iterdir():
        if not source.name.startswith("."):
            run = Run(shutil.copytree(source, home / "models" / source.name))
            runs[run.info["model"]] = run
    return home, runs


@pytest.fixture
def runs(cli_home, monkeypatch):
    home, found = cli_home
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return found


def cityclf(home, *args, env=None, modules=None):
    """`cityclf ARGS` in a fresh interpreter, as a user's shell runs it (no test-only log
    settings); with `modules` (a path), through WRAPPER, which records the heavy imports there."""
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
           "CITYCLF_HOME": str(home), **(env or {})}
    command = [sys.executable, "-m", "cityclf.cli", *map(str, args)]
    if modules:
        env["MODULES_OUT"] = str(modules)
        command = [sys.executable, "-c", WRAPPER, *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(mark in line for mark in NOISE)]


def photos(run: Run, n: int = 3) -> list[str]:
    return list(run.predictions()["path"].iloc[:n])


# ------------------------------------------------------------------------- predict

def test_predict_skips_tensorflow_and_agrees_with_it(cli_home, tmp_path):
    home, found = cli_home
    run = found["mobilenet_v2"]
    assert fast.read_fast_info(run).numpy_ok  # training verified numpy preprocessing
    args = ["predict", run.id, *photos(run), tmp_path / "missing.jpg", "--json"]
    lean = cityclf(home, *args, modules=tmp_path / "modules.json")
    assert json.loads((tmp_path / "modules.json").read_text()) == [], \
        "predict imported TensorFlow: cityclf.lite and all it imports (cityclf.ood too) must not"
    heavy = cityclf(home, *args, env={"CITYCLF_NO_LITE": "1"})
    for done in (lean, heavy):  # the missing file: named, and the exit status says so
        assert done.returncode == 2, done.stderr
        assert not noise(done.stderr), noise(done.stderr)
        assert f"{tmp_path / 'missing.jpg'}: no such file" in done.stderr.splitlines()
        assert "1 of 4 files could not be read" in done.stderr
    ours, theirs = json.loads(lean.stdout), json.loads(heavy.stdout)
    assert [sorted(r) for r in ours] == [sorted(r) for r in theirs]  # the same fields
    for mine, tf in zip(ours, theirs):
        assert mine["path"] == tf["path"] and mine.get("error") == tf.get("error")
        if "top" in tf:
            assert [city for city, _ in mine["top"]] == [city for city, _ in tf["top"]]
            assert np.allclose([p for _, p in mine["top"]], [p for _, p in tf["top"]], atol=1e-4)
            assert mine["ood"]["verdict"] == tf["ood"]["verdict"]  # the runs have gates
            assert mine["ood"]["message"] == tf["ood"]["message"]
            assert abs(mine["ood"]["distance"] - tf["ood"]["distance"]) < 1e-3


def test_predict_same_place_and_text_output_match_tensorflows(cli_home):
    home, found = cli_home
    run = found["mobilenet_v2"]
    args = ["predict", run.id, *photos(run), "--same-place"]
    lean, heavy = cityclf(home, *args), cityclf(home, *args, env={"CITYCLF_NO_LITE": "1"})
    assert lean.returncode == heavy.returncode == 0, (lean.stderr, heavy.stderr)
    assert lean.stdout == heavy.stdout  # percentages to 0.1 %: the same text
    assert lean.stdout.splitlines()[-1].startswith("3 photos together: ")
    assert not noise(lean.stderr) and not noise(heavy.stderr)


def test_verbose_lets_the_libraries_speak(cli_home):
    home, found = cli_home
    run = found["mobilenet_v2"]
    lean = cityclf(home, "--verbose", "predict", run.id, photos(run, 1)[0])
    heavy = cityclf(home, "--verbose", "predict", run.id, photos(run, 1)[0],
                    env={"CITYCLF_NO_LITE": "1"})
    assert lean.returncode == heavy.returncode == 0
    assert "XNNPACK" in lean.stderr  # LiteRT's delegate notice
    assert noise(heavy.stderr), heavy.stderr  # TensorFlow's start-up lines


def test_what_the_lean_path_cannot_do_goes_through_tensorflow(runs, monkeypatch, capsys):
    forest, lenet = runs["random_forest"], runs["lenet"]
    assert lite.predict(forest, photos(forest)) is None  # nothing to run in LiteRT
    assert lite.predict(lenet, photos(lenet)) is not None
    from cityclf import ood
    with monkeypatch.context() as patch:
        patch.setattr(ood, "gate_network_file", lambda: Path("/nowhere/gate.tflite"))
        assert lite.predict(lenet, photos(lenet)) is None  # converting the gate needs TensorFlow
    monkeypatch.setattr(lite, "predict", lambda *a, **k: pytest.fail("--tta is not lean"))
    assert main(["predict", lenet.id, photos(lenet, 1)[0], "--tta"]) == 0
    assert "%" in capsys.readouterr().out


def test_an_older_fast_json_takes_tensorflow_once_and_is_upgraded(runs, tmp_path):
    run = Run(shutil.copytree(runs["lenet"].path, tmp_path / "lenet"))
    record = asdict(fast.read_fast_info(run))
    older = {key: value for key, value in record.items() if not key.startswith("numpy_")}
    (run.path / fast.FAST_INFO).write_text(json.dumps(older))
    assert fast.read_fast_info(run).numpy_ok is None
    assert lite.lean_predictor(run) is None
    assert fast.load_fast_predictor(run) is not None  # what predict_files uses
    upgraded = fast.read_fast_info(run)
    assert upgraded.numpy_ok and upgraded.numpy_images == min(len(run.predictions()), 64)
    assert upgraded.numpy_preprocess_max_diff < 0.05 and upgraded.numpy_top1_identical
    assert lite.lean_predictor(run) is not None


def test_a_stale_or_damaged_fast_path_is_not_used_by_the_lean_path(runs, tmp_path):
    run = Run(shutil.copytree(runs["lenet"].path, tmp_path / "lenet"))
    tflite = run.path / fast.FAST_MODEL
    tflite.write_bytes(tflite.read_bytes()[:-1] + b"x")
    assert lite.lean_predictor(run) is None
    run = Run(shutil.copytree(runs["lenet"].path, tmp_path / "lenet2"))
    (run.path / "model.keras").write_bytes(b"another model")
    assert lite.lean_predictor(run) is None


# ------------------------------------------------------------------------- numpy preprocessing

@pytest.mark.parametrize("shape", [(72, 96), (480, 640), (300, 600), (50, 100), (30, 40),
                                   (224, 224), (500, 90), (7, 300), (1, 1)])
def test_numpy_preprocessing_is_tensorflows(shape):
    """Every branch: shrinking (area), enlarging and mixed (antialiased bilinear), panoramas
    (2:1), the dashboard crop and grey."""
    import tensorflow as tf

    from cityclf.pipeline import Preprocess, preprocess
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    for size, crop, grey in itertools.product([32, 224], [0.0, 0.25], [False, True]):
        pre = Preprocess(size, crop, grey)
        expected = preprocess(tf.convert_to_tensor(image), pre).numpy()
        got = lite.preprocess(image, **asdict(pre))
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() < 0.02, (pre, np.abs(got - expected).max())


def test_numpy_preprocessing_refuses_settings_it_does_not_know():
    with pytest.raises(TypeError):
        lite.preprocess(np.zeros((8, 8, 3), np.uint8), img_size=8, sharpen=True)


# ------------------------------------------------------------------------- evaluate, explain

def test_evaluate_fails_on_unreadable_images_but_still_scores(cli_home, runs, tmp_path):
    home, found = cli_home
    run = found["lenet"]
    assert main(["evaluate", run.id]) == 0  # its own test split: every image read
    data = tmp_path / "ds"
    for i, photo in enumerate(photos(run, 6)):
        city = run.predictions()["true_city"].iloc[i]
        (data / city).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, data / city / f"{i}.jpg")
    bad = data / city / "not-a-photo.jpg"
    bad.write_text("hello")
    cut = data / city / "cut.jpg"
    jpeg = Path(photos(run, 1)[0]).read_bytes()
    cut.write_bytes(jpeg[:jpeg.index(b"\xff\xda") + 40])  # a whole header: the scan takes it
    (data / city / "notes.txt").write_text("not an image, not a failure")
    done = cityclf(home, "evaluate", run.id, "--data", data)
    assert done.returncode == 2, done.stderr
    assert not noise(done.stderr), noise(done.stderr)
    assert "top-1" in done.stdout and "predictions and metrics in" in done.stdout
    lines = done.stderr.splitlines()  # the scan's progress bar, the failures, the error
    assert {line for line in lines if line.startswith(str(data))} == {
        f"{bad}: not a readable image (it is a text file)", f"{cut}: could not be decoded"}
    assert lines[-1].startswith("cityclf: error: 2 images of ")
    out = re.search(r"predictions and metrics in (\S+)", done.stdout).group(1)
    assert json.loads((Path(out) / "metrics.json").read_text())["n_images"] == 6


def test_explain_is_quiet_and_fails_loudly(cli_home, runs, tmp_path, capsys):
    home, found = cli_home
    run = found["lenet"]
    done = cityclf(home, "explain", run.id, photos(run, 1)[0], "--method", "occlusion",
                   "--out", tmp_path / "why.png")
    assert done.returncode == 0, done.stderr
    assert not noise(done.stderr) and done.stderr == "", done.stderr
    assert (tmp_path / "why.png").stat().st_size > 1000
    assert main(["explain", run.id, str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: no such file" in capsys.readouterr().err
    (tmp_path / "text.jpg").write_text("hello")
    assert main(["explain", run.id, str(tmp_path / "text.jpg")]) == 2
    assert "text.jpg: not a readable image" in capsys.readouterr().err
    assert main(["explain", "no-such-run", photos(run, 1)[0]]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert main(["explain", run.id, photos(run, 1)[0], "--city", "atlantis"]) == 2
    assert "knows no city 'atlantis'" in capsys.readouterr().err


def test_a_reader_that_leaves_the_pipe_stops_the_command_quietly():
    """`cityclf models | head -1`: the reader has gone before cityclf writes."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "cityclf", "models"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""
