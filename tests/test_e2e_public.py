"""Public mode in a real browser: `streamlit run` with CITYCLF_PUBLIC_RUN set, driven by Playwright
in Debian's Chromium. A visitor sees Predict (and the read-only Leaderboard and Errors), no sidebar,
no folder field and no button; a typed URL of another page lands on Predict; an uploaded photo
gets its city (or the photo check's verdict) and its explanation. Screenshots go to
tests/artifacts/public_*.png.
"""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cityclf import public
from cityclf.runs import Run
from test_e2e import (ARTIFACTS, CHROMIUM, REPO, browser, free_port,  # noqa: F401 - a fixture
                      no_exception, settle, shot)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (make test installs it)")
PREDICT_TITLE = "Predict a city"


def start_streamlit(home: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`streamlit run streamlit_app.py` on a free local port with `env` added, once healthy."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1"], cwd=REPO,
        env={**os.environ, "CITYCLF_HOME": str(home), "TQDM_DISABLE": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"streamlit did not start: {process.stdout.read()[-2000:]}")


@pytest.fixture(scope="module")
def published(trained_home):
    return next(Run(path) for path in sorted((trained_home / "models").iterdir())
                if "mobilenet" in path.name)


@pytest.fixture(scope="module")
def server(trained_home, published):
    process, url = start_streamlit(trained_home, {public.PUBLIC_RUN: published.id})
    yield url
    process.terminate()
    process.wait(timeout=20)


def nothing_but_predicting(page, where: str) -> None:
    """No sidebar, folder field, picker of the owner's or button anywhere on the page."""
    no_exception(page, where)
    for testid in ("stSidebar", "stTextInput", "stButton", "stSelectbox", "stNumberInput"):
        assert page.locator(f'[data-testid="{testid}"]').count() == 0, (where, testid)


def test_a_visitor_can_only_predict_and_read_scores(server, browser, published):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    typed = browser.new_page()  # (whose console shows Streamlit probing the path: 404s)
    typed.goto(f"{server}/dataset")  # a typed URL of a page the owner keeps to themselves
    settle(typed)
    assert typed.locator('[data-testid="stMain"] h1').first.inner_text() == PREDICT_TITLE
    typed.close()

    page.goto(server)
    settle(page)
    assert page.locator('[data-testid="stMain"] h1').first.inner_text() == PREDICT_TITLE
    for title in ("Home", "Dataset", "Inside the model", "Label", "Generated streets"):
        assert page.get_by_role("link", name=title, exact=True).count() == 0, title
    nothing_but_predicting(page, "Predict")

    photo = published.predictions()["path"].iloc[0]
    page.locator('input[type="file"]').first.set_input_files(photo)
    page.get_by_text("Green: supports").first.wait_for(timeout=120_000)  # LIME's caption
    settle(page)
    answer = page.locator('[data-testid="stMain"]').inner_text()
    assert "Most likely city" in answer or "Only a guess" in answer
    assert "Photo check" in answer or "Not a street photo" in answer or "Unlike" in answer
    assert str(published.path.parent) not in answer and "/tmp/" not in answer
    nothing_but_predicting(page, "Predict, an upload")
    shot(page, "public_predict.png")

    for title in ("Leaderboard", "Errors"):
        page.get_by_role("link", name=title).first.click()
        settle(page)
        assert page.locator('[data-testid="stMain"] h1').first.inner_text() == title
        nothing_but_predicting(page, title)
        assert "/tmp/" not in page.locator('[data-testid="stMain"]').inner_text()
        shot(page, f"public_{title.lower()}.png")
    assert console_errors == []
