"""Cold start of `cityclf predict RUN photo.jpg` in a fresh process, as a shell script pays it:
the TensorFlow-free path (cityclf.lite) against TensorFlow's (forced with CITYCLF_NO_LITE=1).

Goal: at least 4x faster. Importing TensorFlow is most of a one-photo command's time; the
forward pass is a few ms either way. The run is `--run` (an id or folder in the current cityclf
home), else the cheapest transfer run (`--recipe fast`: a MobileNetV2 head at 224 px) trained on
a tiny synthetic dataset in a temporary home. The two ways take turns, so the shared machine's
drift hits both alike; the verdict is on the ratio of their medians. Run:
    .venv/bin/python bench/cli.py [--trials 7] [--run RUN]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process trains; the timed ones are apart
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WAYS = {"TensorFlow path": {"CITYCLF_NO_LITE": "1"}, "lean path (no TensorFlow)": {}}


def train_cheapest_run(home: Path) -> str:
    """A MobileNetV2 head (the fast recipe) on 3 cities x 30 synthetic frames, in `home`."""
    os.environ["CITYCLF_HOME"] = str(home)
    from cityclf.synth import synthesize
    from cityclf.train import TrainConfig, train
    data = synthesize(home / "data" / "bench", cities=3, per_city=30, seed=0, progress=False)
    start = time.perf_counter()
    run = train(TrainConfig(data=str(data), recipe="fast", epochs=2), progress=False)
    print(f"trained {run.id} in {time.perf_counter() - start:.0f} s")
    return str(run.path)


def predict_seconds(run: str, photo: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cityclf.cli", "predict", run, photo],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"predict failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7, help="cold starts of each way")
    parser.add_argument("--run", help="a run of the current cityclf home (default: train one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cityclf-bench-cli-") as folder:
        run = args.run or train_cheapest_run(Path(folder))
        from cityclf import lite
        from cityclf.runs import get_run
        found = get_run(run)
        photo = str(found.predictions()["path"].iloc[0])
        answers = {way: predict_seconds(run, photo, env)[1] for way, env in WAYS.items()}
        if lite.lean_predictor(get_run(run)) is None:  # the warm-up upgrades older fast.json
            raise SystemExit(f"run {found.id} has no verified lean path: see its fast.json")
        if len(set(answers.values())) != 1:
            raise SystemExit(f"the two ways answer differently: {answers}")
        seconds = {way: [] for way in WAYS}
        for _ in range(args.trials):
            for way, env in WAYS.items():
                seconds[way].append(predict_seconds(run, photo, env)[0])
    size = found.info["preprocess"]["img_size"]
    print(f"run {found.id} ({found.info['model']}, {size} px), one photo, "
          f"{len(os.sched_getaffinity(0))} cores, {args.trials} cold starts each")
    print(f"answer: {answers[next(iter(WAYS))].strip()}")
    medians = {way: statistics.median(times) for way, times in seconds.items()}
    for way, times in seconds.items():
        print(f"  {way:26} median {medians[way]:.2f} s  (min {min(times):.2f}, "
              f"max {max(times):.2f})")
    baseline, lean = medians.values()
    print(f"lean path: {baseline / lean:.1f}x faster than the TensorFlow path "
          f"(goal >= 4x: {'met' if baseline / lean >= 4 else 'NOT met'})")


if __name__ == "__main__":
    main()
