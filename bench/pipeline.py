"""Images/s of cityclf's tf.data pipeline against a plain per-image PIL loop making the same arrays.

Both produce batches of 32 float32 224×224 RGB arrays with the bottom 25 % (a dashboard) cut
off, from MSLS-sized 640×480 JPEGs, over several epochs as training reads them (each batch is
produced and dropped, as Keras' fit consumes it). Run:
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


def pil_batches(paths, pre: Preprocess, batch_size: int = 32):
    """The baseline: open, crop, resize and convert one image at a time, in batches as training
    reads them."""
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as image:
                image = image.convert("RGB")
                keep = max(1, int(image.height * (1 - pre.crop_bottom)))
                image = image.crop((0, 0, image.width, keep)).resize(
                    (pre.img_size, pre.img_size), Image.BILINEAR)
                batch.append(np.asarray(image, dtype=np.float32))
        yield np.stack(batch)


def timed_epochs(batches, epochs):
    """Seconds per epoch of reading every batch, as Keras' fit would (nothing is kept)."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in batches():
            pass
        times.append(time.perf_counter() - start)
    return times


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
        base_times = timed_epochs(lambda: pil_batches(paths, PRE), args.epochs)
        dataset = make_dataset(paths, pre=PRE, batch_size=32, cache=True)
        tf_times = timed_epochs(lambda: dataset, args.epochs)
        base = np.concatenate(list(pil_batches(paths, PRE)))
        fast = np.concatenate([images.numpy() for images, _ in dataset])
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
