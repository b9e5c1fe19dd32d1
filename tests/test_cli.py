import os

import pandas as pd
import pytest

from cityclf.cli import main
from conftest import write_image


def test_data_scan_prints_cities_and_skips(tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / f"ds/oslo/{i}.jpg")
    write_image(tmp_path / "ds/rome/a.png", fmt="PNG")
    (tmp_path / "ds/rome/junk.txt").write_text("x")
    assert main(["data", "scan", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "oslo" in out and "rome" in out
    assert "4 images in 2 cities" in out and "1 files skipped" in out


def test_data_scan_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "scan", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    assert main(["data", "scan", str(tmp_path / "empty")]) == 2
    assert "no readable images" in capsys.readouterr().err


def test_data_split_writes_the_split(tmp_path, capsys, cityclf_home):
    for i in range(20):
        write_image(tmp_path / f"ds/city{i % 2}/{i}.jpg")
    assert main(["data", "split", str(tmp_path / "ds"), "--val", "0.2", "--test", "0.2"]) == 0
    assert "sequence split" in capsys.readouterr().out
    saved = list(cityclf_home.glob("cache/datasets/*/splits/sequence.parquet"))
    assert len(saved) == 1
    assert set(pd.read_parquet(saved[0])["split"]) == {"train", "val", "test"}


def test_weights_list_shows_every_backbone(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mobilenet_v2", "efficientnet_lite0", "vgg16", "resnet50", "inception_v3"):
        assert name in out
    assert "mobilenet_v2-b0353104.pth" in out
    assert f"missing: {tmp_path / 'keras' / 'models'}" in out


@pytest.mark.parametrize("method", ["lime", "gradcam", "occlusion"])
def test_explain_writes_a_picture(use_trained_home, tmp_path, capsys, method):
    from cityclf.runs import list_runs
    run = next(r for r in list_runs() if r.info["model"] == "lenet")
    photo = run.predictions()["path"].iloc[0]
    out = tmp_path / f"why.{method}.png"
    assert main(["explain", run.id, photo, "--method", method, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and f"{method}" in capsys.readouterr().out
    assert main(["explain", run.id, str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: no such file" in capsys.readouterr().err


def test_a_run_id_may_be_shortened_while_it_is_unambiguous(use_trained_home, capsys):
    from cityclf.runs import RunError, get_run, list_runs
    runs = list_runs()
    run = runs[0]
    shortest = next(run.id[:n] for n in range(1, len(run.id) + 1)
                    if sum(r.id.startswith(run.id[:n]) for r in runs) == 1)
    assert get_run(shortest).id == run.id
    shared = os.path.commonprefix([runs[0].id, runs[1].id])  # ids start with the date
    assert shared
    with pytest.raises(RunError, match="give more of one"):
        get_run(shared)
    with pytest.raises(RunError, match="no run given"):
        get_run("")  # not the current folder
    assert main(["explain", "no-such-run", str(run.predictions()["path"].iloc[0])]) == 2
    assert "`cityclf runs` lists them" in capsys.readouterr().err
