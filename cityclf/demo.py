"""The demo: a synthetic dataset and a small leaderboard, so a fresh install has something to show.

Each demo run is trained only if no run of that name exists yet for the demo dataset, so
`cityclf demo` (and `make app`) can be re-run cheaply and picks up where an interrupted build
stopped.
"""
from __future__ import annotations

from typing import Callable

from . import config
from .datasets import scan
from .runs import list_runs
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
    """Make the demo dataset if missing and train the demo runs that are missing.

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
    existing = {run.info.get("name") for run in list_runs(dataset.id)}
    trained = []
    for i, (name, settings) in enumerate(runs):
        if name in existing:
            continue
        step(f"training {name} ({i + 1}/{len(runs)})", (i + 1) / (len(runs) + 1))
        train(TrainConfig(data=str(root), name=name, **settings), progress=progress)
        trained.append(name)
    step("demo ready", 1.0)
    return trained
