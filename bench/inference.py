"""Fast (LiteRT + XNNPACK) against Keras inference for MobileNetV2 at 224 px, in one process.

The goal set for the fast path: at least 4x the images/s of ``keras.Model.predict`` at batch 32,
and at least 4x lower single-image latency (``predict`` pays a large per-call overhead, which is
what the demo page and the explainers pay). ``predict_on_batch`` and a direct ``model(x)`` call
are shown for context, and so are the ways FastPredictor does not use LiteRT (one interpreter on
every core, invoked per image or on an input resized to the batch). Last, the seconds per image of the two saliency maps (goal: under 2 s).

The machine is shared, so its speed drifts from second to second. Every trial therefore times one
call of every way back to back, in a rotating order, and speedups are computed within a trial:
the verdict is on the median of those paired ratios, with their range shown.

    python bench/inference.py [--trials 15]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from cityclf import fast, saliency, zoo

SINGLE_CALLS = 5  # single-image calls per trial and way, so a 5 ms call is timed over 25 ms


def seconds_per_call(call, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def multithreaded_interpreter(flatbuffer: bytes, batch_size: int):
    """The alternatives FastPredictor does not take: one interpreter using every core, invoked
    on the whole batch at once (batch_size > 1) or once per image."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=flatbuffer, num_threads=fast.THREADS)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(source, (batch_size, 224, 224, 3))
    interpreter.allocate_tensors()

    def predict(images):
        outputs = []
        for start in range(0, len(images), batch_size):
            interpreter.set_tensor(source, images[start:start + batch_size])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(target).copy())
        return np.concatenate(outputs)
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15, help="paired measurements of every way")
    trials = parser.parse_args().trials
    model = zoo.build("mobilenet_v2", 8, 224).model
    start = time.perf_counter()
    flatbuffer = fast.to_tflite(model)
    print(f"converted in {time.perf_counter() - start:.1f} s ({len(flatbuffer) / 1e6:.1f} MB)")
    predictor = fast.FastPredictor(flatbuffer)
    rng = np.random.default_rng(0)
    one, batch = (rng.uniform(0, 255, (n, 224, 224, 3)).astype(np.float32) for n in (1, 32))
    print(f"max abs probability difference, batch 32: "
          f"{np.abs(predictor.predict_proba(batch) - model.predict(batch, verbose=0)).max():.2e}")

    single_ways = {
        "keras predict": lambda x: model.predict(x, batch_size=32, verbose=0),
        "keras predict_on_batch": model.predict_on_batch,
        "keras model(x)": lambda x: model(x, training=False),
        "fast (FastPredictor)": predictor.predict_proba,
        "LiteRT, 1 interpreter": multithreaded_interpreter(flatbuffer, 1),
    }
    batch_ways = {**single_ways,
                  "LiteRT resized to batch": multithreaded_interpreter(flatbuffer, len(batch))}
    single = {way: [] for way in single_ways}
    batched = {way: [] for way in batch_ways}
    for call in batch_ways.values():  # warm-up: tracing, allocation
        call(batch)
    for call in single_ways.values():
        call(one)
    for trial in range(trials):
        names = list(batch_ways)
        for way in names[trial % len(names):] + names[:trial % len(names)]:
            call = batch_ways[way]
            batched[way].append(len(batch) / seconds_per_call(lambda: call(batch)))
            if way in single_ways:
                single[way].append(1000 * seconds_per_call(lambda: call(one), SINGLE_CALLS))

    print(f"\nMobileNetV2, 224 px, 8 classes; {trials} trials: median (min-max)")
    print(f"{'way':<26}{'1 image: ms':>22}{'batch 32: images/s':>26}")
    for way in batch_ways:
        latency = _summary(single[way], ".1f") if way in single else "-"
        print(f"{way:<26}{latency:>22}{_summary(batched[way], '.0f'):>26}")

    goals = (("images/s at batch 32", np.divide(batched["fast (FastPredictor)"],
                                                batched["keras predict"])),
             ("single-image latency", np.divide(single["keras predict"],
                                                single["fast (FastPredictor)"])))
    for goal, ratios in goals:
        verdict = "met" if np.median(ratios) >= 4 else "NOT met"
        print(f"fast vs keras predict, {goal}: {_summary(ratios, '.1f')}x "
              f"(goal 4x on the median: {verdict})")

    images = rng.uniform(0, 255, (5, 224, 224, 3)).astype(np.float32)
    maps = {"Grad-CAM (Keras model)": lambda image: saliency.grad_cam(model, image),
            "occlusion (fast predictor)": lambda image: saliency.occlusion(predictor.predict_proba,
                                                                           image)}
    print(f"\nsaliency, seconds per image over {len(images)} images: median (min-max)")
    for name, explain in maps.items():
        print(f"{name:<28}{_summary([seconds_per_call(lambda: explain(image)) for image in images], '.2f')}")


def _summary(values, spec: str) -> str:
    return f"{np.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


if __name__ == "__main__":
    main()
