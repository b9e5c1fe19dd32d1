"""`--strategy multiworker`: two worker processes on 127.0.0.1 stand for two hosts, each with its
own cityclf home and temporary folder, sharing only the dataset."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cityclf import runs
from cityclf.train import Cluster, TrainConfig, train

# Both processes run the same command with their own TF_CONFIG, as `cityclf train` would on each
# host. The OOD gate (chief-only, after training, as on one host) is left out: it costs ~20 s.
ENTRY = """
import sys
from cityclf import train as training
training._fit_gate = lambda *args: {"error": "not fitted in this test"}
run = training.train(training.TrainConfig(data=sys.argv[1], model="simple_cnn", img_size=32,
                     epochs=int(sys.argv[2]), batch_size=8, patience=100,
                     strategy="multiworker"), progress=False)
print("published", run.id if run else None)
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path, dataset, epochs):
    """Two `train` processes, worker 0 (the chief) first; returns (processes, homes)."""
    peers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes, homes = [], []
    for index in range(2):
        home = tmp_path / f"host{index}"
        (home / "tmp").mkdir(parents=True)
        env = {**os.environ, "CITYCLF_HOME": str(home), "TMPDIR": str(home / "tmp"),
               "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": peers},
                                        "task": {"type": "worker", "index": index}})}
        with open(home / "log.txt", "w") as log:
            processes.append(subprocess.Popen([sys.executable, "-c", ENTRY, str(dataset), str(epochs)],
                                              env=env, stdout=log, stderr=subprocess.STDOUT))
        homes.append(home)
    return processes, homes


def _wait(process, timeout):
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _runs_in(home, monkeypatch):
    monkeypatch.setenv("CITYCLF_HOME", str(home))
    return runs.list_runs(), runs.interrupted_runs()


@pytest.fixture
def workers():
    """Processes to kill however a test ends (SIGKILL: TensorFlow's cluster agent takes SIGTERM
    for a preemption notice and keeps running)."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_workers_train_one_run_saved_by_the_chief_alone(tiny_dataset, tmp_path, workers,
                                                             monkeypatch):
    processes, (chief, worker) = _start_workers(tmp_path, tiny_dataset, epochs=2)
    workers.extend(processes)
    codes = [_wait(process, 240) for process in processes]
    logs = [(home / "log.txt").read_text() for home in (chief, worker)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)

    published, interrupted = _runs_in(chief, monkeypatch)
    assert len(published) == 1 and interrupted == []
    run = published[0]
    assert run.info["status"] == "complete" and (run.path / "model.keras").is_file()
    assert run.info["config"]["strategy"] == "multiworker"
    assert run.history()["epoch"].tolist() == [1, 2]
    assert run.metrics["n_images"] == run.info["split"]["counts"]["test"]
    assert f"published {run.id}" in logs[0] and "published None" in logs[1]
    # The worker kept nothing: no run folder, and its scratch folder for Keras was removed.
    assert not (worker / "models").exists()
    assert list((worker / "tmp").iterdir()) == []


def test_a_killed_worker_fails_the_run_and_nothing_is_saved(tiny_dataset, tmp_path, workers,
                                                            monkeypatch):
    processes, (chief, worker) = _start_workers(tmp_path, tiny_dataset, epochs=200)
    workers.extend(processes)
    deadline = time.monotonic() + 180
    # Kill worker 1 once the chief has logged an epoch: training is under way on both.
    while not list((chief / "models" / ".partial").glob("*/.history-train.csv")):
        assert processes[0].poll() is None and time.monotonic() < deadline, \
            (chief / "log.txt").read_text()[-3000:]
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGKILL)
    code = _wait(processes[0], 120)
    log = (chief / "log.txt").read_text()
    assert code not in (0, None), log[-3000:]
    assert "unreachable" in log and "worker 1 (127.0.0.1:" in log, log[-3000:]
    assert "was not saved" in log, log[-3000:]
    published, interrupted = _runs_in(chief, monkeypatch)
    assert published == [] and interrupted == []
    assert list((chief / "models" / ".partial").iterdir()) == []


def test_a_worker_that_never_starts_is_named_not_waited_for(monkeypatch):
    from cityclf import train as training
    monkeypatch.setattr(training, "JOIN_TIMEOUT_S", 1)
    mine, missing = _free_ports(2)
    cluster = Cluster((f"127.0.0.1:{mine}", f"127.0.0.1:{missing}"), 0)
    with pytest.raises(TimeoutError, match=rf"worker 1 \(127.0.0.1:{missing}\) did not start"):
        cluster.wait_for_peers()
    with socket.create_server(("127.0.0.1", missing)):  # now it listens: no wait
        cluster.wait_for_peers()
        with pytest.raises(OSError, match=f"cannot listen on port {missing}"):
            Cluster(cluster.peers, 1).wait_for_peers()


@pytest.mark.parametrize("value, problem", [
    (None, "is not set"),
    ("{not json", "is not valid"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "index"),
])
def test_a_missing_or_malformed_tf_config_says_what_it_should_be(tiny_dataset, monkeypatch,
                                                                   value, problem):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=problem) as raised:
        Cluster.from_env()
    assert '"task": {"type": "worker", "index": I}' in str(raised.value)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        train(TrainConfig(data=str(tiny_dataset), model="lenet", strategy="multiworker"),
              progress=False)
    assert runs.interrupted_runs() == [] and runs.list_runs() == []
