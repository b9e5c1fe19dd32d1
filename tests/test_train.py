import json
import subprocess
import sys

import keras
import pytest

from cityclf import runs
from cityclf.inference import evaluate, predict_files
from cityclf.metrics import compute_metrics
from cityclf.stages import HistoryLogger
from cityclf.train import TrainConfig, train, tune

RUN_FILES = {"run.json", "metrics.json", "predictions.parquet", "history.csv"}


def test_each_kind_trains_into_a_valid_run_folder(use_trained_home):
    table = runs.leaderboard(runs.list_runs())
    assert sorted(table["model"]) == ["lenet", "mobilenet_v2", "random_forest"]
    for run in runs.list_runs():
        files = {p.name for p in run.path.iterdir()}
        model_file = "model.joblib" if run.info["kind"] == "sklearn" else "model.keras"
        assert RUN_FILES - {"history.csv"} <= files and model_file in files
        assert "checkpoint" not in files  # resume state is dropped once complete
        assert run.info["status"] == "complete"
        assert run.info["classes"] == ["boston", "helsinki", "tokyo"]
        assert run.info["split"]["method"] == "sequence" and run.info["split"]["id"]
        test_paths = set(run.predictions()["path"])
        assert len(test_paths) == run.info["split"]["counts"]["test"]
        assert {"tensorflow", "keras", "scikit-learn"} <= set(run.info["versions"])
        # One latency: the path predictions use, the verified fast path for Keras models.
        expected = "sklearn" if run.info["kind"] == "sklearn" else "fast"
        assert run.metrics["ms_path"] == expected and run.metrics["ms_per_image"] > 0
        assert ("keras_ms_per_image" in run.metrics) == (expected == "fast")
    mobilenet = next(r for r in runs.list_runs() if r.info["model"] == "mobilenet_v2")
    assert mobilenet.info["params"]["trainable"] < mobilenet.info["params"]["total"] / 100
    assert mobilenet.info["timings"]["embed_seconds"] >= 0
    assert set(mobilenet.history()["stage"]) == {"head"}


def test_test_split_is_never_trained_on(use_trained_home):
    from cityclf.datasets import scan
    from cityclf.splits import load_split
    run = runs.list_runs()[0]
    table = load_split(scan(run.info["dataset"]["root"], progress=False))
    test = set(table.loc[table["split"] == "test", "path"])
    assert set(run.predictions()["path"]) == test
    assert run.info["split"]["counts"]["train"] == (table["split"] == "train").sum()


def test_metrics_recomputed_from_predictions_equal_metrics_json(use_trained_home):
    from cityclf.datasets import scan
    for run in runs.list_runs():
        manifest = scan(run.info["dataset"]["root"], progress=False).manifest
        recomputed = compute_metrics(run.predictions(), run.classes, manifest,
                                     ms_per_image=run.metrics["ms_per_image"])
        stored = json.loads((run.path / "metrics.json").read_text())
        timing = {k: stored.pop(k) for k in ("ms_path", "keras_ms_per_image") if k in stored}
        assert recomputed == stored and stored["by_group"]["night"] and timing["ms_path"]


def test_predict_cli_and_api_agree(use_trained_home, capsys):
    from cityclf.cli import main
    run = runs.list_runs()[0]
    path = run.predictions()["path"].iloc[0]
    result = predict_files(run, [path], top=3)[0]
    assert [city for city, _ in result["top"]][0] == run.predictions()["top1"].iloc[0]
    assert main(["predict", run.id, path, "--json", "--top", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["top"][0][0] == result["top"][0][0] and len(printed[0]["top"]) == 3


def test_evaluate_on_a_dataset_with_unseen_cities(use_trained_home, tmp_path):
    from cityclf.synth import synthesize
    other = synthesize(tmp_path / "other", cities=["tokyo", "london"], per_city=12, size=(96, 72),
                       seed=7, progress=False)
    run = next(r for r in runs.list_runs() if r.info["model"] == "lenet")
    result = evaluate(run, other, progress=False)
    assert result["unknown_cities"] == {"london": 12}
    assert result["n_images"] == 12  # only tokyo can be scored
    saved = run.path / "evaluations"
    assert len(list(saved.glob("*/predictions.parquet"))) == 1
    # Re-scoring on its own test split reproduces the run's own top-1.
    assert evaluate(run, progress=False)["top1"] == pytest.approx(run.metrics["top1"])


def test_runs_leaderboard_cli(use_trained_home, capsys):
    from cityclf.cli import main
    assert main(["runs", "--sort", "ms_per_image"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "top1" in lines[0] and "95 % intervals" in lines[-1]
    assert all("[" in line for line in lines[1:4])  # each run's top-1 with its interval


def _partial_runs():
    return sorted(p for p in runs.partial_dir().iterdir()) if runs.partial_dir().exists() else []


def test_interrupted_run_is_not_listed_and_resumes_from_its_last_epoch(tiny_dataset, monkeypatch):
    cfg = TrainConfig(data=str(tiny_dataset), model="lenet", img_size=32, epochs=4, patience=10)

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)  # the checkpoint of this epoch is saved
        if epoch == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after epoch 2
    original = keras.callbacks.BackupAndRestore.on_epoch_end
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert runs.list_runs() == []  # nothing half-written in the registry
    [partial] = _partial_runs()

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", original)
    began = []
    monkeypatch.setattr(HistoryLogger, "on_epoch_begin",
                        lambda self, epoch, logs=None: began.append(epoch))
    run = train(cfg, progress=False, resume=partial.name)
    assert began == [2, 3]  # continued with epochs 3 and 4, not from scratch
    assert run.id == partial.name and _partial_runs() == []
    assert run.history()["epoch"].tolist() == [1, 2, 3, 4]
    assert [r.id for r in runs.list_runs()] == [run.id]


def test_resume_cli_errors_on_unknown_run(capsys):
    from cityclf.cli import main
    assert main(["train", "--resume", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_tune_two_trials_make_two_runs_in_one_study(tiny_dataset):
    base = TrainConfig(data=str(tiny_dataset), model="lenet", img_size=32, epochs=1)
    done = tune(base, {"lr": [1e-2, 1e-3], "batch_size": [16, 32], "optimizer": ["adam"]},
                trials=2, seed=0, progress=False)
    assert len(done) == 2 and len({r.info["study"] for r in done}) == 1
    settings = {(r.info["config"]["lr"], r.info["config"]["batch_size"]) for r in done}
    assert len(settings) == 2
    assert all(r.info["val_accuracy"] is not None for r in done)
    assert len(runs.list_runs()) == 2


def test_random_split_run_and_fine_tuning(tiny_dataset):
    run = train(TrainConfig(data=str(tiny_dataset), model="mobilenet_v2", img_size=32, epochs=1,
                            fine_tune_layers=4, fine_tune_epochs=1, split="random"),
                progress=False)
    assert run.info["split"]["method"] == "random"
    assert run.history()["stage"].tolist() == ["head", "finetune"]
    # The fine-tuned backbone changed: predictions come from the whole saved model.
    assert len(run.predictions()) == run.info["split"]["counts"]["test"]


def test_bad_settings_fail_before_a_run_folder_exists(tiny_dataset):
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(data=str(tiny_dataset), model="alexnet")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(data=str(tiny_dataset), model="lenet", optimizer="lbfgs")
    assert _partial_runs() == []


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cityclf.train import TrainConfig, train
run = train(TrainConfig(data=sys.argv[1], model="lenet", img_size=32, epochs=1, batch_size=8,
                        strategy="mirrored"), progress=False)
print("replicas", tf.distribute.MirroredStrategy().num_replicas_in_sync, run.metrics["n_images"])
"""


def test_mirrored_strategy_over_two_logical_cpus(tiny_dataset, cityclf_home):
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(tiny_dataset)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    replicas, n_images = done.stdout.split()[-2:]
    assert replicas == "2" and int(n_images) > 0
    assert len(runs.list_runs()) == 1


def test_drop_outliers_leaves_flagged_images_out_of_training_only(tiny_dataset, monkeypatch):
    from cityclf import train as train_module
    from cityclf.datasets import scan
    from cityclf.splits import load_split
    table = load_split(scan(tiny_dataset, progress=False))
    by_split = {name: table.loc[table["split"] == name, "path"].tolist()
                for name in ("train", "val", "test")}
    flagged = set(by_split["train"][:4] + by_split["val"][:1] + by_split["test"][:2])
    monkeypatch.setattr(train_module, "flagged_paths", lambda dataset, progress=True: flagged)
    run = train(TrainConfig(data=str(tiny_dataset), model="random_forest", img_size=32,
                            drop_outliers=True), progress=False)
    assert run.info["dropped_outliers"] == 5  # the two test images stay: the test set is fixed
    counts = run.info["split"]["counts"]
    assert counts == {"train": len(by_split["train"]) - 4, "val": len(by_split["val"]) - 1,
                      "test": len(by_split["test"])}
    assert set(run.predictions()["path"]) == set(by_split["test"])


def test_progress_bars_know_the_number_of_steps_from_the_first_epoch(tiny_dataset, capsys):
    from cityclf.stages import epoch_steps
    run = train(TrainConfig(data=str(tiny_dataset), model="lenet", img_size=32, epochs=2,
                            batch_size=8), progress=True)
    out = capsys.readouterr().out
    steps = epoch_steps(run.info["split"]["counts"]["train"], 8, drop_remainder=False)
    assert "Unknown" not in out and out.count(f"{steps}/{steps}") >= 2  # both epochs


def test_a_head_too_large_for_memory_streams_its_embeddings(tiny_dataset, monkeypatch):
    import cityclf.head as head
    monkeypatch.setattr(head, "IN_MEMORY_LIMIT_BYTES", 1)  # every dataset is "too large"
    run = train(TrainConfig(data=str(tiny_dataset), model="mobilenet_v2", img_size=64),
                progress=False)
    chosen = next(row for row in run.info["recipe"]["head"]["search"]
                  if "train_rows" in row)  # the streamed fit's row
    assert chosen["train_rows"] == run.info["split"]["counts"]["train"]
    assert run.metrics["top1"] > 1 / 3  # better than chance on 3 cities
