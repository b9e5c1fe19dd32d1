"""Runs survive kill -9, concurrency, full disks and damaged files (issue: hostile input)."""
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from cityclf import runs, stages, train as train_module
from cityclf.cli import main
from cityclf.train import TrainConfig, train

EPOCHS = 8


def fingerprint(folder):
    """Every file below a folder with its content hash: to prove nothing touched it."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_command(data):
    return [sys.executable, "-m", "cityclf.cli", "train", "--data", str(data), "--model", "lenet",
            "--img-size", "32", "--epochs", str(EPOCHS), "--patience", "50"]


def test_kill_9_at_random_points_then_resume(tiny_dataset):
    earlier = train(TrainConfig(data=str(tiny_dataset), model="random_forest", img_size=32),
                    progress=False)
    untouched = fingerprint(earlier.path)
    rng = random.Random(7)
    for _ in range(4):
        process = subprocess.Popen(train_command(tiny_dataset), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4, 14))  # TensorFlow's import takes a few seconds of this
        process.kill()
        process.wait()
        listed = runs.list_runs()
        for run in listed:  # whatever is listed is complete: a run that finished before the kill
            assert run.info["status"] == "complete" and (run.path / "model.keras").exists() \
                or run.id == earlier.id
    partials = sorted(runs.partial_dir().iterdir()) if runs.partial_dir().exists() else []
    assert partials, "no kill landed during training; the test proved nothing"
    for partial in partials:
        if not (partial / "run.json").exists():  # killed in the instant after mkdir
            with pytest.raises(runs.RunError, match="run.json is missing"):
                runs.get_run(partial.name, partial=True)
            continue
        cfg = TrainConfig.from_dict(runs.get_run(partial.name, partial=True).info["config"])
        resumed = train(cfg, progress=False, resume=partial.name)
        assert resumed.history()["epoch"].tolist() == list(range(1, EPOCHS + 1))
        assert resumed.info["status"] == "complete"
    assert fingerprint(earlier.path) == untouched
    assert not any(runs.partial_dir().iterdir())


def test_two_trainings_at_once_both_complete(tiny_dataset):
    processes = [subprocess.Popen(train_command(tiny_dataset) + ["--name", f"twin {i}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    done = runs.list_runs()
    assert sorted(r.info["name"] for r in done) == ["twin 0", "twin 1"]
    assert len({r.id for r in done}) == 2


def test_full_disk_cleans_up_and_says_so(tiny_dataset, monkeypatch, capsys):
    before = fingerprint(runs.config.models_dir()) if runs.config.models_dir().exists() else {}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train_module, "_save_model", no_space)
    code = main(["train", "--data", str(tiny_dataset), "--model", "lenet", "--img-size", "32",
                 "--epochs", "1"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1  # one line, after the scan's progress bar
    assert errors[0].startswith("cityclf: error:") and "disk full while writing run" in errors[0]
    assert "partial folder was removed" in errors[0]
    assert not any(runs.partial_dir().iterdir())
    assert runs.list_runs() == []
    assert fingerprint(runs.config.models_dir()) == before


@pytest.fixture
def copied_run(use_trained_home, tmp_path, monkeypatch):
    """A private copy of a trained Keras run, free to damage."""
    import shutil
    source = next(r for r in runs.list_runs() if r.info["model"] == "lenet")
    home = tmp_path / "damaged_home"
    shutil.copytree(source.path, home / "models" / source.id)
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return runs.get_run(source.id), source.predictions()["path"].iloc[0]


def test_corrupt_model_file_is_a_one_line_error(copied_run, capsys):
    run, photo = copied_run
    (run.path / "model.keras").write_bytes(b"PK\x03\x04 definitely not a keras archive")
    assert main(["predict", run.id, photo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model file is corrupt or unreadable" in err


def test_run_json_missing_keys_is_reported_not_listed(copied_run, capsys):
    run, photo = copied_run
    info = json.loads((run.path / "run.json").read_text())
    del info["classes"]
    (run.path / "run.json").write_text(json.dumps(info))
    found, problems = runs.find_runs()
    assert found == [] and "run.json lacks classes" in problems[run.id]
    assert main(["predict", run.id, photo]) == 2
    assert "run.json lacks classes" in capsys.readouterr().err


def test_runs_lists_interrupted_runs_with_how_to_resume(tiny_dataset, capsys, monkeypatch):
    def stop_after_first_epoch(self, epoch, logs=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(stages.HistoryLogger, "on_epoch_end", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=str(tiny_dataset), model="lenet", img_size=32, epochs=2),
              progress=False)
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    [partial] = os.listdir(runs.partial_dir())
    assert f"cityclf train --resume {partial}" in out
