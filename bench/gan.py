"""Generated streets, measured: does the GAN come close to real streets, and do its images help
a city classifier?

1. Trains the demo GAN with the default settings (or reads --gan RUN) and prints its Fréchet
   distance to real held-out images at the end of training against the floor (two halves of
   the real training images, at the same number of images) and the ceiling (the untrained
   generator), all on MobileNetV2 embeddings (not the Inception FID); and the best classifier
   run's top-1 on generated images of each city against its top-1 on real test images
   squeezed to the GAN's size. The GAN's training time is given against the 20-minute budget
   and against the fast recipe's (trained in step 2, same machine, same hour).
2. Trains the same classifier recipe (--recipe fast: MobileNetV2 head on cached embeddings)
   without (first, before the GAN) and with --gan-augment at --gan-ratio, for each seed, and
   compares each pair on the same test images (cityclf.compare: the difference with its 95 %
   sequence-bootstrap interval and McNemar's test). The fast recipe's head is solved exactly,
   so without generated images every seed gives the same classifier; the seeds draw different
   generated images.

    CITYCLF_HOME=/tmp/ganhome .venv/bin/python bench/gan.py [--data ROOT] [--gan RUN]
        [--seeds 0,1,2] [--gan-ratio 0.25]

Run it in a copy of a home that has the demo and its runs (it adds runs there); give --data the
demo's own folder when the copy's runs were trained on it, so that their split is the GAN's.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TQDM_DISABLE", "1")
BUDGET_S = 20 * 60  # the demo GAN must train within this on 2 cores (issue 17)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset root (default: the demo)")
    parser.add_argument("--gan", help="a trained GAN run (default: train one now)")
    parser.add_argument("--steps", type=int, help="GAN training steps (default: gan's default)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--gan-ratio", type=float, default=0.25)
    args = parser.parse_args()

    import numpy as np
    from cityclf import compare, config, gan, runs
    from cityclf.datasets import scan
    from cityclf.train import TrainConfig, train

    data = str(args.data or config.demo_dir())
    manifest = scan(data, progress=False).manifest
    seeds = [int(s) for s in args.seeds.split(",")]
    # The plain classifier first: the GAN measures its top-1 on generated images with the best
    # classifier trained on its split. The fast recipe's head is solved exactly, so without
    # generated images every seed would give this same classifier.
    start = time.perf_counter()
    plain = train(TrainConfig(data=data, recipe="fast", seed=seeds[0], name="bench fast"),
                  progress=False)
    plain_seconds = time.perf_counter() - start
    if args.gan:
        gan_run = runs.get_run(args.gan, kind="gan")
    else:
        settings = {"steps": args.steps} if args.steps else {}
        print("training the GAN (8-20 minutes on 2 cores)...", flush=True)
        gan_run = gan.train_gan(gan.GanConfig(data=data, name="bench", **settings),
                                progress=False)
    info, quality = gan_run.info, gan_run.info["quality"]
    seconds, total = info["timings"]["train_seconds"], info["timings"]["total_seconds"]
    steps = info["config"]["steps"]
    augmented, results = [], []
    for seed in seeds:
        run = train(TrainConfig(data=data, recipe="fast", seed=seed, gan_augment=gan_run.id,
                                gan_ratio=args.gan_ratio, name=f"bench fast + GAN seed {seed}"),
                    progress=False)
        augmented.append(run)
        results.append(compare.compare_runs(run, plain, manifest))

    print(f"GAN run {gan_run.id}: {steps} steps at {info['preprocess']['img_size']} px, batch "
          f"{info['config']['batch_size']}: {total / 60:.1f} min in all, {seconds / 60:.1f} of "
          f"them training ({seconds / steps:.2f} s/step, distances included); "
          f"{total / BUDGET_S:.0%} of the {BUDGET_S // 60}-minute budget, "
          f"{total / plain_seconds:.0f}x the {plain_seconds:.0f} s the fast recipe took here "
          f"(embeddings cached); {os.cpu_count()} CPU cores, load average over the last 15 min "
          f"{os.getloadavg()[2]:.1f}")
    print("Fréchet distance, MobileNetV2 embeddings (not the Inception FID), mean over cities, "
          f"{min(quality['n_per_city'].values())}-{max(quality['n_per_city'].values())} "
          "held-out images per city:")
    print(f"  trained GAN vs real held-out images {quality['final']['mean']:8.1f}")
    print(f"  floor: two halves of real training   {quality['floor']['mean']:8.1f}")
    print(f"  ceiling: untrained generator         {quality['untrained']['mean']:8.1f}")
    share = ((quality["untrained"]["mean"] - quality["final"]["mean"])
             / (quality["untrained"]["mean"] - quality["floor"]["mean"]))
    print(f"  the GAN covers {share:.0%} of the way from the ceiling to the floor")
    print("  per city (floor): " + ", ".join(
        f"{city} {value:.0f} ({quality['floor']['per_city'][city]:.0f})"
        for city, value in quality["final"]["per_city"].items()))
    recognised = quality["classifier"]
    if "error" in recognised:
        print(f"classifier top-1 on generated images: not measured ({recognised['error']})")
    else:
        name = runs.get_run(recognised["run"]).info.get("name")
        print(f"classifier {name!r} top-1: generated {recognised['generated']['mean']:.3f}, real "
              f"test images at the GAN's size {recognised['real']['mean']:.3f}, chance "
              f"{1 / len(gan_run.classes):.3f}")
        print("  per city (generated / real): " + ", ".join(
            f"{city} {recognised['generated']['per_city'][city]:.2f}/"
            f"{recognised['real']['per_city'][city]:.2f}" for city in gan_run.classes))

    print(f"\n--recipe fast with --gan-augment {gan_run.id[-6:]} --gan-ratio {args.gan_ratio} "
          f"minus without, on {results[0]['n_images']} test images "
          f"({results[0]['n_sequences']} sequences):")
    print(f"  without: top-1 {results[0]['top1_b']:.3f} ({plain.id})")
    for run, result in zip(augmented, results):
        low, high = result["interval_pp"]
        print(f"  seed {run.info['seed']}: top-1 {result['top1_a']:.3f}, "
              f"{result['difference_pp']:+.1f} pp [{low:+.1f}, {high:+.1f}], McNemar p "
              f"{result['mcnemar_p']:.3f}, "
              f"{'significant' if result['significant'] else 'not significant'} "
              f"({run.info['gan_augment']['n_images']} generated images)")
    differences = np.array([r["difference_pp"] for r in results])
    print(f"  mean over {len(results)} seeds: {differences.mean():+.1f} pp "
          f"(seed-to-seed spread {differences.min():+.1f} to {differences.max():+.1f} pp)")


if __name__ == "__main__":
    main()
