"""How well the out-of-distribution gate (cityclf/ood.py) tells street photos from other things,
and the cities a run knows from cities it never saw, on a synthesized demo-like dataset.

Eight cities are drawn; two are moved out of the training folder. A MobileNetV2 head is trained
on the other six in its own cityclf home (reused with --reuse), and its gate fitted if training
did not fit one. Then, by AUROC (sklearn's roc_auc_score) of the gate's scores:
  (a) the run's test photos against non-street images: scikit-image's sample images (photos,
      micrographs, textures, text) and generated ones (noise, flat colours, gradients, text on
      paper, shapes, stripes, cartoon rooms); goal ≥ 0.95;
  (b) the run's test photos against every photo of the two unseen cities, with the run's own
      top-1 probability as a baseline (a low top-1 probability should mean "unseen").
and how often each verdict comes back per group (on test photos, any verdict but "ok" is a
false alarm). Run:
    .venv/bin/python bench/ood.py [--per-city 300] [--unseen saopaulo,phoenix] [--reuse]
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
SKIMAGE = ("astronaut", "binary_blobs", "brick", "cat", "cell", "checkerboard", "chelsea", "clock",
           "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
           "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
           "shepp_logan_phantom", "text")  # every bundled 2-D sample but `camera` (a man on a lawn)
RUN_NAME = "ood bench"


def rgb8(image) -> np.ndarray:
    """Any scikit-image sample as (H, W, 3) uint8 (bool, float, grey and RGBA ones too)."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype.kind == "f":
        image = (255 * (image - image.min()) / (np.ptp(image) or 1)).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:  # on white, as cityclf.images lays transparent pixels
        alpha = image[..., 3:] / 255.0
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return image


def skimage_samples() -> dict[str, np.ndarray]:
    import skimage.data
    samples = {name: rgb8(getattr(skimage.data, name)()) for name in SKIMAGE}
    samples["stereo_motorcycle"] = rgb8(skimage.data.stereo_motorcycle()[0])  # a studio shot
    return samples


def generated(seed: int = 0, size=(320, 240)) -> dict[str, np.ndarray]:
    """Seeded non-street images, a few of each kind."""
    rng = np.random.default_rng(seed)
    width, height = size
    colour = lambda lo, hi: tuple(int(v) for v in rng.integers(lo, hi, 3))  # noqa: E731
    out = {}
    for i in range(4):
        out[f"noise_rgb_{i}"] = rng.integers(0, 256, (height, width, 3), np.uint8)
        out[f"noise_grey_{i}"] = np.repeat(rng.integers(0, 256, (height, width, 1), np.uint8), 3, 2)
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8)
        out[f"noise_blobs_{i}"] = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC))
    for name, rgb in dict(black=(0, 0, 0), white=(255, 255, 255), grey=(128, 128, 128),
                          red=(200, 30, 30), green=(40, 160, 60), blue=(40, 80, 200),
                          sky=(135, 190, 235), beige=(225, 210, 180)).items():
        out[f"flat_{name}"] = np.full((height, width, 3), rgb, np.uint8)
    for i in range(6):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = (a + (b - a) * np.linspace(0, 1, width if i % 2 else height)[:, None]).astype(np.uint8)
        out[f"gradient_{i}"] = np.broadcast_to(ramp[None] if i % 2 else ramp[:, None],
                                               (height, width, 3)).copy()
    words = "the quick brown fox jumps over a lazy dog invoice total amount due page".split()
    for i in range(6):
        paper = Image.new("RGB", size, colour(225, 256))
        draw, font = ImageDraw.Draw(paper), ImageFont.load_default(size=int(rng.integers(10, 22)))
        for y in range(8, height - 16, int(font.size * 1.6)):
            draw.text((10, y), " ".join(rng.choice(words, 6)), fill=(20, 20, 20), font=font)
        out[f"text_{i}"] = np.asarray(paper)
    for i in range(6):  # a wall, a floor, a window, a cupboard, a lamp: a cartoon room
        room = Image.new("RGB", size, colour(150, 240))
        draw = ImageDraw.Draw(room)
        draw.rectangle((0, int(height * 0.7), width, height), fill=colour(60, 160))
        x = int(rng.integers(20, width // 2))
        draw.rectangle((x, 30, x + 80, 110), fill=(170, 210, 240), outline=(250, 250, 250), width=5)
        draw.rectangle((width - 110, int(height * 0.55), width - 20, int(height * 0.75)),
                       fill=colour(40, 120))
        draw.rectangle((30, 60, 80, int(height * 0.7)), fill=colour(80, 200))
        draw.ellipse((width // 2, 20, width // 2 + 30, 50), fill=(255, 250, 200))
        out[f"room_{i}"] = np.asarray(room)
    for i in range(3):
        stripes = (np.arange(width) // int(rng.integers(4, 30)) % 2).astype(np.uint8) * 255
        out[f"stripes_{i}"] = np.repeat(np.broadcast_to(stripes, (height, width))[..., None], 3, 2)
        shapes = Image.new("RGB", size, (255, 255, 255))
        draw = ImageDraw.Draw(shapes)
        for _ in range(12):
            x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(5, 60)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(0, 256))
        out[f"shapes_{i}"] = np.asarray(shapes)
    return out


def prepare(args):
    """The 6-city training dataset and the 2 unseen cities' folder (drawn unless reused)."""
    from cityclf.synth import DEFAULT_CITIES, synthesize
    data, unseen = Path(args.home) / "data" / "ood6", Path(args.home) / "data" / "unseen"
    if args.reuse and (data / "train_val").is_dir() and (unseen / "train_val").is_dir():
        return data, unseen
    shutil.rmtree(unseen, ignore_errors=True)
    synthesize(data, cities=DEFAULT_CITIES, per_city=args.per_city, seed=args.seed, progress=False)
    for city in args.unseen:
        (unseen / "train_val").mkdir(parents=True, exist_ok=True)
        shutil.move(data / "train_val" / city, unseen / "train_val" / city)
    return data, unseen


def trained_run(data: Path, args):
    from cityclf.datasets import scan
    from cityclf.runs import list_runs
    from cityclf.train import TrainConfig, train
    found = [run for run in list_runs(scan(data, progress=False).id)
             if run.info.get("name") == RUN_NAME]
    if args.reuse and found:
        return found[0]
    return train(TrainConfig(data=str(data), model="mobilenet_v2", img_size=args.img_size,
                             epochs=args.epochs, patience=5, name=RUN_NAME, seed=args.seed),
                 progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/cityclf-bench-ood", help="its own cityclf home")
    parser.add_argument("--per-city", type=int, default=300)
    parser.add_argument("--unseen", default="saopaulo,phoenix", type=lambda s: s.split(","),
                        help="the two demo cities left out of training")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the dataset and run a previous call left in --home")
    args = parser.parse_args()
    os.environ["CITYCLF_HOME"] = args.home
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from cityclf import ood
    from cityclf.datasets import scan
    from cityclf.inference import best_predictor, prepare_image, run_preprocess
    from cityclf.pipeline import load_images
    from cityclf.splits import load_split

    start = time.perf_counter()
    data, unseen = prepare(args)
    run = trained_run(data, args)
    pre = run_preprocess(run)
    gate = ood.load_gate(run)
    if gate is None:  # training does not fit gates yet: fit it as training will
        table = load_split(scan(data, progress=False), run.info["split"]["method"])
        fitted = ood.fit_gate(run.path, table.loc[table["split"] == "train", "path"],
                              table.loc[table["split"] == "val", "path"], pre, progress=False)
        gate = ood.load_gate(run)
        print(f"gate fitted in {fitted['seconds']:.1f} s")
    print(f"run {run.id}: {run.info['model']} at {pre.img_size} px on {len(run.classes)} "
          f"cities ({', '.join(run.classes)}), test top-1 {run.metrics['top1']:.3f}; gate: "
          f"{gate.info['reference_images']} references, street_min {gate.info['street_min']:.3f},"
          f" distance_max {gate.info['distance_max']:.3f}")

    test_paths = run.predictions()["path"]
    unseen_paths = scan(unseen, progress=False).manifest["path"]
    samples, drawn = skimage_samples(), generated(args.seed)
    groups = {
        "test photos (known cities)": load_images(test_paths, pre)[0],
        f"unseen cities ({', '.join(args.unseen)})": load_images(unseen_paths, pre)[0],
        "scikit-image samples": np.stack([prepare_image(x, pre) for x in samples.values()]),
        "generated non-street": np.stack([prepare_image(x, pre) for x in drawn.values()]),
    }
    predictor = best_predictor(run)
    verdicts, top1 = {}, {}
    for name, images in groups.items():
        verdicts[name] = pd.DataFrame(gate.assess(images))
        top1[name] = predictor.predict_proba(images).max(axis=1)
    test, new, *others = groups
    rows = []
    for what, positives in (("(a) test vs non-street", others), ("(b) test vs unseen cities", [new])):
        inside = verdicts[test]
        outside = pd.concat([verdicts[name] for name in positives])
        truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        for score, sign in (("street_score", -1), ("distance", 1)):
            rows.append({"task": what, "score": f"gate {score}", "AUROC": roc_auc_score(
                truth, sign * np.r_[inside[score], outside[score]])})
        rows.append({"task": what, "score": "run's own top-1 probability (baseline)",
                     "AUROC": roc_auc_score(truth, -np.r_[top1[test], np.concatenate(
                         [top1[name] for name in positives])])})
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.3f}".format))
    print()
    rates = pd.DataFrame({name: table["verdict"].value_counts(normalize=True)
                          for name, table in verdicts.items()}).T.reindex(
        columns=["ok", "not_street", "unfamiliar"]).fillna(0)
    rates.insert(0, "images", [len(verdicts[name]) for name in rates.index])
    print(rates.to_string(float_format="{:.1%}".format))
    missed = [name for name, verdict in zip([*samples, *drawn], pd.concat(
        [verdicts[others[0]], verdicts[others[1]]])["verdict"]) if verdict == "ok"]
    print(f"\nnon-street images let through as ok: {', '.join(missed) or 'none'}")
    print(f"false alarms on test photos (not ok): {1 - rates.loc[test, 'ok']:.1%}; "
          f"{time.perf_counter() - start:.0f} s in all, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
