"""`cityclf serve RUN`: a JSON API over one run, for programs, that holds under load.

POST a photo to ``/predict`` and get the run's top cities, their probabilities, the "none of these
cities" verdict and timings; POST it to ``/explain`` for a PNG of why. ``/health`` says the
process is up (model loaded or not), ``/ready`` whether it can answer; OpenAPI docs at ``/docs``.

This module holds the HTTP concerns only. Answers come from the functions ``cityclf predict``
uses, on the path it would take: ``cityclf.lite`` (numpy and LiteRT, no TensorFlow imported)
when the run's fast.json vouches for it, TensorFlow (``cityclf.inference``) otherwise.

How it stays up under load, each limit answered with JSON ``{"detail": "<one-line reason>"}``:

- a body over ``max_upload_mb`` gets 413: before it is read when Content-Length says so, and as
  soon as the stream passes the limit when it does not (``BodyLimit``);
- at most ``workers + queue`` photos are in the server, being answered or waiting; the next
  request is refused at once with 503 and a Retry-After, instead of joining a queue that grows
  without end. Each of the ``workers`` threads answers the photos waiting, up to ``batch``, in
  one call (the fast path spreads a batch over its interpreters, one per core);
- an answer that takes longer than ``timeout_s`` gets 504; its worker is counted busy until
  its work really ends (a thread cannot be stopped), so the bound above stays true;
- uvicorn answers 503 to connections beyond ``max_connections``.
"""
from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Annotated, Callable, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import lite
from .images import ImageError, load_rgb
from .runs import Run

log = logging.getLogger(__name__)

WORKERS = 2             # threads answering photos: one decodes while the other's batch runs
QUEUE = 16              # photos waiting beyond those, before the next request gets 503
BATCH = 8               # waiting photos a worker answers in one call (the fast path's batch)
TIMEOUT_S = 30.0        # a prediction slower than this gets 504
EXPLAIN_TIMEOUT_S = 120.0  # LIME is hundreds of forward passes
MAX_UPLOAD_MB = 20      # a 12-megapixel phone JPEG is 3 to 8 MB
MAX_CONNECTIONS = 128   # uvicorn's limit_concurrency: connections beyond get 503 (plain text)
RETRY_AFTER_S = 1


# ------------------------------------------------------------------------------ the model

@dataclass
class Model:
    """What answering a photo needs, loaded once: the run's predictor and gate, and how a decoded
    photo becomes the model's input. `engine` says which path: "lite" (numpy and LiteRT, no
    TensorFlow in the process) or "tensorflow"."""

    run: Run
    predictor: object
    gate: object | None
    prepare: Callable[[np.ndarray], np.ndarray]
    engine: Literal["lite", "tensorflow"]


class _OneAtATime:
    """A predictor called by one thread at a time: Keras and forest models are not known to be
    thread-safe (the fast path's FastPredictor locks itself, so the lock costs it nothing)."""

    def __init__(self, predictor):
        self._predictor, self._lock = predictor, threading.Lock()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._predictor.predict_proba(images)


def load_model(run: Run) -> Model:
    """The run's model on the path `cityclf predict` takes: cityclf.lite's predictor and gate when
    fast.json vouches for them (lite.predict's test), TensorFlow's otherwise."""
    predictor = lite.lean_predictor(run)
    if predictor is not None:
        usable, gate = lite._lean_gate(run)  # noqa: SLF001 - the test lite.predict makes
        if usable:
            settings = run.info["preprocess"]
            return Model(run, _OneAtATime(predictor), gate,
                         lambda image: lite.preprocess(image, **settings)[None], "lite")
    from .inference import best_predictor, prepare_image, run_preprocess
    from .ood import load_gate
    pre = run_preprocess(run)
    return Model(run, _OneAtATime(best_predictor(run)), load_gate(run),
                 lambda image: prepare_image(image, pre)[None], "tensorflow")


def _upload(data: bytes, name: str) -> io.BytesIO:
    """The bytes as an open file named as the client named it (errors then start with that)."""
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def answer(model: Model, photos: list[tuple[bytes, str, int]]) -> list[dict | ImageError]:
    """The run's answers for photos (bytes, name, top) that waited together, in one call of
    lite.answer_files (the loop `cityclf predict` runs): the fast path spreads a batch over its
    interpreters, one per core, where a photo alone keeps one core busy. A file that is no
    usable photo gets its ImageError in its place."""
    start = time.perf_counter()
    results, _ = lite.answer_files(model.predictor, model.gate,
                                   [_upload(data, name) for data, name, _ in photos],
                                   model.prepare, model.run.classes,
                                   max(top for *_, top in photos))
    work_ms = round(1000 * (time.perf_counter() - start), 2)
    answers = []
    for result, (_, _, top) in zip(results, photos):
        if "error" in result:
            answers.append(ImageError(result["error"]))
            continue
        verdict = result.get("ood")
        ok = verdict is None or verdict["verdict"] == "ok"
        answers.append({
            "city": result["top"][0][0] if ok else None,
            "top": [{"city": city, "probability": p} for city, p in result["top"][:top]],
            "verdict": verdict,
            "timings_ms": {"model": result["ms"], "work": work_ms}})
    return answers


EXPLAIN_PX = 320  # width of the PNG, as `cityclf explain` draws each half


def explanation(model: Model, data: bytes, name: str, method: str,
                city: str | None) -> tuple[bytes, str, float]:
    """(PNG of the photo as the model sees it, coloured by `method`'s evidence for `city` (default:
    the answer), that city, its probability). Imports TensorFlow on first use: cityclf.explain
    does, at module level."""
    from . import explain
    image = model.prepare(load_rgb(_upload(data, name)))[0]
    probabilities = model.predictor.predict_proba(image[None])[0]
    label = int(np.argmax(probabilities)) if city is None else model.run.classes.index(city)
    result = explain.explain(image, model.predictor.predict_proba, label, method)
    buffer = io.BytesIO()
    Image.fromarray(result.overlay(image, width=EXPLAIN_PX)).save(buffer, format="PNG")
    return buffer.getvalue(), model.run.classes[label], float(probabilities[label])


# ------------------------------------------------------------------------------ bounded work

class Pool:
    """`workers` threads, each taking the jobs waiting (up to `batch` of them) and answering them
    in one call of `work(jobs) -> results` (an exception as a result: that job's; raised: all
    of the batch's). At most `workers + queue` jobs are in the server, being worked on or
    waiting; beyond that `submit` refuses at once (None), so a burst costs a quick 503, never an
    unbounded queue or memory. Batches form only while jobs wait: no photo waits for others."""

    def __init__(self, work: Callable[[list[tuple]], list], workers: int, queue: int,
                 batch: int = 1, name: str = "pool"):
        self.workers, self.queue, self.batch, self._work = workers, queue, batch, work
        self._jobs: SimpleQueue = SimpleQueue()
        self._slots = threading.BoundedSemaphore(workers + queue)
        for n in range(workers):
            threading.Thread(target=self._serve, name=f"cityclf-{name}-{n}", daemon=True).start()

    def submit(self, *job) -> Future | None:
        if not self._slots.acquire(blocking=False):
            return None
        future: Future = Future()
        future.add_done_callback(lambda _: self._slots.release())  # also when cancelled
        self._jobs.put((job, future))
        return future

    def _serve(self) -> None:
        while (taken := [self._jobs.get()]) != [None]:
            with suppress(Empty):
                while len(taken) < self.batch:
                    taken.append(self._jobs.get_nowait())
            if None in taken:  # shutting down (the jobs left go with the server)
                break
            taken = [(job, future) for job, future in taken
                     if future.set_running_or_notify_cancel()]  # not those timed out waiting
            if not taken:
                continue
            try:
                results = self._work([job for job, _ in taken])
            except Exception as err:  # noqa: BLE001 - each waiting client gets the reason
                results = [err] * len(taken)
            for (_, future), result in zip(taken, results):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def shutdown(self) -> None:
        for _ in range(self.workers):
            self._jobs.put(None)


class BodyLimit:
    """413 for a request body over `max_bytes`: before a byte of it is read when Content-Length
    says so, and as soon as a body sent without one (chunked) passes the limit.

    FastAPI's own ``max_body_size`` answers the first case in plain text, not JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int, detail: str):
        self.app, self.max_bytes, self.detail = app, max_bytes, detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": self.detail}, 413)(scope, receive, send)
        seen = 0

        async def capped() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI passes an HTTPException through its parsing
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, capped, send)


class Refused(HTTPException):
    """A request the server will not work on now; the client may retry after a moment."""

    def __init__(self, detail: str):
        super().__init__(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _run(pool: Pool, timeout_s: float, what: str, *job):
    """`job` answered by the pool, awaited at most `timeout_s`. A job still waiting at the
    timeout is dropped; a running one finishes in the background (holding its slot till then)."""
    future = pool.submit(*job)
    if future is None:
        raise Refused(f"the server is busy: {pool.workers + pool.queue} {what} are being "
                      f"worked on or waiting; retry in {RETRY_AFTER_S} s")
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except TimeoutError:
        raise HTTPException(504, f"no answer within {timeout_s:g} s: the server is overloaded "
                                 "or the photo is unusually hard; retry later") from None


# ------------------------------------------------------------------------------ the API

class CityProbability(BaseModel):
    city: str
    probability: float


class Verdict(BaseModel):
    verdict: Literal["ok", "not_street", "unfamiliar"]
    message: str
    street_score: float
    distance: float


class Prediction(BaseModel):
    run: str
    file: str
    city: str | None  # None: "none of these cities" (the verdict says why); `top` is a guess
    top: list[CityProbability]
    verdict: Verdict | None  # None: the run has no photo check (trained before gates existed)
    timings_ms: dict[str, float]  # model: forward pass; work: decoding to answer; queue; total


class Problem(BaseModel):
    detail: str


ERRORS = {code: {"model": Problem, "description": text} for code, text in {
    413: "the upload is larger than the server accepts",
    422: "the file is no usable photo, or the request lacks one",
    503: "the server is busy (retry after Retry-After seconds) or still loading the model",
    504: "no answer within the server's timeout",
}.items()}


def create_app(run: Run, workers: int = WORKERS, queue: int = QUEUE, batch: int = BATCH,
               timeout_s: float = TIMEOUT_S, max_upload_mb: float = MAX_UPLOAD_MB,
               explain: bool = True) -> FastAPI:
    """The API over `run`. Its model loads in the background when the app starts (``/ready``
    says when), so ``/health`` answers at once and a slow load never blocks the server."""
    if workers < 1 or queue < 0 or batch < 1 or timeout_s <= 0 or max_upload_mb <= 0:
        raise ValueError("workers and batch must be at least 1, queue at least 0, and the "
                         "timeout and upload limit above 0")
    state: dict = {"model": None, "problem": "the model is loading"}

    def load() -> None:
        try:
            state["model"], state["problem"] = load_model(run), None
        except Exception as err:  # noqa: BLE001 - any failure: not ready, and say why
            state["problem"] = f"the model could not be loaded ({err.__class__.__name__}: {err})"
            log.error("run %s: %s", run.id, state["problem"])

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # The work goes through the module's names at call time (tests replace them).
        state["predictions"] = Pool(lambda jobs: answer(jobs[0][0], [job[1:] for job in jobs]),
                                    workers, queue, batch, "predict")
        # LIME keeps both cores busy for seconds: one at a time, two waiting
        state["explanations"] = Pool(lambda jobs: [explanation(*jobs[0])], 1, 2, name="explain")
        threading.Thread(target=load, name="cityclf-load", daemon=True).start()
        yield
        state["predictions"].shutdown()
        state["explanations"].shutdown()

    app = FastAPI(title="cityclf", version="1", lifespan=lifespan,
                  summary=f"Which city was a street photo taken in? Run {run.id}.",
                  description="POST a street photo as the multipart form field `image`. Errors "
                              "come as JSON: `{\"detail\": \"<one-line reason>\"}`.")

    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20),
                       detail=f"the upload is larger than this server accepts "
                              f"({max_upload_mb:g} MiB)")

    def ready_model() -> Model:
        if state["model"] is None:
            raise Refused(state["problem"])
        return state["model"]

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]  # loc: ("body" | "query", name, ...)
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return JSONResponse({"detail": f"internal error ({exc.__class__.__name__})"}, 500)

    @app.get("/health", summary="The process is up (whether or not the model is loaded)")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Whether the model is loaded and predictions can be answered",
             responses={503: ERRORS[503]})
    def ready() -> dict:
        model = ready_model()
        return {"status": "ready", "run": run.id, "name": run.info.get("name") or run.id,
                "model": run.info["model"], "img_size": run.info["preprocess"]["img_size"],
                "classes": run.classes, "engine": model.engine,
                "photo_check": model.gate is not None,
                "tensorflow_imported": "tensorflow" in sys.modules,
                "workers": workers, "queue": queue, "batch": batch, "timeout_s": timeout_s,
                "max_upload_mb": max_upload_mb}

    @app.post("/predict", response_model=Prediction, summary="Which city, how sure, and is it "
              "a street photo like the training ones at all?",
              responses={code: ERRORS[code] for code in (413, 422, 503, 504)})
    async def predict(image: Annotated[UploadFile, File(description="a street photo")],
                      top: Annotated[int, Query(ge=1, le=100)] = 5) -> dict:
        received = time.perf_counter()
        model = ready_model()
        data = await image.read()
        queued = time.perf_counter()
        try:
            result = await _run(state["predictions"], timeout_s, "photos", model, data,
                                image.filename or "upload", top)
        except ImageError as err:
            raise HTTPException(422, str(err)) from None
        timings = result["timings_ms"]  # queue: waiting for a worker
        timings["queue"] = round(1000 * (time.perf_counter() - queued) - timings["work"], 2)
        timings["total"] = round(1000 * (time.perf_counter() - received), 2)
        return {"run": run.id, "file": image.filename or "upload", **result}

    @app.post("/explain", summary="A PNG of the photo with the evidence for a city drawn on it",
              response_class=Response,
              responses={200: {"content": {"image/png": {}},
                               "description": "the photo as the model sees it; the headers "
                                              "X-City (percent-encoded UTF-8) and "
                                              "X-Probability say what is explained"},
                         **{code: ERRORS[code] for code in (413, 422, 503, 504)}})
    async def explain_photo(image: Annotated[UploadFile, File(description="a street photo")],
                            method: Literal["lime", "occlusion"] = "lime",  # model-agnostic
                            city: str | None = None) -> Response:
        if not explain:
            raise HTTPException(404, "explanations are turned off on this server")
        model = ready_model()
        if city is not None and city not in run.classes:
            raise HTTPException(422, f"city: this model knows no {city!r}; it knows "
                                     f"{', '.join(run.classes)}")
        data = await image.read()
        try:
            png, city, probability = await _run(state["explanations"], EXPLAIN_TIMEOUT_S,
                                                "explanations", model, data,
                                                image.filename or "upload", method, city)
        except ImageError as err:
            raise HTTPException(422, str(err)) from None
        return Response(png, media_type="image/png",  # headers are Latin-1: "Z%C3%BCrich"
                        headers={"X-City": quote(city), "X-Probability": f"{probability:.4f}"})

    return app


def serve(run: Run, host: str = "127.0.0.1", port: int = 8000,
          max_connections: int = MAX_CONNECTIONS, **settings) -> None:
    """Serve the API until interrupted (`settings`: create_app's). Logs only warnings; one line
    says where. Raises ValueError for settings out of range, before anything starts."""
    import uvicorn
    app = create_app(run, **settings)
    print(f"serving run {run.id} on http://{host}:{port} (docs: /docs); Ctrl-C stops",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                limit_concurrency=max_connections, timeout_keep_alive=5)
