"""The demo: a synthetic dataset and a small leaderboard, so a fresh install has something to show.

Each demo run is trained only if no run of that name exists yet for the demo dataset, so
`cityclf demo` (and `make app`) can be re-run cheaply and picks up where an interrupted build
stopped. The scene tags and the quality report are made too (both cached, so a re-run costs
seconds): a fresh `make app` then shows them on the Dataset page without a minute-long button.
"""
from __future__ import annotations

from typing import Callable

from . import config
from .datasets import scan
from .quality import quality_report
from .runs import list_runs
from .scenes import tag_scenes
from .splits import load_split
from .train import TrainConfig, train

DEMO_IMG_SIZE = 224  # the proof of concept's size; 160 px costs MobileNetV2 ~10 points here
# (name, settings): the comparison the README reports. All Keras runs see the same input size.
DEMO_RUNS = [
    ("default recipe (fusion)", dict()),  # what `cityclf train --data ROOT` does
    ("random forest", dict(model="random_forest", img_size=64)),
    ("lenet", dict(model="lenet", img_size=DEMO_IMG_SIZE, epochs=15, augment=True, patience=4)),
    ("mobilenet_v2", dict(model="mobilenet_v2", img_size=DEMO_IMG_SIZE, epochs=40, patience=5)),
    ("efficientnet_lite0", dict(model="efficientnet_lite0", img_size=DEMO_IMG_SIZE, epochs=40,
                                patience=5)),
    ("mobilenet_v2, random split (leaks)", dict(model="mobilenet_v2", img_size=DEMO_IMG_SIZE,
                                                epochs=40, patience=5, split="random")),
]


def build_demo(on_step: Callable[[str, float], None] | None = None, progress: bool = True,
               runs=DEMO_RUNS) -> list[str]:
    """Make the demo dataset if missing, tag its scenes, train the demo runs that are missing and
    check its data quality.

    `on_step(message, fraction_done)` is called before each step (for a progress widget).
    Returns the names of the runs trained now.
    """
    step = on_step or (lambda message, fraction: print(message, flush=True))
    root = config.demo_dir()
    if not (root / "train_val").is_dir():
        from .synth import synthesize
        step(f"drawing the synthetic demo dataset in {root}", 0.0)
        synthesize(root, progress=progress)
    dataset = scan(root, progress=progress)
    for method in ("sequence", "random"):
        load_split(dataset, method)
    steps = len(runs) + 3  # the scene tags, the runs, the quality report
    # Tags first: runs trained on a tagged dataset also score their accuracy per scene type.
    _extra("tagging scenes", f"cityclf data scenes {root}",
           lambda: tag_scenes(dataset, progress=progress), step, 1 / steps)
    existing = {run.info.get("name") for run in list_runs(dataset.id)}
    trained = []
    for i, (name, settings) in enumerate(runs):
        if name in existing:
            continue
        step(f"training {name} ({i + 1}/{len(runs)})", (i + 2) / steps)
        train(TrainConfig(data=str(root), name=name, **settings), progress=progress)
        trained.append(name)
    _extra("checking data quality", f"cityclf data quality {root}",
           lambda: quality_report(dataset, progress=progress), step, (len(runs) + 2) / steps)
    step("demo ready", 1.0)
    return trained


def _extra(doing: str, command: str, job: Callable[[], object],
           step: Callable[[str, float], None], fraction: float) -> None:
    """A view the dashboard can also compute later (cached, so quick when done before). A
    failure is reported, not raised: it must never cost the runs already trained."""
    step(doing, fraction)
    try:
        job()
    except Exception as err:  # noqa: BLE001 - the demo's runs matter more than its extras
        step(f"{doing} failed ({err.__class__.__name__}: {err}); the Dataset page offers it "
             f"again, or run `{command}`", fraction)
