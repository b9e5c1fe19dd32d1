"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a live server.

Opens the app as a user does (the home page, then the navigation links), uploads a photo on
Predict, and fails on any Streamlit exception box or browser console error. Screenshots of every
page go to tests/artifacts/ (git-ignored): look at them.
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

from cityclf.inference import predict_files
from cityclf.runs import list_runs

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


def settle(page, timeout_ms=180_000) -> None:
    """Wait until Streamlit has drawn the page's title and stays idle (no 'running' widget)."""
    for _ in range(2):  # twice, a moment apart: a rerun may start right after the first one
        page.wait_for_timeout(700)
        page.wait_for_function(IDLE, timeout=timeout_ms)


def test_every_page_and_a_prediction_in_a_real_browser(server, browser, app_home,
                                                       monkeypatch):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    page.goto(server)
    settle(page)
    page.screenshot(path=ARTIFACTS / "home.png", full_page=True)
    assert page.locator('[data-testid="stMain"] h1').first.inner_text() == "cityclf"
    for title in PAGES:
        page.get_by_role("link", name=title).first.click()
        settle(page)
        page.screenshot(path=ARTIFACTS / f"{title.lower().replace(' ', '_')}.png", full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0, title

    # Predict with the MobileNetV2 run (picked in the sidebar): upload a test image and wait for
    # the answer and its LIME explanation.
    monkeypatch.setenv("CITYCLF_HOME", str(app_home))
    run = next(r for r in list_runs() if r.info["model"] == "mobilenet_v2")
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(
        has_text="Run").first.click()
    page.get_by_role("option", name=run.info["name"]).first.click()
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
    cached = page.get_by_text("Explanation read from the cache").count() == 1
    assert cached or page.get_by_text("Explained in").count() == 1
    page.screenshot(path=ARTIFACTS / "predict_upload.png", full_page=True)
    print(f"\nPredict page, {run.info['model']} at {run.info['preprocess']['img_size']} px: "
          f"top-5 shown {answered:.1f} s, LIME explanation shown {explained:.1f} s after upload"
          + (" (read from the cache)" if cached else ""))
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Most likely city").first
    assert expected in metric.inner_text()
    assert page.locator('[data-testid="stException"]').count() == 0
    assert console_errors == []
