"""tlkit's accuracy with its defaults, from scratch: datasets x modes x seeds, printed as a markdown table.

Every run is ``tlkit.train(data, Config(...))`` with the defaults; only the weights file (``--weights`` or
``TLKIT_WEIGHTS``), the seed and any ``--set SECTION.OPTION=VALUE`` given here change. The caches start
empty (a fresh folder unless ``--cache-dir``), so the first seed of a dataset pays for decoding and
extraction and the later ones reuse them: the table gives both times. The seed also draws the split of a
folder without one (natural_images_30px), so its seeds score different validation images.

Each row: the validation accuracy of the kept weights, mean over the seeds and their spread (min-max), each
seed's, the 95% Wilson interval of one run's accuracy at that many validation images, the target, and the
wall time of the first seed and the mean of the others. The kept epoch is chosen on those same validation
images: treat the figures as optimistic by about the interval's half-width.

On the 2-core CPU machine (a few hours for everything; features mode in minutes)::

    python scripts/accuracy.py --datasets hymenoptera --modes features
    python scripts/accuracy.py                     # every dataset, mode and seed

On the GPU machine: ``KERAS_BACKEND=jax python scripts/accuracy.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tlkit  # noqa: E402
from tlkit.intervals import wilson  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
#: The datasets, where ../shared keeps them.
DATASETS = {"hymenoptera": SHARED / "data" / "hymenoptera", "natural_images_30px": SHARED / "data" / "natural_images_30px"}
#: Validation accuracy each (dataset, mode) must reach with the defaults (issue 15); frozen is not asked of
#: natural_images_30px.
TARGETS = {("hymenoptera", "features"): 0.93, ("hymenoptera", "frozen"): 0.94, ("hymenoptera", "finetune"): 0.96,
           ("natural_images_30px", "features"): 0.975, ("natural_images_30px", "finetune"): 0.98}


def parse_settings(pairs: list[str]) -> dict[str, dict]:
    """``["fit.epochs=5", ...]`` as ``Config.replace`` sections (values as TOML would read them)."""
    import tomllib

    sections: dict[str, dict] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        try:
            sections.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ValueError(f"{pair!r}: the value is not a TOML value (quote strings: fit.optimizer=\"adam\")") from None
    return sections


def run_one(data: Path, mode: str, seed: int, settings: dict, weights: str, cache: Path, runs: Path) -> dict:
    """Train one run with the defaults; its validation accuracy, image count, epochs and wall time."""
    config = tlkit.Config().replace(model={"weights": weights}, runtime={"cache_dir": str(cache)},
                                    data={"seed": seed}, fit={"mode": mode})
    if settings:
        config = config.replace(**settings)
    start = time.perf_counter()
    result = tlkit.train(data, config, run_dir=runs / f"{data.name}-{mode}-{seed}", verbose=0)
    metrics = result.metrics
    return {"accuracy": metrics["val_accuracy"], "images": metrics["images"]["val"], "seconds": time.perf_counter() - start,
            "epochs": " + ".join(map(str, metrics["epochs_run"]))}


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--modes", default="features,frozen,finetune")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--weights", default=os.environ.get("TLKIT_WEIGHTS", "imagenet"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="change a default for every run (a lever), e.g. fit.augmented_copies=4")
    parser.add_argument("--every", action="store_true", help="also the pairs without a target (natural_images_30px "
                        "frozen)")
    parser.add_argument("--cache-dir", type=Path, help="feature and image caches (default: a fresh temp folder)")
    args = parser.parse_args()
    try:  # a bad --set is one line, before anything trains
        settings = parse_settings(args.set)
        tlkit.Config().replace(**settings)
    except (tlkit.TlkitError, ValueError) as exc:
        parser.error(f"--set: {exc}")
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; expected some of {', '.join(DATASETS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tlkit-accuracy-"))
    cache = args.cache_dir or work / "cache"
    print(f"tlkit {tlkit.__version__}, Keras {__import__('keras').__version__} on "
          f"{__import__('keras').backend.backend()}; defaults{' with ' + ' '.join(args.set) if args.set else ''}; "
          f"seeds {args.seeds}", flush=True)
    print("\n| data | mode | val accuracy (mean) | spread | per seed | 95% CI of one run | target | epochs "
          "(seed 1) | time: first seed / others |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    try:
        for name in args.datasets.split(","):
            for mode in args.modes.split(","):
                if (name, mode) not in TARGETS and not args.every:
                    continue
                runs = [run_one(DATASETS[name], mode, seed, settings, args.weights, cache, work / "runs") for seed in seeds]
                accuracies = [run["accuracy"] for run in runs]
                low, high = wilson(statistics.mean(accuracies), runs[0]["images"])
                others = [run["seconds"] for run in runs[1:]]
                target = TARGETS.get((name, mode))
                print(f"| {name} | {mode} | {statistics.mean(accuracies):.4f} | {min(accuracies):.4f}-{max(accuracies):.4f} "
                      f"| {' '.join(f'{a:.4f}' for a in accuracies)} | {low:.3f}-{high:.3f} ({runs[0]['images']} images) "
                      f"| {'>= ' + format(target, '.3f') if target else '-'} | {runs[0]['epochs']} "
                      f"| {duration(runs[0]['seconds'])} / {duration(statistics.mean(others)) if others else '-'} |",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
