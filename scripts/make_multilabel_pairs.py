"""Build a multi-label dataset from a folder of class folders: each image is two photos of different classes
side by side, labelled with both classes (``labels.csv``: ``path,label`` with ``cat;dog`` cells).

    python scripts/make_multilabel_pairs.py ../shared/data/natural_images_30px /tmp/pairs --pairs 3000
    tlkit train /tmp/pairs/labels.csv --mode features     # micro F1, mAP: metrics.json, tlkit evaluate

Photos are drawn with a fixed seed, each used once at most while enough are left; unreadable files
(``Thumbs.db``) are left out. Each half is resized to a square of ``--side`` pixels, so every pair is
``2 * side`` by ``side`` (tlkit then resizes it to its square input, as it does any image). The output folder
must not exist or be empty: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def photos_by_class(source: Path) -> dict[str, list[Path]]:
    """The readable photos of each class folder of ``source``, sorted."""
    found = {}
    for folder in sorted(path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")):
        readable = []
        for path in sorted(folder.iterdir()):
            try:
                with Image.open(path) as image:
                    image.verify()
                readable.append(path)
            except (UnidentifiedImageError, OSError):
                print(f"left out {path} (not an image)", file=sys.stderr)
        found[folder.name] = readable
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder of class folders")
    parser.add_argument("out", type=Path, help="the new dataset folder (images and labels.csv)")
    parser.add_argument("--pairs", type=int, default=3000, help="images to make (default 3000)")
    parser.add_argument("--side", type=int, default=64, help="side of each half, pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    classes = photos_by_class(args.source)
    names = sorted(classes)
    queues = {name: list(rng.permutation(len(classes[name]))) for name in names}
    rows = []
    for i in range(args.pairs):
        first, second = rng.choice(len(names), size=2, replace=False)
        halves = []
        for name in (names[first], names[second]):
            if not queues[name]:  # every photo of the class used: deal them again
                queues[name] = list(rng.permutation(len(classes[name])))
            with Image.open(classes[name][queues[name].pop()]) as photo:
                halves.append(photo.convert("RGB").resize((args.side, args.side), Image.Resampling.BICUBIC))
        pair = Image.new("RGB", (2 * args.side, args.side))
        pair.paste(halves[0], (0, 0))
        pair.paste(halves[1], (args.side, 0))
        name = f"images/pair_{i:05d}.jpg"
        pair.save(args.out / name, quality=95)
        rows.append([name, f"{names[first]};{names[second]}"])
    with open(args.out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label"], *rows])
    print(f"{args.out / 'labels.csv'}: {len(rows)} images, two of {len(names)} labels each")


if __name__ == "__main__":
    main()
