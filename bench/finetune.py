"""Fine-tuning the top of MobileNetV2: through the image pipeline vs on cached cut features.

Both train the same 40 layers above the last downsampling stage (BatchNorm frozen) with the same
head start, learning rate and epochs on the same split; the image pipeline already caches decoded
uint8 images, so the difference is the frozen bottom's forward pass every epoch. Also tried:
the cached way in mixed bfloat16 (this CPU's AMX units).

    .venv/bin/python bench/finetune.py [--data ROOT] [--img-size 224] [--epochs 2]

Without --data it uses the demo (synthesized here if missing).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset root (default: the demo)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    from cityclf import config, finetune, zoo
    from cityclf.datasets import scan
    from cityclf.head import fit_head, set_head_weights
    from cityclf.pipeline import Preprocess, load_images, make_dataset
    from cityclf.splits import load_split

    root = args.data or config.demo_dir()
    if not args.data and not (config.demo_dir() / "train_val").is_dir():
        from cityclf.synth import synthesize
        synthesize(root, progress=False)
    table = load_split(scan(root, progress=False), "sequence")
    classes = sorted(table["city"].unique())
    y_all = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pre = Preprocess(args.img_size)
    rows = {part: np.flatnonzero(table["split"].to_numpy() == part) for part in ("train", "val", "test")}
    paths = table["path"].to_numpy()
    print(f"{root}: {len(classes)} cities, train {len(rows['train'])}, test {len(rows['test'])}, "
          f"{args.img_size} px, {args.epochs} epochs")

    def fresh(policy="float32"):
        """MobileNetV2 + the exact head fitted on its frozen embeddings: the common start."""
        keras.mixed_precision.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        built = zoo.build("mobilenet_v2", len(classes), args.img_size)
        keras.mixed_precision.set_dtype_policy("float32")
        return built

    built = fresh()
    start = time.perf_counter()
    features, vectors, ok, _ = finetune.cut_features(built.backbone, paths, pre, progress=False)
    extract = time.perf_counter() - start
    head = fit_head(vectors[rows["train"]], y_all[rows["train"]], vectors[rows["val"]],
                    y_all[rows["val"]], len(classes))
    test_images, _ = load_images(paths[rows["test"]], pre)

    def prepare(model):
        set_head_weights(model.head, head)
        bottom, top = finetune.split(model.parts[0][1])
        finetune.make_trainable(top)
        return top

    def compile_(model):
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")

    def score(model):
        return float((model.predict_proba(test_images).argmax(1) == y_all[rows["test"]]).mean())

    results = {}
    # 1. through the image pipeline (decoded images cached in memory, as cityclf trains)
    model = fresh()
    model.unfreeze_top(len(prepare(model).layers) - 1)  # the same layers, as --fine-tune-layers
    compile_(model.model)
    data = make_dataset(paths[rows["train"]], y_all[rows["train"]], pre, 32, shuffle=True)
    start = time.perf_counter()
    model.model.fit(data, epochs=args.epochs, verbose=0)
    results["image pipeline"] = ((time.perf_counter() - start) / args.epochs, score(model))
    # 2. and 3. on cached cut features, float32 then mixed bfloat16
    for label, policy in (("cached cut features", "float32"),
                          ("cached cut features, mixed bfloat16", "mixed_bfloat16")):
        model = fresh(policy)
        top = prepare(model)
        stacked = finetune.stacked_model(top, model.head, 0, [vectors.shape[1]])
        compile_(stacked)
        start = time.perf_counter()
        stacked.fit(features[rows["train"]], y_all[rows["train"]], epochs=args.epochs,
                    batch_size=32, verbose=0, shuffle=True)
        results[label] = ((time.perf_counter() - start) / args.epochs, score(model))

    base = results["image pipeline"][0]
    print(f"one pass to cache cut features (and embeddings): {extract:.1f} s")
    print(f"head only (exact logistic regression): top-1 "
          f"{float((head.probabilities(vectors[rows['test']]).argmax(1) == y_all[rows['test']]).mean()):.3f}")
    for label, (seconds, top1) in results.items():
        print(f"{label:40s} {seconds:7.1f} s/epoch ({base / seconds:5.1f}x)  top-1 {top1:.3f}")


if __name__ == "__main__":
    main()
