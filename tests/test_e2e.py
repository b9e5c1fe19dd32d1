"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a live server.

Opens the app as a user does (the home page, then the navigation links), browses the test split
on Dataset, clicks a confusion cell on Errors, picks a test image the model gets wrong and uploads
a photo on Predict, and fails on any Streamlit exception box or browser console error.
Screenshots of every page and interaction go to tests/artifacts/: look at them.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cityclf.datasets import scan
from cityclf.inference import predict_files
from cityclf.runs import list_runs
from cityclf.splits import load_split

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
REPO = Path(__file__).resolve().parent.parent
PAGES = ["Dataset", "Leaderboard", "Errors", "Inside the model", "Predict"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_home(request):
    """The tiny trained home, or ``$CITYCLF_E2E_HOME`` (for example a ``cityclf demo`` home) to
    time the Predict page on a full-size model: its log line is the page's end-to-end figure."""
    chosen = os.environ.get("CITYCLF_E2E_HOME")
    return Path(chosen).resolve() if chosen else request.getfixturevalue("trained_home")


@pytest.fixture(scope="module")
def server(app_home):
    port = free_port()
    env = {**os.environ, "CITYCLF_HOME": str(app_home), "TQDM_DISABLE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stdout.read()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield chromium
        chromium.close()


IDLE = """() => !document.querySelector('[data-testid="stStatusWidget"]')
             && document.querySelector('[data-testid="stMain"] h1') !== null"""
IMAGES_LOADED = "() => [...document.images].every(image => image.complete)"


def settle(page, timeout_ms=180_000) -> None:
    """Wait until Streamlit has drawn the page's title, stays idle (no 'running' widget) and its
    images have loaded (else a screenshot shows empty boxes)."""
    for _ in range(2):  # twice, a moment apart: a rerun may start right after the first one
        page.wait_for_timeout(700)
        page.wait_for_function(IDLE, timeout=timeout_ms)
    page.wait_for_function(IMAGES_LOADED, timeout=30_000)


def choose(page, label: str, option: str, sidebar: bool = False, typed: str | None = None) -> None:
    """Pick `option` in the selectbox labelled `label` (typing `typed` first to filter a long
    list), then wait for the rerun."""
    where = '[data-testid="stSidebar"] ' if sidebar else '[data-testid="stMain"] '
    page.locator(where + '[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    if typed:
        page.keyboard.type(typed)
    page.get_by_role("option", name=option).first.click()
    settle(page)


def shot(page, name: str, height: int = 2400) -> None:
    """A screenshot of the page `height` px tall: Streamlit scrolls inside its own container, so a
    full-page screenshot shows only the window; a taller window shows the whole page."""
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_timeout(500)  # charts redraw at the new size
    page.wait_for_function(IMAGES_LOADED, timeout=30_000)
    page.screenshot(path=ARTIFACTS / name)
    page.set_viewport_size(size)


def no_exception(page, where: str) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, where


def test_every_page_and_a_prediction_in_a_real_browser(server, browser, app_home,
                                                       monkeypatch):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    page.goto(server)
    settle(page)
    shot(page, "home.png")
    assert page.locator('[data-testid="stMain"] h1').first.inner_text() == "cityclf"
    for title in PAGES:
        page.get_by_role("link", name=title).first.click()
        settle(page)
        shot(page, f"{title.lower().replace(' ', '_')}.png")
        no_exception(page, title)

    # Dataset: browse the test split alone; the count is that of the saved split.
    monkeypatch.setenv("CITYCLF_HOME", str(app_home))
    runs = {}
    for run in list_runs():  # the newest run of each model
        runs.setdefault(run.info["model"], run)
    split = load_split(scan(runs["lenet"].info["dataset"]["root"], progress=False))
    page.get_by_role("link", name="Dataset").first.click()
    settle(page)
    choose(page, "Split", "test")
    page.get_by_text(f"{(split['split'] == 'test').sum():,} images match.").first.wait_for()
    no_exception(page, "Dataset, test split")
    shot(page, "dataset_test_split.png")

    # Predict with the MobileNetV2 run (picked in the sidebar): upload a test image and wait for
    # the answer and its LIME explanation.
    run = runs["mobilenet_v2"]
    choose(page, "Run", run.info["name"], sidebar=True)
    page.get_by_role("link", name="Predict").first.click()
    settle(page)
    # a test photo the photo check passes (a doubted one is answered as a greyed guess)
    answers = predict_files(run, run.predictions()["path"].iloc[:20])
    answer = next(a for a in answers if a.get("ood", {}).get("verdict", "ok") == "ok")
    photo, expected = answer["path"], answer["top"][0][0]
    start = time.perf_counter()
    page.locator('input[type="file"]').first.set_input_files(photo)
    page.get_by_text("Most likely city").first.wait_for(timeout=120_000)
    answered = time.perf_counter() - start
    page.get_by_text("Green: supports").first.wait_for(timeout=120_000)  # the LIME picture's caption
    explained = time.perf_counter() - start
    settle(page)
    cached = page.get_by_text("Explanation read from the cache").count() >= 1
    assert cached or page.get_by_text("Explained in").count() >= 1
    shot(page, "predict_upload.png")
    print(f"\nPredict page, {run.info['model']} at {run.info['preprocess']['img_size']} px: "
          f"top-5 shown {answered:.1f} s, LIME explanation shown {explained:.1f} s after upload"
          + (" (read from the cache)" if cached else ""))
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Most likely city").first
    assert expected in metric.inner_text()
    no_exception(page, "Predict, an upload")

    # Errors of the LeNet run (it confuses cities), picked in the sidebar there (so the upload
    # above is gone from Predict when we come back): a click on a cell shows its images, grouped
    # by sequence, or says what an empty cell means.
    lenet = runs["lenet"]
    choose(page, "Run", lenet.info["name"], sidebar=True)
    page.get_by_role("link", name="Errors").first.click()
    settle(page)
    labels = lenet.metrics["confusion_matrix"]["labels"]
    matrix = lenet.metrics["confusion_matrix"]["matrix"]
    worst = (lenet.metrics["most_confused"] or [{"true": labels[0], "predicted": labels[0]}])[0]
    cells = sorted(((matrix[t][p], t, p) for t in range(len(labels)) for p in range(len(labels))
                    if (labels[t], labels[p]) != (worst["true"], worst["predicted"])),
                   reverse=True)
    count, t, p = cells[0]  # the largest cell not shown on arrival
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    box = chart.locator(".scatterlayer .point").nth(t * len(labels) + p).bounding_box()
    expected = (f"{count} test image(s) of {labels[t]} predicted as {labels[p]}" if count
                else f"No test image of {labels[t]} was predicted as {labels[p]}")
    start = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text(expected).first.wait_for(timeout=30_000)
    print(f"Errors page: a clicked cell's images shown {time.perf_counter() - start:.1f} s "
          "after the click")
    settle(page)
    main = page.locator('[data-testid="stMain"]')
    if count:
        assert main.get_by_text(" frame").count() > 0  # one card per sequence
    no_exception(page, "Errors, a clicked cell")
    shot(page, "errors_cell.png")

    # Predict, still with LeNet: a test image it gets wrong shows ✗ and, beside the evidence for
    # its answer, the evidence for the true city.
    page.get_by_role("link", name="Predict").first.click()
    settle(page)
    test = split[split["split"] == "test"]
    answers = predict_files(lenet, test["path"].iloc[:30])
    wrong, truth = next((a, city) for a, city in zip(answers, test["city"])
                        if a["top"][0][0] != city)
    name = Path(wrong["path"]).name
    choose(page, "pick a test image", f"{truth} · {name}", typed=name)
    page.get_by_text(f"✗ Wrong: taken in {truth}").first.wait_for(timeout=120_000)
    for city in (wrong["top"][0][0], truth):
        page.get_by_text(f"Green: supports {city}").first.wait_for(timeout=120_000)
    settle(page)
    assert page.get_by_text(f"The true city: {truth}").count() == 1
    no_exception(page, "Predict, a wrong test image")
    shot(page, "predict_wrong.png")
    assert page.get_by_role("button", name="Deploy").count() == 0  # toolbarMode = "viewer"
    assert console_errors == []
