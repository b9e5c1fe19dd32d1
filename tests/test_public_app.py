"""Public mode (CITYCLF_PUBLIC_RUN): the dashboard as a read-only predictor of one run, driven with
AppTest on the tiny trained MobileNetV2 run. Every forbidden thing is checked absent or refused:
dataset, folder and run pickers, buttons that scan, tag, train or build, the other pages, server
paths in any message, and photos over the rate limits."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cityclf import public
from cityclf.runs import list_runs
from conftest import rerun

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PREDICT_TITLE = "Predict a city"
FORBIDDEN_PAGES = ("pages/1_dataset.py", "pages/4_inside_the_model.py", "pages/6_label.py",
                   "pages/7_generated_streets.py")


@pytest.fixture
def published(use_trained_home, monkeypatch):
    """The tiny MobileNetV2 run published; fresh rate limits (they are process-wide)."""
    run = next(run for run in list_runs() if run.info["model"] == "mobilenet_v2")
    monkeypatch.setenv(public.PUBLIC_RUN, run.id)
    monkeypatch.setattr(public, "PER_SESSION", public.RateLimit(limit=2, window_s=600))
    monkeypatch.setattr(public, "PER_ADDRESS", public.RateLimit(limit=3, window_s=600))
    return run


def open_public(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if page:  # before the first run: the page file runs on its own, as a fresh server's URL does
        at.switch_page(page)
    return rerun(at)


def every_text(at: AppTest) -> str:
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error",
             "success", "metric")
    return "\n".join(str(getattr(element, "value", "")) + str(getattr(element, "label", ""))
                     for kind in kinds for element in at.get(kind))


def assert_nothing_to_do_but_predict(at: AppTest, home: Path) -> None:
    """No pickers, folder fields or buttons anywhere, no sidebar, and no path of the server."""
    assert not at.button and not at.text_input and not at.sidebar.children
    assert not {"dataset_pick", "dataset_typed", "run_pick", "compare_pick", "predict_sample"} & {
        widget.key for widget in [*at.selectbox, *at.text_input]}
    assert str(home) not in every_text(at) and "/tmp/" not in every_text(at)


def photo(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (72, 96, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def upload(at: AppTest, *names: str) -> AppTest:
    at.file_uploader(key="predict_uploads").set_value(
        [(name, photo(i), "image/jpeg") for i, name in enumerate(names)])
    return rerun(at)


def answered(at: AppTest) -> list[str]:
    """The photos answered: each gets its name as a subheader."""
    return [header.value for header in at.subheader]


def test_a_visitor_gets_predict_with_nothing_to_choose_or_press(published, trained_home):
    at = open_public()
    assert at.title[0].value == PREDICT_TITLE
    assert_nothing_to_do_but_predict(at, trained_home)
    assert f"**{published.info['model']}**" in at.markdown[0].value
    assert [toggle.key for toggle in at.toggle] == ["lime_on"]  # no LIME cost settings
    assert not at.number_input


@pytest.mark.parametrize("page", ["pages/2_leaderboard.py", "pages/3_errors.py"])
def test_leaderboard_and_errors_are_read_only(published, trained_home, page):
    at = open_public()
    at.switch_page(page)
    rerun(at)
    assert at.title[0].value in ("Leaderboard", "Errors")
    assert_nothing_to_do_but_predict(at, trained_home)
    headings = [header.value for header in at.subheader]
    assert "Two runs side by side" not in headings  # no second run to pick
    assert not at.get("image")  # no image of the dataset
    if page.endswith("errors.py"):
        assert "Confusion matrix" in headings and "Confidently wrong" not in headings


@pytest.mark.parametrize("page", FORBIDDEN_PAGES)
def test_every_other_page_leads_back_to_predict(published, trained_home, page):
    at = open_public(page)
    assert at.title[0].value == PREDICT_TITLE
    assert_nothing_to_do_but_predict(at, trained_home)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(page)  # and once the app has run, the navigation does not list it


def test_a_photo_is_answered_with_the_photo_check_and_a_bad_file_in_one_line(published):
    at = open_public()
    at.toggle(key="lime_on").set_value(False)
    at.file_uploader(key="predict_uploads").set_value([
        ("street.jpg", photo(0), "image/jpeg"), ("notes.jpg", b"my notes", "image/jpeg")])
    rerun(at)
    assert answered(at) == ["street.jpg"] and at.get("image")  # the photo, as the model sees it
    assert [error.value for error in at.error] == [
        "notes.jpg: not a readable image (it is a text file)"]
    # random pixels are no street: the verdict is shown first, the city only as a guess
    assert at.warning[0].value.startswith("Not a street photo")
    assert any(md.value.startswith(":gray[Only a guess: **") for md in at.markdown)


def test_photos_over_the_session_or_address_limit_are_refused_kindly(published, monkeypatch):
    # AppTest gives each session a mock for its address: both tabs get one real address here.
    monkeypatch.setattr(public, "client_address", lambda peer, forwarded: "203.0.113.7")
    first = open_public()
    first.toggle(key="lime_on").set_value(False)
    upload(first, "a.jpg", "b.jpg", "c.jpg")  # the session's limit is 2
    assert answered(first) == ["a.jpg", "b.jpg"]
    refusal, = [warning.value for warning in first.warning if "try again" in warning.value]
    assert refusal.startswith("c.jpg: That is as many photos as this browser tab may send")
    rerun(first)  # a rerun shows the answered photos again without counting them again
    assert answered(first) == ["a.jpg", "b.jpg"]

    second = open_public()  # another tab of the same address, whose limit is 3
    second.toggle(key="lime_on").set_value(False)
    upload(second, "d.jpg", "e.jpg")
    assert answered(second) == ["d.jpg"]
    assert any(warning.value.startswith("e.jpg: That is as many photos as your network")
               for warning in second.warning)


def test_an_unreadable_published_run_tells_nothing_of_the_server(published, trained_home,
                                                                  monkeypatch):
    monkeypatch.setenv(public.PUBLIC_RUN, "no-such-run")
    at = open_public()
    assert [warning.value for warning in at.warning] == [public.UNAVAILABLE]
    assert_nothing_to_do_but_predict(at, trained_home)


# ------------------------------------------------------------------ the rules, without a page

def test_a_rate_limit_slides_and_forgets_the_oldest_keys():
    limit = public.RateLimit(limit=2, window_s=10, max_keys=2)
    limit.record("a", now=0)
    limit.record("a", now=1)
    assert limit.wait_s("a", now=2) == 8  # until the first event leaves the window
    assert limit.wait_s("a", now=10) == 0
    limit.record("b", now=3)
    limit.record("c", now=3)  # a third key: "a", the least recently seen, is forgotten
    assert limit.wait_s("a", now=4) == 0


def test_admit_counts_both_limits_or_neither(monkeypatch):
    monkeypatch.setattr(public, "PER_SESSION", public.RateLimit(limit=5, window_s=60))
    monkeypatch.setattr(public, "PER_ADDRESS", public.RateLimit(limit=1, window_s=60))
    assert public.admit("tab", "1.2.3.4", now=0) is None
    assert "your network" in public.admit("tab", "1.2.3.4", now=1)
    assert public.PER_SESSION.wait_s("tab", now=1) == 0 and \
        len(public.PER_SESSION._events["tab"]) == 1  # the refused photo was not counted


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("8.8.8.8", "1.1.1.1", "8.8.8.8"),            # a visitor's own X-Forwarded-For is ignored
    (None, "1.1.1.1, 9.9.9.9", "9.9.9.9"),        # a local proxy: the address it appended
    ("10.0.0.5", "9.9.9.9", "9.9.9.9"),           # a load balancer on a private network
    (None, None, "local"),
])
def test_the_visitor_address_behind_a_proxy(peer, forwarded, expected):
    assert public.client_address(peer, forwarded) == expected


@pytest.mark.parametrize("message, shown", [
    ("run x: model file is corrupt (/srv/home/models/x/model.keras)",
     "run x: model file is corrupt (…/model.keras)"),
    ("/data/msls: cannot be read ([Errno 13] Permission denied: '/data/msls/a.jpg')",
     "…/msls: cannot be read ([Errno 13] Permission denied: '…/a.jpg')"),
    (r"C:\Users\me\city.jpg: empty file", "…/city.jpg: empty file"),
    ("street.jpg: not a readable image (image/jpeg)\nline two",
     "street.jpg: not a readable image (image/jpeg) line two"),
])
def test_messages_show_no_server_path(message, shown):
    assert public.safe_message(message) == shown
