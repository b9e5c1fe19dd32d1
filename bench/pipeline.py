"""Images/s of cityclf's tf.data pipeline against a plain per-image PIL loop making the same arrays.

Both produce float32 224×224 RGB arrays with the bottom 25 % (a dashboard) cut off, from
MSLS-sized 640×480 JPEGs, over three epochs as training would read them. Run:
    .venv/bin/python bench/pipeline.py [--images 320] [--epochs 3]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cityclf.pipeline import Preprocess, make_dataset  # noqa: E402
from cityclf.synth import synthesize  # noqa: E402

PRE = Preprocess(img_size=224, crop_bottom=0.25)


def pil_loop(paths, pre: Preprocess) -> np.ndarray:
    """The baseline: open, crop, resize and convert one image at a time."""
    out = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            keep = max(1, int(image.height * (1 - pre.crop_bottom)))
            image = image.crop((0, 0, image.width, keep)).resize((pre.img_size, pre.img_size),
                                                                 Image.BILINEAR)
            out.append(np.asarray(image, dtype=np.float32))
    return np.stack(out)


def pipeline(paths, pre: Preprocess, dataset) -> np.ndarray:
    return np.concatenate([images.numpy() for images, _ in dataset])


def timed_epochs(fn, epochs):
    times, result = [], None
    for _ in range(epochs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "bench", cities=8, per_city=args.images // 8,
                          size=(640, 480), seed=1, progress=False)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        n = len(paths)
        base_times, base = timed_epochs(lambda: pil_loop(paths, PRE), args.epochs)
        dataset = make_dataset(paths, pre=PRE, batch_size=32, cache=True)
        tf_times, fast = timed_epochs(lambda: pipeline(paths, PRE, dataset), args.epochs)
    print(f"{n} images 640x480 -> 224x224, crop_bottom 0.25, {os.cpu_count()} cores, "
          f"{args.epochs} epochs")
    print(f"mean |difference| between the two outputs: {np.abs(base - fast).mean():.2f} (0..255)")
    print(f"{'':24}{'epoch 1':>12}{'later epochs':>15}{f'all {args.epochs}':>12}")
    for label, times in (("PIL loop (images/s)", base_times), ("tf.data (images/s)", tf_times)):
        later = np.mean(times[1:]) if len(times) > 1 else times[0]
        print(f"{label:24}{n / times[0]:12.0f}{n / later:15.0f}{n * len(times) / sum(times):12.0f}")
    later_ratio = np.mean(base_times[1:]) / np.mean(tf_times[1:]) if args.epochs > 1 else float("nan")
    print(f"ratio tf.data / PIL: epoch 1 {base_times[0] / tf_times[0]:.1f}x, later epochs "
          f"{later_ratio:.1f}x, all {args.epochs} epochs {sum(base_times) / sum(tf_times):.1f}x")


if __name__ == "__main__":
    main()
