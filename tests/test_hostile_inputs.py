"""Every upload, dataset and cache file either works or fails with a clear message.

The corpus of bad and unusual files (tests/hostile_corpus.py) is generated into a temporary folder
and each case goes through the package API (`load_rgb`, `image_size`, an upload-like open file),
`predict_files` on a trained run and the Predict page. A case passes when every route gives its
expected outcome: a photo of the right shape and pixels, or an ImageError whose one-line message
names the file and says what is wrong, in well under LOAD_SECONDS. The corpus test prints
`corpus: N passed, M failed`. Then: worst cases in a subprocess (peak memory), what dataset scans
and the TensorFlow pipeline make of the corpus, and hostile dataset trees.
"""
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import hostile_corpus
from cityclf import datasets, images
from cityclf.datasets import DatasetError, scan
from cityclf.images import MAX_FILE_BYTES, MAX_PIXELS, ImageError, image_size, load_rgb
from cityclf.inference import predict_files
from cityclf.runs import list_runs
from conftest import write_image
from hostile_corpus import Case

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PREDICT = "pages/5_predict.py"
LOAD_SECONDS = 2.0  # per case and route; a hang or a bomb being decoded takes far longer
PEAK_BYTES = 2**30  # 1 GiB for a whole Python process decoding the worst files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return hostile_corpus.generate(tmp_path_factory.mktemp("corpus"))


def upload(name: str, data: bytes) -> io.BytesIO:
    """What a browser upload looks like to cityclf: an open file that knows its name."""
    file = io.BytesIO(data)
    file.name = name
    return file


def judge(case: Case, rgb: np.ndarray | None, message: str | None) -> str | None:
    """What is wrong with one outcome of `case`, or None when it is the expected one."""
    if case.works:
        if rgb is None:
            return f"refused: {message}"
        if rgb.dtype != np.uint8 or rgb.shape != (*case.shape, 3):
            return f"gave {rgb.dtype} {rgb.shape}, not uint8 {(*case.shape, 3)}"
        if case.check and not case.check(rgb):
            return "wrong pixels"
        return None
    if message is None:
        return "not refused"
    if not message.startswith(f"{case.name}: ") or "\n" in message:
        return f"message does not name the file in one line: {message!r}"
    if case.error not in message:
        return f"message {message!r} lacks {case.error!r}"
    return None


def timed(load, source) -> tuple[np.ndarray | None, str | None, float]:
    start = time.perf_counter()
    try:
        rgb, message = load(source), None
    except ImageError as err:
        rgb, message = None, str(err)
    return rgb, message, time.perf_counter() - start


def api_problems(case: Case, path: Path) -> list[str]:
    """The case through load_rgb (path and upload) and image_size."""
    problems = []
    routes = [("load_rgb(path)", path)]
    if case.upload:
        routes.append(("load_rgb(upload)", upload(case.name, path.read_bytes())))
    for route, source in routes:
        rgb, message, seconds = timed(load_rgb, source)
        if problem := judge(case, rgb, message):
            problems.append(f"{route}: {problem}")
        if seconds > LOAD_SECONDS:
            problems.append(f"{route}: took {seconds:.1f} s")
        if getattr(source, "closed", False):
            problems.append(f"{route}: closed the caller's file")
    size, message, seconds = timed(image_size, path)
    header_ok = case.works or "damaged image data" in case.error  # only the pixels are bad
    if header_ok and size is None:
        problems.append(f"image_size: refused: {message}")
    elif case.works and sorted(size) != sorted(case.shape):  # as stored: EXIF rotation not applied
        problems.append(f"image_size: {size}, not {case.shape[::-1]}")
    elif not header_ok and (problem := judge(case, None, message)):
        problems.append(f"image_size: {problem}")
    if seconds > LOAD_SECONDS:
        problems.append(f"image_size: took {seconds:.1f} s")
    return problems


def prediction_problems(case: Case, result: dict, classes: list[str]) -> list[str]:
    """One result of predict_files: top cities for a photo, the loader's message otherwise."""
    if case.works and "top" not in result:
        return [f"predict_files: {result.get('error')}"]
    if case.works and not all(city in classes for city, _ in result["top"]):
        return [f"predict_files: unknown cities in {result['top']}"]
    if not case.works and (problem := judge(case, None, result.get("error"))):
        return [f"predict_files: {problem}"]
    return []


def predict_page() -> AppTest:
    """The Predict page on the LeNet run, LIME off (explanations are tested elsewhere)."""
    at = AppTest.from_file(APP, default_timeout=300).run()
    lenet = next(run for run in list_runs() if run.info["model"] == "lenet")
    at.selectbox(key="run_pick").set_value(lenet.id).run()
    at.switch_page(PREDICT).run()
    at.toggle(key="lime_on").set_value(False)
    return at


def page_problems(cases: list[Case], corpus: dict[str, Path], classes: list[str]) -> dict:
    """Upload every case at once to the Predict page; each shows a city or its st.error."""
    at = predict_page()
    uploader = at.file_uploader(key="predict_uploads")
    accepted = [case for case in cases
                if case.upload and Path(case.name).suffix.lower() in uploader.allowed_type]
    uploader.set_value([(case.name, corpus[case.name].read_bytes(), "application/octet-stream")
                        for case in accepted])
    at.run()
    if at.exception:
        return {case.name: ["page: raised an exception (traceback in the captured log)"]
                for case in accepted}
    errors = {error.value.split(": ", 1)[0]: error.value for error in at.error}
    shown = [header.value for header in at.subheader]
    # Each photo's city: its metric, or its greyed guess when the photo check doubts the photo
    cities = [metric.value for metric in at.metric if metric.label == "Most likely city"] + [
        md.value.split("**")[1] for md in at.markdown if md.value.startswith(":gray[Only a guess")]
    problems = {}
    cities_ok = len(cities) == len(shown) and set(cities) <= set(classes)
    for case in accepted:
        if case.works and case.name not in shown:
            problems[case.name] = [f"page: no prediction ({errors.get(case.name)})"]
        elif case.works and not cities_ok:
            problems[case.name] = [f"page: {len(shown)} photos shown, but cities {cities}"]
        elif not case.works and (problem := judge(case, None, errors.get(case.name))):
            problems[case.name] = [f"page: {problem}"]
    return problems


def test_every_corpus_case_works_or_fails_clearly(corpus, use_trained_home, capsys):
    cases = hostile_corpus.applicable()
    assert len(cases) >= 30
    problems = {case.name: api_problems(case, corpus[case.name]) for case in cases}

    run = next(run for run in list_runs() if run.info["model"] == "lenet")
    results = predict_files(run, [corpus[case.name] for case in cases])
    for case, result in zip(cases, results):
        problems[case.name] += prediction_problems(case, result, run.classes)

    for name, found in page_problems(cases, corpus, run.classes).items():
        problems.setdefault(name, []).extend(found)

    failed = {name: found for name, found in problems.items() if found}
    with capsys.disabled():
        print(f"\ncorpus: {len(problems) - len(failed)} passed, {len(failed)} failed")
    assert not failed, "\n".join(f"{name}: {'; '.join(found)}" for name, found in failed.items())


def test_the_same_photo_uploaded_twice_is_shown_twice(use_trained_home):
    photo = hostile_corpus.encode(hostile_corpus.photo(), "JPEG")
    at = predict_page()
    at.file_uploader(key="predict_uploads").set_value(
        [("street.jpg", photo, "image/jpeg"), ("copy of street.jpg", photo, "image/jpeg")])
    at.run()
    assert not at.exception, at.exception[0].message
    assert [header.value for header in at.subheader] == ["street.jpg", "copy of street.jpg"]


# ------------------------------------------------------------------------- worst cases

# Run in a fresh interpreter: VmHWM is its own peak (ru_maxrss would start at pytest's).
WORST_CASE = """
import json, re, resource, time
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a runaway fails, not the box
from cityclf.images import ImageError, load_rgb
start = time.perf_counter()
try:
    shape = list(load_rgb({path!r}).shape)
except ImageError as err:
    shape = str(err)
seconds = time.perf_counter() - start
peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(json.dumps({{"shape": shape, "seconds": seconds, "peak": int(peak_kb) * 1024}}))
"""


def largest_allowed_png(path: Path) -> None:
    """8000×8000 (MAX_PIXELS) RGBA, half transparent: the most a loader must hold at once."""
    side = int(MAX_PIXELS ** 0.5)
    image = Image.new("RGBA", (side, side), (20, 20, 230, 255))
    image.paste((0, 0, 0, 0), (0, 0, side // 2, side))
    image.save(path, compress_level=1)


WORST = {  # name -> (writer, expected shape or message fragment)
    "largest_allowed.png": (largest_allowed_png, [8000, 8000, 3]),
    "bomb_50000x50000.png": (None, "image is too large"),
    "bomb_60000x60000.jpg": (None, "image is too large"),
    "over_limit_8001x8000.png": (None, "px is too large"),
    "200MB.jpg": (None, "file is too large"),
    "text_bomb.png": (None, "Decompressed data too large"),
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory read from /proc")
@pytest.mark.parametrize("name", list(WORST))
def test_worst_cases_stay_under_a_gibibyte_and_a_few_seconds(name, corpus, tmp_path, capsys):
    write, expected = WORST[name]
    path = corpus.get(name) or tmp_path / name
    if write:
        write(path)
    done = subprocess.run([sys.executable, "-c", WORST_CASE.format(path=str(path))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    with capsys.disabled():
        print(f"\n{name}: {report['seconds']:.2f} s, peak {report['peak'] / 2**20:.0f} MiB")
    if isinstance(expected, list):
        assert report["shape"] == expected
    else:
        assert expected in report["shape"]
    assert report["peak"] < PEAK_BYTES
    assert report["seconds"] < (5 if write else LOAD_SECONDS)


def test_size_limits_are_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: pytest.fail("file was opened"))
    with pytest.raises(ImageError, match="big.jpg: file is too large"):
        load_rgb(big)


# ------------------------------------------------------- scans and the TensorFlow pipeline

def test_scan_skips_with_the_loaders_reason_what_it_cannot_use(corpus, tmp_path):
    root = tmp_path / "ds"
    (root / "paris").mkdir(parents=True)
    for name, path in corpus.items():
        (root / "paris" / name).symlink_to(path)
    write_image(root / "rome/1.jpg")
    dataset = scan(root, progress=False)
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: Path(p).name),
                       dataset.skipped["reason"]))
    kept = set(dataset.manifest["key"].map(lambda key: key.split("/", 1)[1]))
    for case in hostile_corpus.applicable():
        if corpus[case.name].is_dir():  # os.walk lists a folder named x.jpg as a folder
            assert case.name not in reasons and case.name not in kept
        elif not images.is_image_name(case.name):
            assert reasons[case.name] == "not an image"
        elif case.works or "damaged image data" in case.error:  # headers are fine
            assert case.name in kept, reasons.get(case.name)
        else:
            assert case.error in reasons[case.name], (case.name, reasons.get(case.name))
    assert reasons["200MB.jpg"].endswith("file is too large (200 MiB; limit 50 MiB)")
    assert "image is too large" in reasons["bomb_50000x50000.png"]


def test_the_pipeline_drops_what_it_cannot_decode_without_failing(corpus):
    from cityclf.pipeline import Preprocess, load_images
    usable = [path for path in corpus.values()
              if path.is_file() and os.access(path, os.R_OK)
              and path.stat().st_size <= MAX_FILE_BYTES]
    decoded, rows = load_images(usable, Preprocess(img_size=16))
    names = {usable[row].name for row in rows}
    assert decoded.shape == (len(rows), 16, 16, 3)
    assert {"notes.jpg", "invoice.jpg", "cut_in_half.jpg", "empty.jpg"}.isdisjoint(names)
    assert {"progressive.jpg", "grey16.png", "animated.gif", "cmyk.jpg"} <= names


# ---------------------------------------------------------------------- hostile datasets

def test_links_to_nowhere_and_link_loops_are_skipped_not_fatal(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"oslo/{i}.jpg")
    (root / "oslo/gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "oslo/self.jpg").symlink_to(root / "oslo/self.jpg")
    (root / "oslo/up").symlink_to(root / "oslo")  # a folder loop: os.walk does not follow it
    (root / "mirror").symlink_to(root)            # a city that is the dataset itself
    dataset = scan(root, progress=False)
    assert dataset.cities == ["oslo"] and len(dataset.manifest) == 4
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: Path(p).name),
                       dataset.skipped["reason"]))
    assert reasons == {"gone.jpg": "gone.jpg: a link to a missing file",
                       "self.jpg": "self.jpg: cannot be read (Too many levels of symbolic links)"}
    assert dataset.problems == ["mirror/ links back into the dataset (a loop); ignored"]


def walk_denying(denied: str):
    """os.walk as it behaves for a folder the user may not list (root may list everything)."""
    real_walk = os.walk

    def walk(top, onerror=None, **options):
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, **options):
            if Path(dirpath).name == denied:
                onerror(PermissionError(13, "Permission denied", dirpath))
                dirnames.clear()
                continue
            yield dirpath, dirnames, filenames
    return walk


def test_a_folder_that_cannot_be_listed_is_a_problem_not_a_silence(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"lima/{i}.jpg")
        write_image(root / f"lima/locked/{i}.jpg")
    write_image(root / "quito/locked/0.jpg")
    monkeypatch.setattr(os, "walk", walk_denying("locked"))
    dataset = scan(root, progress=False)
    assert len(dataset.manifest) == 4
    assert f"{root.resolve()}/lima/locked: folder cannot be read (Permission denied); its " \
           f"images are missing" in dataset.problems
    assert "city quito: no readable images" in dataset.problems


@pytest.mark.skipif(os.geteuid() == 0, reason="root may list any folder")
def test_a_folder_without_permission_is_a_problem(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"lima/{i}.jpg")
    write_image(root / "lima/locked/0.jpg").parent.chmod(0)
    try:
        dataset = scan(root, progress=False)
    finally:
        (root / "lima/locked").chmod(0o755)
    assert any("locked: folder cannot be read" in note for note in dataset.problems)


def test_empty_and_tiny_cities_are_noted(tmp_path):
    root = tmp_path / "ds"
    for i in range(5):
        write_image(root / f"kyiv/{i}.jpg")
    write_image(root / "riga/only.jpg")
    (root / "vilnius").mkdir()
    (root / "tallinn").mkdir()
    (root / "tallinn/broken.jpg").write_bytes(b"")
    write_image(root / "loose.jpg")
    dataset = scan(root, progress=False)
    assert dataset.cities == ["kyiv", "riga"]
    assert dataset.problems == [
        "1 image(s) directly in ds/ belong to no city folder; ignored",
        "city tallinn: no readable images", "city vilnius: no readable images",
        "city riga: only 1 image(s); too few to be in both training and test"]


def test_nothing_usable_is_an_error_that_names_the_first_problem(tmp_path, monkeypatch):
    write_image(tmp_path / "ds/lima/locked/0.jpg")
    monkeypatch.setattr(os, "walk", walk_denying("locked"))
    with pytest.raises(DatasetError, match="no readable images found .*folder cannot be read"):
        scan(tmp_path / "ds", progress=False)


def msls_subset(folder: Path, keys: list[str]) -> None:
    for key in keys:
        write_image(folder / "images" / f"{key}.jpg")


def test_msls_csvs_with_missing_columns_or_stray_keys_are_noted(tmp_path):
    root = tmp_path / "msls"
    query = root / "train_val/lima/query"
    msls_subset(query, ["a", "b", "c", "d"])
    pd.DataFrame({"key": ["a", "b", "zz"], "lon": [1.0, "east", 3.0]}).to_csv(query / "raw.csv")
    pd.DataFrame({"sequence_key": ["s"], "frame_number": [0]}).to_csv(query / "seq_info.csv")
    (query / "postprocessed.csv").write_bytes(b"")
    database = root / "train_val/lima/database"
    msls_subset(database, ["e", "f"])
    pd.DataFrame({"key": ["e", "e", "f"], "night": [True, False, "maybe"]}).to_csv(
        database / "postprocessed.csv", index=False)  # no index column either
    dataset = scan(root, progress=False)
    assert sorted(dataset.manifest["key"]) == ["a", "b", "c", "d", "e", "f"]
    m = dataset.manifest.set_index("key")
    assert m.loc["a", "lon"] == 1.0 and pd.isna(m.loc["b", "lon"]) and pd.isna(m.loc["c", "lat"])
    assert m.loc["e", "night"] and pd.isna(m.loc["f", "night"])
    raw, seq, post = ("train_val/lima/query/" + csv for csv in
                      ("raw.csv", "seq_info.csv", "postprocessed.csv"))
    db_post = "train_val/lima/database/postprocessed.csv"
    assert dataset.problems == [
        f"{raw}: no lat, captured_at, pano column(s)",
        f"{raw}: 1 unreadable value(s) in lon",
        f"{raw}: 1 row(s) match no image",
        f"{raw}: no row for 2 image(s); their fields stay empty",
        f"{seq}: no key column; ignored",
        f"{post}: cannot be read (No columns to parse from file); ignored",
        f"{db_post}: no control_panel, view_direction column(s)",
        f"{db_post}: 1 repeated key(s); the first row of each is used",
        f"{db_post}: 1 unreadable value(s) in night",
    ]


@pytest.mark.parametrize("damage", ["garbage parquet", "old version", "json list",
                                    "missing columns", "no json"])
def test_a_damaged_or_old_cache_is_rebuilt_not_trusted(tmp_path, damage):
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"bern/{i}.jpg", width=50)
    first = scan(root, progress=False)
    cache = first.cache
    meta = json.loads((cache / "dataset.json").read_text())
    if damage == "garbage parquet":
        (cache / "files.parquet").write_bytes(b"garbage")
    elif damage == "old version":  # an older cityclf's verdicts may be wrong now
        (cache / "dataset.json").write_text(json.dumps({**meta, "version": 1}))
        pd.read_parquet(cache / "files.parquet").assign(width=1).to_parquet(cache / "files.parquet")
    elif damage == "json list":
        (cache / "dataset.json").write_text("[1, 2]")
    elif damage == "missing columns":
        pd.read_parquet(cache / "files.parquet").drop(columns="error").to_parquet(
            cache / "files.parquet")
    else:
        (cache / "dataset.json").unlink()
    again = scan(root, progress=False)
    assert again.opened == 4 and (again.manifest["width"] == 50).all()
    assert json.loads((cache / "dataset.json").read_text())["version"] == datasets.CACHE_VERSION
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))


def test_an_unwritable_cache_is_a_problem_not_a_failure(tmp_path, monkeypatch):
    write_image(tmp_path / "ds/bern/0.jpg")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(datasets, "_write_cache", refuse)
    dataset = scan(tmp_path / "ds", progress=False)
    assert len(dataset.manifest) == 1
    assert dataset.problems[0].startswith("scan cache not saved in ")
