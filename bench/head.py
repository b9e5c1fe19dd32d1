"""Why the old Keras head lost to logistic regression, and what the new head scores.

Every variant is fitted on the same cached backbone embeddings of a dataset's saved sequence
split and scored on its test images:

    .venv/bin/python bench/head.py [--data ROOT] [--model mobilenet_v2] [--img-size 224]

Without --data it uses the demo (built by `cityclf demo`, or synthesized here if missing).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def keras_head(train, val, n_classes, standardise: bool, epochs: int, patience: int | None,
               seed: int = 0):
    """The head as it was: Dropout(0.2) + softmax Dense, Adam 1e-3, batch 32."""
    import keras
    keras.utils.set_random_seed(seed)
    (xt, yt), (xv, yv) = train, val
    scaler = StandardScaler().fit(xt) if standardise else None
    prep = scaler.transform if scaler else (lambda x: x)
    model = keras.Sequential([keras.Input((xt.shape[1],)), keras.layers.Dropout(0.2),
                              keras.layers.Dense(n_classes, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    stop = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                          restore_best_weights=True)] if patience else []
    history = model.fit(prep(xt), yt, validation_data=(prep(xv), yv), epochs=epochs,
                        batch_size=32, verbose=0, callbacks=stop)
    epochs_run = len(history.history["loss"])
    return (lambda x: model.predict(prep(x), verbose=0)), f"{epochs_run} epochs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset root (default: the demo)")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()

    from cityclf import config, zoo
    from cityclf.datasets import scan
    from cityclf.embeddings import embed
    from cityclf.head import fit_head
    from cityclf.pipeline import Preprocess
    from cityclf.splits import load_split

    root = args.data or config.demo_dir()
    if not args.data and not (config.demo_dir() / "train_val").is_dir():
        from cityclf.synth import synthesize
        synthesize(root, progress=False)
    dataset = scan(root, progress=False)
    table = load_split(dataset, "sequence")
    classes = sorted(table["city"].unique())
    y_all = table["city"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    built = zoo.build(args.model, len(classes), args.img_size)
    vectors, ok = embed(built.backbone, f"{args.model}-imagenet", dataset.id, table["path"],
                        Preprocess(args.img_size), progress=False)
    data = {}
    for part in ("train", "val", "test"):
        rows = (table["split"].to_numpy() == part) & ok
        data[part] = (vectors[rows], y_all[rows])
    n = len(classes)
    print(f"{dataset.root}: {args.model} at {args.img_size} px, {len(classes)} cities, "
          + ", ".join(f"{part} {len(y)}" for part, (_, y) in data.items()))

    def lr(C, standardise=False):
        scaler = StandardScaler().fit(data["train"][0]) if standardise else None
        prep = scaler.transform if scaler else (lambda x: x)
        model = LogisticRegression(C=C, max_iter=2000).fit(prep(data["train"][0]), data["train"][1])
        return (lambda x: model.predict_proba(prep(x))), f"C={C}"

    def new():
        fit = fit_head(*data["train"], *data["val"], n)
        return fit.probabilities, f"C={fit.C}"

    variants = [
        ("old Keras head (Adam, dropout, early stop on val loss, patience 5, ≤ 40 epochs)",
         lambda: keras_head(data["train"], data["val"], n, False, 40, 5)),
        ("old head, standardised features", lambda: keras_head(data["train"], data["val"], n, True, 40, 5)),
        ("old head, standardised, 300 epochs, no early stop",
         lambda: keras_head(data["train"], data["val"], n, True, 300, None)),
        ("LogisticRegression(C=0.1), raw features (the issue's peer)", lambda: lr(0.1)),
        ("new head (cityclf's): L-BFGS, centred features, C on val loss", new),
    ]
    reference = None
    for name, make in variants:
        start = time.perf_counter()
        predict, note = make()
        seconds = time.perf_counter() - start
        x, y = data["test"]
        top1 = float((np.asarray(predict(x)).argmax(1) == y).mean())
        reference = reference if reference is not None else top1
        print(f"{top1:6.3f} top-1 ({top1 - reference:+.3f} vs old) {seconds:6.1f} s  {name} [{note}]")


if __name__ == "__main__":
    main()
