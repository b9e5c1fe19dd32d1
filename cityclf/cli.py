"""The ``cityclf`` command line: a thin layer of arguments over the package's functions."""
from __future__ import annotations

import argparse
import sys
import time
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


def cmd_data_synth(args) -> None:
    from .synth import synthesize
    start = time.perf_counter()
    cities = int(args.cities) if args.cities.isdigit() else args.cities.split(",")
    out = synthesize(args.out, cities=cities, per_city=args.per_city, size=args.size,
                     seed=args.seed)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


def cmd_data_split(args) -> None:
    from .datasets import scan
    from .splits import save_split, split_id
    dataset = scan(args.root, progress=True)
    table = save_split(dataset, args.val, args.test, args.seed, args.method)
    counts = table.assign(city=dataset.manifest["city"]).pivot_table(
        index="city", columns="split", values="path", aggfunc="size", fill_value=0)
    _print_table(counts.reindex(columns=["train", "val", "test"], fill_value=0))
    print(f"{args.method} split {split_id(table)} saved for {dataset.root}")


def cmd_demo(args) -> None:
    demo = config.demo_dir()
    if (demo / "train_val").is_dir():
        print(f"demo dataset already at {demo}")
    else:
        from .synth import synthesize
        synthesize(demo)
        print(f"demo dataset written to {demo}")
    from .datasets import scan
    from .splits import load_split
    load_split(scan(demo, progress=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityclf", description=__doc__)
    parser.add_argument("--traceback", action="store_true", help="show the full error trace")
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
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("split", help="make the dataset's train/val/test split")
    p.add_argument("root", type=Path)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["sequence", "random"], default="sequence",
                   help="sequence (no sequence in two splits) or random (leaks; for comparison)")
    p.set_defaults(func=cmd_data_split)

    p = commands.add_parser("demo", help=f"build the demo dataset under {config.demo_dir()}")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as err:
        if args.traceback:
            raise
        print(f"cityclf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cityclf: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
