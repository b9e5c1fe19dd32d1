"""The Label page in a real browser: a photo labelled with a number key is on disk at once."""
import shutil
import time

import pytest

from cityclf.pool import Pool
from conftest import TINY_CITIES
from test_e2e import ARTIFACTS, browser, choose, no_exception, server, settle, shot  # noqa: F401


@pytest.fixture(scope="module")
def app_home(trained_home, tmp_path_factory):
    """A writable copy of the trained home (labels are written) with a pool of new photos."""
    home = tmp_path_factory.mktemp("label_e2e") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("data"))
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(trained_home / "data" / "demo")
    from cityclf.synth import synthesize
    drawn = synthesize(home.parent / "drawn", cities=TINY_CITIES, per_city=4, size=(96, 72),
                       seed=4, progress=False)
    folder = home.parent / "my photos"
    folder.mkdir()
    for i, path in enumerate(sorted(drawn.rglob("images/*.jpg"))):
        shutil.copy(path, folder / f"{i:03d}.jpg")
    return home


def test_a_photo_labelled_by_keyboard(server, browser, app_home, monkeypatch):
    monkeypatch.setenv("CITYCLF_HOME", str(app_home))
    pool = Pool.open(app_home.parent / "my photos")  # known to the page's pool picker
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    settle(page)
    choose(page, "Run", "mobilenet_v2 64px", sidebar=True)
    page.get_by_role("link", name="Label").first.click()
    settle(page)
    no_exception(page, "Label")
    assert page.get_by_text("Which city is this?").count() == 1
    page.locator('[data-testid="stMain"] h1').first.click()  # focus the page, not a widget
    page.keyboard.press("1")
    deadline = time.time() + 60
    while time.time() < deadline and pool.labels().empty:
        page.wait_for_timeout(500)
    settle(page)
    shot(page, "label.png")
    labels = pool.labels()
    assert len(labels) == 1 and labels["city"].iloc[0] in TINY_CITIES
    assert page.get_by_text("Saved:").count() == 1
    no_exception(page, "Label after a key")
    assert not errors, errors
