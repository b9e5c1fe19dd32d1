"""cityclf's LIME (fast predictor, ``LIME_SETTINGS``) against LIME's defaults on the Keras model.

The goal: at least 12x faster (at most 3 s a photo here), and no less stable. Both explain the
same MobileNetV2 (224 px, head trained on a synthetic demo-like dataset in a temporary home):

- baseline: ``LimeImageExplainer().explain_instance(image, model.predict, top_labels=1,
  num_samples=1000, batch_size=10)``, LIME's defaults (quickshift superpixels) with the Keras
  model as classifier (``verbose=0`` only keeps progress bars off the screen). The image goes in
  as uint8, as photos are, which is what scikit-image's quickshift expects;
- ours: ``explain_lime(image, fast.predict_proba, **LIME_SETTINGS)``.

The machine is shared and its speed drifts, so each image is explained both ways back to back,
in alternating order, and the ratio is computed per image. Stability (``explain.stability``: mean
Jaccard overlap of the top-5 supporting superpixels of two runs with seeds 0 and 1, same
segmentation) takes two more explanations per image and configuration, so it is measured on the
first ``--stability-images`` images only, each configuration with its own classifier.

    python bench/explain.py [--images 10] [--stability-images 3] [--home DIR]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial

import numpy as np


def trained_run(home: str):
    """The home's MobileNetV2 224 px run, trained first (about a minute) if there is none."""
    from cityclf.runs import list_runs
    from cityclf.synth import synthesize
    from cityclf.train import TrainConfig, train
    found = [run for run in list_runs() if run.info["model"] == "mobilenet_v2"
             and run.info["preprocess"]["img_size"] == 224]
    if found:
        return found[0]
    data = synthesize(os.path.join(home, "data", "bench"), cities=8, per_city=40, seed=3,
                      progress=False)
    return train(TrainConfig(data=str(data), model="mobilenet_v2", img_size=224, epochs=5),
                 progress=False)


def summary(values) -> str:
    values = np.asarray(values)
    return f"mean {values.mean():.2f} (range {values.min():.2f}-{values.max():.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="test images to time")
    parser.add_argument("--stability-images", type=int, default=3,
                        help="of those, how many to measure stability on (4 more LIME runs each)")
    parser.add_argument("--home", help="a cityclf home to reuse (default: a new temporary one)")
    args = parser.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="cityclf-bench-explain-")
    os.environ["CITYCLF_HOME"] = home  # before cityclf reads it
    os.environ.setdefault("TQDM_DISABLE", "1")  # LIME's progress bars would bury the figures
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf
    from lime.lime_image import LimeImageExplainer
    tf.get_logger().setLevel("ERROR")  # LIME's short last batch retraces predict, with a warning

    from cityclf.explain import LIME_DEFAULTS, LIME_SETTINGS, explain_lime, segment, stability
    from cityclf.fast import load_fast_predictor
    from cityclf.images import load_rgb
    from cityclf.inference import load_predictor, prepare_image, run_preprocess

    run = trained_run(home)
    fast = load_fast_predictor(run)
    if fast is None:
        raise SystemExit(f"run {run.id} has no fast path: see {run.path / 'fast.json'}")
    model = load_predictor(run).model
    keras_predict = partial(model.predict, verbose=0)
    paths = run.predictions()["path"].to_numpy()
    paths = paths[np.linspace(0, len(paths) - 1, min(args.images, len(paths))).astype(int)]
    images = [prepare_image(load_rgb(path), run_preprocess(run)) for path in paths]
    print(f"run {run.id} ({run.info['name']}, test top-1 {run.metrics['top1']:.2f}) in {home}")
    print(f"baseline: LIME's defaults {LIME_DEFAULTS} through keras.Model.predict")
    print(f"ours:     {LIME_SETTINGS} through the fast predictor (LiteRT)")
    keras_predict(images[0][None])  # warm-up: graph tracing, interpreter allocation
    fast.predict_proba(images[0][None])

    def baseline(image) -> float:
        return LimeImageExplainer().explain_instance(
            image.astype(np.uint8), keras_predict, top_labels=1, num_samples=1000,
            batch_size=10).score

    def ours(image) -> float:
        return explain_lime(image, fast.predict_proba, **LIME_SETTINGS).score

    seconds, fit = {"baseline": [], "ours": []}, {"baseline": [], "ours": []}
    for index, image in enumerate(images):
        ways = [("baseline", baseline), ("ours", ours)]
        for name, explain in ways if index % 2 == 0 else ways[::-1]:
            start = time.perf_counter()
            fit[name].append(explain(image))
            seconds[name].append(time.perf_counter() - start)
        print(f"  image {index + 1}/{len(images)}: baseline {seconds['baseline'][-1]:.1f} s, "
              f"ours {seconds['ours'][-1]:.2f} s", flush=True)
    ratios = np.array(seconds["baseline"]) / np.array(seconds["ours"])

    subset = images[:args.stability_images]
    stable = {"baseline": [stability(image, keras_predict, **LIME_DEFAULTS) for image in subset],
              "ours": [stability(image, fast.predict_proba, **LIME_SETTINGS) for image in subset]}
    superpixels = {name: [segment(image, settings["segmentation"]).max() + 1 for image in images]
                   for name, settings in (("baseline", LIME_DEFAULTS), ("ours", LIME_SETTINGS))}

    print(f"\n{len(images)} images, MobileNetV2 224 px")
    for name in ("baseline", "ours"):
        print(f"{name:<9} s/image {summary(seconds[name])}; superpixels "
              f"{summary(superpixels[name])}; local fit R² {summary(fit[name])}")
        print(f"{'':<9} stability on {len(subset)} images {np.mean(stable[name]):.3f} "
              f"(per image {np.round(stable[name], 2).tolist()})")
    speedup = np.mean(seconds["baseline"]) / np.mean(seconds["ours"])
    print(f"speed-up: {speedup:.1f}x (mean s/image over mean s/image); per image {summary(ratios)}")
    fast_enough = np.mean(seconds["ours"]) <= 3 and speedup >= 12
    stable_enough = np.mean(stable["ours"]) >= np.mean(stable["baseline"])
    print(f"goal (>= 12x, <= 3 s/image, stability >= the defaults'): "
          f"{'met' if fast_enough and stable_enough else 'NOT met'}")


if __name__ == "__main__":
    main()
