"""Serving under load: the JSON API (`cityclf serve`) and the public dashboard's Predict page.

API: the server runs in its own process on 127.0.0.1 with its default pool (2 workers, 16
waiting); httpx clients (asyncio, one process) post the run's test photos as fast as answers
come, for a bounded time, at 1, 4, 16 and 64 concurrent clients. Each row prints throughput
(answers/s), p50/p95/p99 latency, errors (a good photo not answered 200), refusals (503: the
pool was full, expected only beyond 2 + 16 clients) and the server's peak RSS; the baseline is
1 client, and each row's throughput and p50 are also given as a ratio of the baseline's. Then
16 clients post rounds of the hostile corpus of tests/hostile_corpus (bombs, truncated files,
PDF, HEIC...: every kind once a round, each after a good photo): every good photo must still be
answered, every hostile one as the corpus expects (a 422 with its reason, or 200 for the odd
but valid ones), and the peak RSS per round shows whether memory levels off or grows.

Dashboard: Playwright sessions (Chromium, one context each) on the public Predict page
(CITYCLF_PUBLIC_RUN), each uploading `--photos` new photos one after another and waiting for the
answer and for its LIME explanation: 1 session alone (the baseline), then 4 at once.

The server and its clients share this machine's cores, as on one small host; the load average
printed first says how busy the machine was otherwise. The run is `--run`, else the home's
default-recipe run, else its newest run with a verified fast path. Run:
    CITYCLF_HOME=/tmp/demohome .venv/bin/python bench/serve.py [--run RUN] [--seconds 15]
        [--hostile-rounds 4] [--photos 2] [--no-browser | --no-api]
"""
import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
CHROMIUM = "/usr/bin/chromium"
SERVER = ("import sys; from cityclf.runs import get_run; from cityclf.serve import serve; "
          "serve(get_run(sys.argv[1]), port=int(sys.argv[2]))")
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}


# ------------------------------------------------------------------------------ the run

def pick_run(wanted: str | None):
    """`wanted`, else the default-recipe run, else the newest with a verified fast path."""
    from cityclf import fast
    from cityclf.runs import get_run, list_runs
    if wanted:
        return get_run(wanted)
    runs = list_runs()
    default = [run for run in runs if str(run.info.get("name", "")).startswith("default recipe")]
    lean = [run for run in runs if (info := fast.read_fast_info(run)) and info.numpy_ok]
    if not (default or lean):
        raise SystemExit("no run with a fast path in this home: train one, or give --run")
    return (default or lean)[0]


def ensure_gate_network() -> None:
    """The gate network, converted once per home (as the first `cityclf predict` does), so the
    server can answer without TensorFlow; converting needs it, so it happens in a subprocess."""
    from cityclf.ood import gate_network_file
    if not gate_network_file().is_file():
        print("converting the photo check's network once for this home (TensorFlow)…")
        subprocess.run([sys.executable, "-c", "from cityclf.ood import gate_network; "
                        "gate_network()"], check=True, env={**os.environ, **QUIET})


def good_photos(run, n: int = 64) -> list[tuple[str, bytes]]:
    paths = list(run.predictions()["path"].iloc[:n])
    found = [(Path(p).name, Path(p).read_bytes()) for p in paths if Path(p).is_file()]
    if not found:
        raise SystemExit(f"the test photos of run {run.id} are gone (its dataset moved?)")
    return found


def hostile_files(limit_bytes: int) -> list[tuple[str, bytes, int]]:
    """(name, bytes, the status the API must give) of every uploadable corpus file that fits."""
    import hostile_corpus
    with tempfile.TemporaryDirectory(prefix="cityclf-bench-corpus-") as folder:
        paths = hostile_corpus.generate(Path(folder))
        return [(case.name, paths[case.name].read_bytes(), 200 if case.works else 422)
                for case in hostile_corpus.applicable()
                if case.upload and paths[case.name].stat().st_size <= limit_bytes]


# ------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """The largest RSS of a process while a block runs: the kernel's own peak (VmHWM, reset at
    the start through clear_refs) where allowed, else samples every 20 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._task = pid, 0.0, None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.02)

    async def __aenter__(self):
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._kernel = True
        except OSError:
            self._kernel = False
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        if self._kernel:
            self.peak = max(self.peak, rss_mib(self.pid, "VmHWM"))


def wait_http(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server stopped: {process.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {seconds:.0f} s")


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **QUIET, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------------------------ figures

def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with `share` of the values at or below."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def row(label: str, answered: int, seconds: float, latencies: list[float], errors: int,
        refused: int, peak: float, baseline: dict | None) -> dict:
    figures = {"label": label, "per_s": answered / seconds, "p50": percentile(latencies, .5),
               "p95": percentile(latencies, .95), "p99": percentile(latencies, .99),
               "errors": errors, "refused": refused, "peak": peak, "answered": answered}
    ratio = "  base   base"
    if baseline:
        ratio = (f"{figures['per_s'] / baseline['per_s']:4.2f}x  "
                 f"{figures['p50'] / baseline['p50']:4.2f}x")
    print(f"{label:<28} {figures['per_s']:7.2f} {1000 * figures['p50']:7.0f} "
          f"{1000 * figures['p95']:7.0f} {1000 * figures['p99']:7.0f} {errors:6d} {refused:7d} "
          f"{peak:8.0f}   {ratio}", flush=True)
    return figures


HEADER = (f"{'':<28} {'ans/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'refused':>7} {'peak MiB':>8}   per_s  p50 (ratio to 1 client)")


# ------------------------------------------------------------------------------ the API

async def drive_api(url: str, pid: int, clients: int, uploads: list,
                    seconds: float | None = None) -> dict:
    """`clients` loops posting `uploads` ((name, bytes, expected status; None for a good photo)):
    round-robin until `seconds` pass, or each once when `seconds` is None. What each got."""
    import httpx
    records = []  # (expected, status, seconds)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client, \
            PeakRss(pid) as peak:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (seconds or 0)
        each_once = iter(uploads)

        async def one(first: int) -> None:
            n = first
            while True:
                if seconds is None:
                    if (item := next(each_once, None)) is None:
                        return
                elif loop.time() < deadline:
                    item, n = uploads[n % len(uploads)], n + clients
                else:
                    return
                name, data, expected = item
                began = time.perf_counter()
                try:
                    status = (await client.post("/predict", files={
                        "image": (name, data, "image/jpeg")})).status_code
                except httpx.HTTPError as err:
                    status = err.__class__.__name__
                records.append((expected, status, time.perf_counter() - began))

        began = loop.time()
        await asyncio.gather(*(one(i) for i in range(clients)))
        elapsed = loop.time() - began
    return {"records": records, "seconds": elapsed, "peak": peak.peak}


def summarise_api(label: str, result: dict, baseline: dict | None) -> dict:
    good = [(status, t) for expected, status, t in result["records"] if expected is None]
    latencies = [t for status, t in good if status == 200]
    refused = sum(status == 503 for status, _ in good)
    figures = row(label, len(latencies), result["seconds"], latencies,
                  len(good) - len(latencies), refused, result["peak"], baseline)
    other = Counter(status for status, _ in good if status not in (200, 503))
    if other:
        print(f"  not answered: {dict(other)}")
    return figures


async def bench_api(run, seconds: float, rounds: int) -> None:
    from cityclf import serve
    port = free_port()
    server = start([sys.executable, "-c", SERVER, run.id, str(port)], {})
    url = f"http://127.0.0.1:{port}"
    try:
        began = time.perf_counter()
        wait_http(f"{url}/ready", server)
        import httpx
        ready = httpx.get(f"{url}/ready").json()
        print(f"\nAPI: run {run.id} ({ready['model']}, {ready['img_size']} px), engine "
              f"{ready['engine']}, TensorFlow imported: {ready['tensorflow_imported']}; ready "
              f"{time.perf_counter() - began:.1f} s after start, idle RSS "
              f"{rss_mib(server.pid):.0f} MiB; pool {ready['workers']} workers + "
              f"{ready['queue']} waiting; {seconds:g} s per row")
        photos = [(name, data, None) for name, data in good_photos(run)]
        await drive_api(url, server.pid, 2, photos, 3)  # warm-up
        print(HEADER)
        rows = {}
        for clients in (1, 4, 16, 64):
            result = await drive_api(url, server.pid, clients, photos, seconds)
            rows[clients] = summarise_api(f"{clients} client{'s' * (clients > 1)}", result,
                                          rows.get(1))
        hostile = hostile_files(int(serve.MAX_UPLOAD_MB * 2**20))
        # one round: every hostile kind once, each after a good photo
        mixed = [item for pair in zip(photos * (len(hostile) // len(photos) + 1), hostile)
                 for item in pair]
        print(f"16 clients, each round {len(hostile)} hostile uploads (every kind of the "
              f"corpus once) between {len(hostile)} good photos:")
        peaks = []
        for n in range(1, rounds + 1):
            result = await drive_api(url, server.pid, 16, mixed)
            figures = summarise_api(f"  round {n}", result, rows[1])
            bad = [(expected, status) for expected, status, _ in result["records"]
                   if expected is not None and status != expected]
            if figures["errors"] or bad:
                raise SystemExit(f"hostile uploads disturbed the server: {figures['errors']} "
                                 f"good photos not answered; hostile not as expected: {bad[:5]}")
            peaks.append(figures["peak"])
        levels = ", ".join(f"{peak:.0f}" for peak in peaks)
        print(f"every good photo answered, every hostile one refused with its reason (422) or "
              f"answered as the corpus expects; peak RSS per round {levels} MiB: "
              f"{peaks[-1] / rows[16]['peak']:.2f}x the clean 16-client pass's"
              + (f", {peaks[-1] / peaks[-2]:.2f}x the round before" if rounds > 1 else ""))
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------------------ the dashboard

async def one_session(browser, url: str, photos: list[str], timings: list, errors: list) -> None:
    """A visitor's tab: each photo uploaded in turn, timed to its answer and its explanation."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    await page.locator('[data-testid="stMain"] h1').first.wait_for(timeout=120_000)
    uploader = page.locator('input[type="file"]').first
    for n, photo in enumerate(photos, 1):
        began = time.perf_counter()
        try:
            await uploader.set_input_files(photo)
            answers = page.get_by_text("Most likely city").or_(page.get_by_text("Only a guess"))
            await answers.nth(n - 1).wait_for(timeout=300_000)
            answered = time.perf_counter() - began
            await page.get_by_text("Green: supports").nth(n - 1).wait_for(timeout=300_000)
            timings.append((answered, time.perf_counter() - began))
        except Exception as err:  # noqa: BLE001 - a timeout or a page error: counted
            errors.append(f"{err.__class__.__name__}: {str(err).splitlines()[0]}")
        if await page.locator('[data-testid="stException"]').count():
            errors.append("an exception box")
            break
    await context.close()


async def drive_dashboard(url: str, pid: int, sessions: int, photos: list[str],
                          per_session: int) -> dict:
    from playwright.async_api import async_playwright
    timings, errors = [], []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        async with PeakRss(pid) as peak:
            began = time.perf_counter()
            await asyncio.gather(*(
                one_session(browser, url, photos[s * per_session:(s + 1) * per_session],
                            timings, errors) for s in range(sessions)))
            elapsed = time.perf_counter() - began
        await browser.close()
    return {"timings": timings, "errors": errors, "seconds": elapsed, "peak": peak.peak}


async def bench_dashboard(run, per_session: int) -> None:
    port = free_port()
    server = start([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                    "--server.headless", "true", "--server.port", str(port),
                    "--server.address", "127.0.0.1"], {"CITYCLF_PUBLIC_RUN": run.id})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", server)
        # every upload a new photo: a photo seen before has its explanation in the cache
        paths = iter([p for p in run.predictions()["path"] if Path(p).is_file()])
        print(f"\nPublic dashboard (Predict, LIME on): run {run.id}; {per_session} photos per "
              f"session; latency = upload to answer shown / to explanation shown")
        await drive_dashboard(url, server.pid, 1, [next(paths)], 1)  # loads the model
        print(HEADER.replace("client", "session"))
        baseline = {}
        for sessions in (1, 4):
            photos = [next(paths) for _ in range(sessions * per_session)]
            result = await drive_dashboard(url, server.pid, sessions, photos, per_session)
            for what, n in (("answer", 0), ("explanation", 1)):
                values = [timing[n] for timing in result["timings"]]
                figures = row(f"{sessions} session{'s' * (sessions > 1)}, {what}", len(values),
                              result["seconds"], values, len(result["errors"]), 0,
                              result["peak"], baseline.get(what))
                baseline.setdefault(what, figures)
            for error in result["errors"][:3]:
                print(f"  error: {error}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run of the current cityclf home")
    parser.add_argument("--seconds", type=float, default=15, help="per API row")
    parser.add_argument("--hostile-rounds", type=int, default=4,
                        help="rounds of the hostile corpus (memory levels off after a few)")
    parser.add_argument("--photos", type=int, default=2,
                        help="photos each dashboard session uploads (the public rate limits "
                             "allow 40 a minute from one address: keep 4 x this under it)")
    parser.add_argument("--no-browser", action="store_true", help="the API only")
    parser.add_argument("--no-api", action="store_true", help="the dashboard only")
    args = parser.parse_args()
    run = pick_run(args.run)
    ensure_gate_network()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    if not args.no_api:
        asyncio.run(bench_api(run, args.seconds, args.hostile_rounds))
    if not args.no_browser and Path(CHROMIUM).exists():
        asyncio.run(bench_dashboard(run, args.photos))


if __name__ == "__main__":
    main()
