"""Time per epoch of a transfer head trained on cached embeddings vs. end-to-end through the
frozen backbone, for MobileNetV2 at 224 px on synthetic street scenes, in one run.

The end-to-end model reads images through the cached tf.data pipeline (decoding is not what is
measured); the difference is the backbone's forward pass on every image, every epoch. Run:
    .venv/bin/python bench/transfer.py [--images 320] [--epochs 3]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cityclf import zoo  # noqa: E402
from cityclf.pipeline import Preprocess, make_dataset  # noqa: E402
from cityclf.synth import synthesize  # noqa: E402
from cityclf.stages import make_optimizer  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    @property
    def later_epochs(self) -> float:
        """Mean of the epochs after the first (which includes tracing and the pipeline's cache)."""
        return float(np.mean(self.times[1:]))


def compile_for(model):
    model.compile(optimizer=make_optimizer("adam", 1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    pre = Preprocess(args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize(Path(tmp) / "bench", cities=8, per_city=args.images // 8, seed=2,
                          progress=False)
        paths = sorted(root.rglob("*.jpg"))
        labels = np.array([p.parts[-4] for p in paths])
        y = np.unique(labels, return_inverse=True)[1]
        built = zoo.build("mobilenet_v2", 8, args.img_size)
        images = make_dataset(paths, y, pre, batch_size=32, cache=True)

        start = time.perf_counter()
        embeddings = built.backbone.predict(images.map(lambda x, _: x), verbose=0)
        embed_seconds = time.perf_counter() - start

        head_timer = EpochTimer()
        compile_for(built.head)
        built.head.fit(embeddings, y, epochs=args.epochs, batch_size=32, verbose=0,
                       callbacks=[head_timer])
        end_to_end_timer = EpochTimer()
        compile_for(built.model)
        built.model.fit(images, epochs=args.epochs, verbose=0, shuffle=False,
                        callbacks=[end_to_end_timer])

    head, end_to_end = head_timer.later_epochs, end_to_end_timer.later_epochs
    print(f"MobileNetV2 at {args.img_size} px, {len(paths)} images, frozen backbone, batch 32")
    print(f"embeddings computed once:        {embed_seconds:8.2f} s")
    print(f"head epoch on cached embeddings: {head:8.3f} s")
    print(f"end-to-end epoch (frozen):       {end_to_end:8.3f} s")
    print(f"ratio end-to-end / cached head: {end_to_end / head:.0f}x per epoch; "
          f"{args.epochs} epochs incl. the one-off embedding: "
          f"{end_to_end * args.epochs / (embed_seconds + head * args.epochs):.1f}x")


if __name__ == "__main__":
    main()
