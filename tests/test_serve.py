"""The JSON API (`cityclf serve`) as programs use it, on the tiny trained MobileNetV2 run: the
answer `cityclf predict` gives, every hostile file refused with a 4xx and its reason, 413 for an
oversized body, 503 from a saturated pool of one, /health without a model, and a real uvicorn
process that answers without ever importing TensorFlow."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import hostile_corpus
from cityclf import serve
from cityclf.inference import predict_files
from cityclf.runs import Run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(trained_home):
    """The tiny MobileNetV2 run (its fast.json vouches for the TensorFlow-free path), with
    CITYCLF_HOME at its home for the whole module (the gate network lives in the home's cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CITYCLF_HOME", str(trained_home))
        yield next(Run(path) for path in sorted((trained_home / "models").iterdir())
                   if "mobilenet" in path.name)


@pytest.fixture(autouse=True)
def home(use_trained_home):
    """Every test in the trained home too (conftest gives each an empty one): apps made inside a
    test load the gate network from there, as `cityclf serve` would."""
    return use_trained_home


def wait_ready(client, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.get("/ready")
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.1)
    raise AssertionError(f"not ready: {answer.json()}")


@pytest.fixture(scope="module")
def client(run):
    with TestClient(serve.create_app(run)) as ready:
        wait_ready(ready)
        yield ready


def photo_of(run, which: int = 0) -> str:
    return run.predictions()["path"].iloc[which]


def post(client, name: str, data: bytes, path: str = "/predict", **params):
    return client.post(path, params=params, files={"image": (name, data, "image/jpeg")})


def test_a_photo_gets_the_answer_cityclf_predict_gives(client, run):
    path = photo_of(run)
    answer = post(client, "street.jpg", Path(path).read_bytes(), top=2)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    expected, = predict_files(run, [path], top=2)  # the TensorFlow path, independently
    assert [row["city"] for row in got["top"]] == [city for city, _ in expected["top"]]
    assert np.allclose([row["probability"] for row in got["top"]],
                       [p for _, p in expected["top"]], atol=1e-4)
    assert got["verdict"]["verdict"] == expected["ood"]["verdict"]
    assert got["city"] == (got["top"][0]["city"] if got["verdict"]["verdict"] == "ok" else None)
    assert got["run"] == run.id and got["file"] == "street.jpg"
    timings = got["timings_ms"]
    assert 0 < timings["model"] <= timings["work"] <= timings["total"] and timings["queue"] >= 0


def test_the_ready_check_says_what_answers(client, run):
    ready = client.get("/ready").json()
    assert ready["run"] == run.id and ready["classes"] == run.classes
    assert ready["engine"] == "lite" and ready["photo_check"] is True


def test_every_file_of_the_hostile_corpus_is_answered_or_refused_with_its_reason(client,
                                                                                 tmp_path):
    files = hostile_corpus.generate(tmp_path)
    cases = [case for case in hostile_corpus.applicable() if case.upload
             and os.path.getsize(files[case.name]) < 2**20]  # (the 200 MiB file: 413, below)
    assert len(cases) > 40
    for case in cases:
        answer = post(client, case.name, files[case.name].read_bytes())
        if case.works:
            assert answer.status_code == 200, (case.name, answer.text)
        else:
            assert answer.status_code == 422, (case.name, answer.text)
            detail = answer.json()["detail"]
            assert detail.startswith(f"{case.name}: ") and case.error in detail, detail
            assert "\n" not in detail


def test_a_request_without_a_photo_is_told_what_is_missing(client):
    answer = client.post("/predict")
    assert answer.status_code == 422 and answer.json() == {"detail": "image: Field required"}
    answer = post(client, "street.jpg", b"", top=0)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("top: ")


def test_an_oversized_body_gets_413_as_json(run):
    with TestClient(serve.create_app(run, max_upload_mb=1)) as small:
        declared = post(small, "big.jpg", b"\xff" * (2**20 + 1))  # Content-Length says it
        assert declared.status_code == 413
        assert declared.json() == {
            "detail": "the upload is larger than this server accepts (1 MiB)"}
        chunked = small.post("/predict", content=(b"-" * 2**16 for _ in range(40)),
                             headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 413 and chunked.json() == declared.json()


@pytest.fixture
def held(monkeypatch):
    """serve.answer held until the test lets it go: a worker busy for as long as a test needs.
    `entered.batches` lists the number of photos of each call."""
    entered, release = threading.Event(), threading.Event()
    entered.batches = []
    real = serve.answer

    def slow(model, photos):
        entered.batches.append(len(photos))
        entered.set()
        release.wait(30)
        return real(model, photos)
    monkeypatch.setattr(serve, "answer", slow)
    yield entered, release
    release.set()


def in_thread(call) -> dict:
    """Start `call()` in a thread; the returned dict gets its result under "answer"."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("answer", call()))
    thread.start()
    out["thread"] = thread
    return out


def test_a_saturated_pool_of_one_answers_503_at_once(run, held):
    entered, release = held
    data = Path(photo_of(run)).read_bytes()
    with TestClient(serve.create_app(run, workers=1, queue=0)) as busy:
        wait_ready(busy)
        first = in_thread(lambda: post(busy, "first.jpg", data))
        assert entered.wait(30)
        refused = post(busy, "second.jpg", data)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["detail"].startswith("the server is busy: 1 photos are being")
        assert busy.get("/health").status_code == 200  # the API itself stays up
        release.set()
        first["thread"].join(30)
        assert first["answer"].status_code == 200
        assert post(busy, "third.jpg", data).status_code == 200  # the slot is free again


def test_photos_that_wait_together_are_answered_together_each_its_own(run, held):
    entered, release = held
    paths = [photo_of(run, n) for n in range(4)]
    expected = predict_files(run, paths, top=3)
    with TestClient(serve.create_app(run, workers=1, queue=8)) as batched:
        wait_ready(batched)
        first = in_thread(lambda: post(batched, "first.jpg", Path(paths[0]).read_bytes()))
        assert entered.wait(30)  # the worker is busy: the next ones wait, then go as a batch
        waiting = [in_thread(lambda path=path: post(batched, Path(path).name,
                                                    Path(path).read_bytes(), top=3))
                   for path in paths[1:]]
        broken = in_thread(lambda: post(batched, "notes.jpg", b"not a photo"))
        time.sleep(0.5)
        release.set()
        for out in [first, *waiting, broken]:
            out["thread"].join(30)
    assert entered.batches == [1, 4]  # the first alone, then the four that waited
    assert broken["answer"].status_code == 422
    for out, want in zip(waiting, expected[1:]):
        got = out["answer"].json()
        assert [row["city"] for row in got["top"]] == [city for city, _ in want["top"]]
        assert np.allclose([row["probability"] for row in got["top"]],
                           [p for _, p in want["top"]], atol=1e-4)


def test_a_slow_answer_gets_504_and_holds_its_worker_until_it_ends(run, held):
    entered, release = held
    data = Path(photo_of(run)).read_bytes()
    with TestClient(serve.create_app(run, workers=1, queue=0, timeout_s=0.2)) as slow:
        wait_ready(slow)
        late = post(slow, "slow.jpg", data)
        assert late.status_code == 504 and "no answer within 0.2 s" in late.json()["detail"]
        assert entered.is_set()
        assert post(slow, "next.jpg", data).status_code == 503  # its work still runs
        release.set()
        deadline = time.monotonic() + 30
        while (answer := post(slow, "later.jpg", data)).status_code == 503 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer.status_code == 200


def test_health_answers_before_any_model_is_loaded(run):
    app = serve.create_app(run)
    without_lifespan = TestClient(app)  # no `with`: the app never starts loading its model
    assert without_lifespan.get("/health").json() == {"status": "ok"}
    for answer in (without_lifespan.get("/ready"),
                   post(without_lifespan, "street.jpg", Path(photo_of(run)).read_bytes())):
        assert answer.status_code == 503
        assert answer.json() == {"detail": "the model is loading"}


def test_an_explanation_comes_as_a_png_of_the_city_asked_for(client, run):
    city = run.classes[1]
    answer = post(client, "street.jpg", Path(photo_of(run)).read_bytes(), path="/explain",
                  method="occlusion", city=city)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-city"] == city and 0 <= float(answer.headers["x-probability"]) <= 1
    assert Image.open(io.BytesIO(answer.content)).width == serve.EXPLAIN_PX
    unknown = post(client, "street.jpg", b"x", path="/explain", city="atlantis")
    assert unknown.status_code == 422 and "knows no 'atlantis'" in unknown.json()["detail"]


def test_the_openapi_document_lists_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/explain", "/health", "/ready"} <= set(paths)
    assert "413" in paths["/predict"]["post"]["responses"]


# ------------------------------------------------------------------ a real server process

SERVER = """
import json, os, sys
from cityclf.runs import get_run
from cityclf.serve import serve
serve(get_run(sys.argv[1]), port=int(sys.argv[2]), max_upload_mb=1)
with open(os.environ["MODULES_OUT"], "w") as out:
    json.dump([name for name in ("tensorflow", "keras") if name in sys.modules], out)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def declared_but_unsent(port: int, length: int) -> bytes:
    """The server's reply to headers that announce `length` bytes of body, none of them sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                           "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode())
        reply = b""
        while not reply.endswith(b"}") and (chunk := connection.recv(4096)):
            reply += chunk
        return reply


def test_the_server_process_answers_without_importing_tensorflow(run, trained_home, tmp_path):
    import httpx
    port, modules = free_port(), tmp_path / "modules.json"
    env = {**os.environ, "CITYCLF_HOME": str(trained_home), "MODULES_OUT": str(modules)}
    process = subprocess.Popen([sys.executable, "-c", SERVER, run.id, str(port)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready.json()["engine"] == "lite", ready.text
        answer = httpx.post(f"{url}/predict", timeout=30, files={
            "image": ("street.jpg", Path(photo_of(run)).read_bytes(), "image/jpeg")})
        assert answer.status_code == 200 and answer.json()["top"][0]["city"] in run.classes
        reply = declared_but_unsent(port, 10**9)  # refused on the headers alone
        assert reply.startswith(b"HTTP/1.1 413 ") and b'"detail":"the upload is larger' in reply
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful stop: the wrapper then writes
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert json.loads(modules.read_text()) == [], "the serving process imported TensorFlow"
    assert output.startswith(f"serving run {run.id} on http://127.0.0.1:{port}")


def test_settings_out_of_range_are_refused_before_anything_starts(run):
    for wrong in ({"workers": 0}, {"queue": -1}, {"batch": 0}, {"timeout_s": 0},
                  {"max_upload_mb": 0}):
        with pytest.raises(ValueError, match="workers and batch must be at least 1"):
            serve.create_app(run, **wrong)
