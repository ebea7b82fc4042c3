"""Calibrate ``tlkit audit``'s near-duplicate threshold on real photos.

For a sample of a dataset's images, writes edited copies (a 90% crop, a JPEG re-encode at quality 50, a
horizontal flip, 12% more brightness, half the size) into a scratch folder, extracts the VGG16 features of
originals and copies with tlkit (the audit's own features: pooled, unit length), and prints:

- per edit, the cosine similarity of each copy to its original (min, 5th percentile, median): what a near
  duplicate looks like;
- over the whole dataset, each image's similarity to its most similar *other* image (the 50th, 99th, 99.9th
  percentile and the max), and how many pairs of the dataset reach each candidate threshold: what distinct
  images look like (a dataset's own duplicates show up here too).

    python scripts/audit_calibrate.py ../shared/data/hymenoptera --sample 150 --cache-dir /tmp/cache
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plant_problems import IMAGE_SUFFIXES, NEAR_EDITS, edited  # a sibling script

EDITS = (*NEAR_EDITS, "half")
THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--sample", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--edits-only", action="store_true",
                        help="skip the whole dataset's figures (which extract all its images)")
    args = parser.parse_args()

    import tlkit
    from tlkit.auditing.similarity import near_pairs, unit_rows

    config = tlkit.Config()
    if args.cache_dir:
        config = config.replace(runtime={"cache_dir": args.cache_dir})
    images = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    rng = np.random.default_rng(args.seed)
    sample = [images[i] for i in sorted(rng.choice(len(images), min(args.sample, len(images)), replace=False))]
    scratch = Path(tempfile.mkdtemp(prefix="calibrate-"))
    try:
        for kind in ("original", *EDITS):
            (scratch / kind).mkdir()
        for k, path in enumerate(sample):
            with Image.open(path) as img:
                rgb = img.convert("RGB")
            name = f"{k:05d}.png"
            rgb.save(scratch / "original" / name)
            for edit in EDITS:
                copy = rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2))) if edit == "half" \
                    else edited(rgb, edit)
                copy.save(scratch / edit / f"{k:05d}.jpg", quality=50 if edit == "jpeg" else 90)
        edits_index = tlkit.scan(scratch, config.replace(data={"val_split": 0.0}).data)
        features = tlkit.extract(edits_index, config, verbose=1)
        x, _, files = features.pooled("train")
        x = unit_rows(x)
        by_kind = {name: {f.stem: row for row, f in enumerate(files) if f.parent.name == name}
                   for name in ("original", *EDITS)}
        figures: dict = {"edits": {}, "dataset": {}}
        for edit in EDITS:
            sims = np.array([x[by_kind["original"][stem]] @ x[row] for stem, row in by_kind[edit].items()])
            figures["edits"][edit] = {"min": float(sims.min()), "p5": float(np.percentile(sims, 5)),
                                      "median": float(np.median(sims)),
                                      **{f">={t}": float((sims >= t).mean()) for t in THRESHOLDS}}
        if args.edits_only:
            return _report(figures, args.json)
        whole = tlkit.extract(args.data, config, verbose=1)
        vectors = np.concatenate([whole.pooled(name)[0] for name in ("train", "val", "test")
                                  if whole.index.files.get(name)])
        y = unit_rows(vectors)
        nearest = np.empty(len(y))
        for start in range(0, len(y), 1024):
            sims = y[start:start + 1024] @ y.T
            sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -1
            nearest[start:start + 1024] = sims.max(axis=1)
        figures["dataset"] = {"images": len(y), **{f"p{q}": float(np.percentile(nearest, q)) for q in (50, 99, 99.9)},
                              "max": float(nearest.max()),
                              **{f"pairs>={t}": len(near_pairs(y, t)[0]) for t in THRESHOLDS}}
    finally:
        shutil.rmtree(scratch)
    _report(figures, args.json)


def _report(figures: dict, out: Path | None) -> None:
    print(json.dumps(figures, indent=1))
    if out:
        out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
