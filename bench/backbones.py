"""Images per second of each offline backbone at its native size, for one image and batches of 32.

Single images are what the demo page and LIME feed; batches are how a dataset gets embedded.
How the model is called matters as much as which model: eager ``model(x)`` runs layer by layer
in Python, ``predict`` compiles but pays for a data pipeline on every call, and
``predict_on_batch`` runs the compiled graph directly.

    python bench/backbones.py [--seconds 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cityclf import backbones


def images_per_second(run, batch_size: int, seconds: float) -> float:
    """Repeat ``run`` for about ``seconds`` after two warm-up calls (tracing, allocation)."""
    run()
    run()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        run()
        calls += 1
    return calls * batch_size / elapsed


WAYS = {
    "model(x)": lambda model, x: model(x, training=False),
    "predict": lambda model, x: model.predict(x, batch_size=len(x), verbose=0),
    "predict_on_batch": lambda model, x: model.predict_on_batch(x),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    seconds = parser.parse_args().seconds
    rng = np.random.default_rng(0)

    print(f"{'backbone':<20}{'size':>5}  {'called with':<18}{'1 image':>10}{'batch 32':>10}   (images/s)")
    for name, create in backbones.BACKBONES.items():
        size = backbones.NATIVE_SIZE[name]
        one, batch = (rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32) for n in (1, 32))
        model = create()
        for way, call in WAYS.items():
            single = images_per_second(lambda: call(model, one), 1, seconds)
            batched = images_per_second(lambda: call(model, batch), 32, seconds)
            print(f"{name:<20}{size:>5}  {way:<18}{single:>10.1f}{batched:>10.1f}")


if __name__ == "__main__":
    main()
