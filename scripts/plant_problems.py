"""Plant known problems in a copy of a folder dataset, then score a ``tlkit audit --json`` of it.

``make SRC OUT`` copies SRC (a plain folder of class folders) into OUT, split 80/20 into ``train/`` and
``val/`` by a seeded shuffle per class, and plants:

- ``label``: a fraction of the images (default 2%) moved to a random other class folder, same split;
- ``exact``: train images copied into the same class of ``val``: half byte for byte, half re-saved as PNG
  (the same decoded pixels in another format);
- ``near``: train images edited into the same class of ``val``: a 90% crop, a JPEG re-encode at quality 50,
  a horizontal flip, or 12% more brightness, in turn;
- ``foreign``: images of another dataset (``--foreign-from``, resized to SRC's typical size) and uniform noise,
  half each, put in random classes and splits.

Every planted image comes from a different source image. The truth goes to ``OUT.truth.json`` (beside OUT, not
in it). ``score AUDIT_JSON TRUTH`` prints each kind's recall and precision at the audit's thresholds, and how
many findings name no planted file at all: problems SRC already had, or false alarms (look at them).

    python scripts/plant_problems.py make ../shared/data/natural_images_30px /tmp/planted \\
        --foreign-from ../shared/data/hymenoptera
    tlkit audit /tmp/planted --json /tmp/planted.audit.json
    python scripts/plant_problems.py score /tmp/planted.audit.json /tmp/planted.truth.json
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
NEAR_EDITS = ("crop", "jpeg", "flip", "brighter")


def make(source: Path, out: Path, seed: int, flip_fraction: float, exact: int, near: int, foreign: int,
         foreign_from: Path | None) -> dict:
    """Write the planted copy of ``source`` into ``out`` and return the truth (paths relative to ``out``)."""
    rng = np.random.default_rng(seed)
    if out.exists():
        raise SystemExit(f"{out} exists: give a new folder")
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    placed: dict[str, tuple[str, str]] = {}  # source file -> (split, class) it is copied to
    for name in classes:
        files = sorted(p for p in (source / name).iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        order = rng.permutation(len(images))
        n_val = round(0.2 * len(images))
        for rank, i in enumerate(order):
            placed[str(images[i])] = ("val" if rank < n_val else "train", name)
        for junk in sorted(set(files) - set(images)):  # e.g. Thumbs.db: kept, as the source has it
            placed[str(junk)] = ("train", name)
    sources = [Path(p) for p in placed if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    sources.sort()
    free = list(rng.permutation(len(sources)))  # each planted image uses its own source image

    def take(count: int, split: str | None = None) -> list[Path]:
        chosen = []
        for i in list(free):
            if len(chosen) == count:
                break
            if split is None or placed[str(sources[i])][0] == split:
                chosen.append(sources[i])
                free.remove(i)
        return chosen

    truth: dict[str, list] = {"label": [], "exact": [], "near": [], "foreign": []}
    for path in take(round(flip_fraction * len(sources))):
        split, given = placed[str(path)]
        wrong = classes[(classes.index(given) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
        placed[str(path)] = (split, wrong)
        truth["label"].append({"path": f"{split}/{wrong}/{path.name}", "given": wrong, "true": given})
    for path in sorted(placed):
        split, name = placed[path]
        (out / split / name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / split / name / Path(path).name)
    for k, path in enumerate(take(exact, "train")):
        split, name = placed[str(path)]
        if k % 2 == 0:
            copy = out / "val" / name / f"dup_{path.name}"
            shutil.copyfile(path, copy)
        else:
            copy = out / "val" / name / f"dup_{path.stem}.png"
            with Image.open(path) as img:
                img.convert("RGB").save(copy)
        truth["exact"].append([f"train/{name}/{path.name}", str(copy.relative_to(out))])
    for k, path in enumerate(take(near, "train")):
        split, name = placed[str(path)]
        edit = NEAR_EDITS[k % len(NEAR_EDITS)]
        copy = out / "val" / name / f"near_{edit}_{path.stem}.jpg"
        with Image.open(path) as img:
            edited(img.convert("RGB"), edit).save(copy, quality=50 if edit == "jpeg" else 90)
        truth["near"].append([f"train/{name}/{path.name}", str(copy.relative_to(out)), edit])
    size = _typical_size(sources[:200])
    foreigners = sorted(p for p in foreign_from.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if foreign_from \
        else []
    for k in range(foreign):
        split, name = ("train", "val")[int(rng.random() < 0.2)], classes[int(rng.integers(len(classes)))]
        if k % 2 == 0 and foreigners:
            picked = foreigners[int(rng.integers(len(foreigners)))]
            with Image.open(picked) as img:
                image = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            target = out / split / name / f"foreign_{k}_{picked.name}"
        else:
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            target = out / split / name / f"noise_{k}.png"
        image.save(target)
        truth["foreign"].append(str(target.relative_to(out)))
    return truth


def edited(img: Image.Image, edit: str) -> Image.Image:
    """``img`` with one small edit of :data:`NEAR_EDITS` (``jpeg``: unchanged here, re-encoded when saved)."""
    if edit == "crop":
        w, h = img.size
        dx, dy = round(0.05 * w), round(0.05 * h)
        return img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    if edit == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if edit == "brighter":
        return ImageEnhance.Brightness(img).enhance(1.12)
    return img


def _typical_size(paths: list[Path]) -> tuple[int, int]:
    sizes = collections.Counter()
    for path in paths:
        with Image.open(path) as img:
            sizes[img.size] += 1
    return sizes.most_common(1)[0][0]


def score(audit_file: Path, truth_file: Path) -> dict:
    """Recall and precision of each planted kind, from the audit's findings (see the module docstring)."""
    audit, truth = json.loads(audit_file.read_text()), json.loads(truth_file.read_text())
    root = Path(audit["data"])

    def rel(path: str) -> str:
        return Path(path).relative_to(root).as_posix()

    copies = set(truth["foreign"]) | {pair[1] for kind in ("exact", "near") for pair in truth[kind]}
    planted_files = {"label": {item["path"] for item in truth["label"]} | set(truth["foreign"]),
                     "outlier": set(truth["foreign"])}  # duplicates: a flipped image is one of the source's own
    flips = {item["path"]: item for item in truth["label"]}
    pairs = {kind: {frozenset(pair[:2]): (pair[2] if len(pair) > 2 else kind) for pair in truth[kind]}
             for kind in ("exact", "near")}
    foreign = set(truth["foreign"])
    checks = {"label": ("label", lambda paths: paths[0] in flips),
              "exact": ("exact_duplicate", lambda paths: any(pair <= set(paths) for pair in pairs["exact"])),
              "near": ("near_duplicate", lambda paths: any(pair <= set(paths) for pair in pairs["near"])),
              "foreign": ("outlier", lambda paths: paths[0] in foreign)}
    rows = {}
    for planted, (kind, hits) in checks.items():
        of_kind = [[rel(p) for p in f["paths"]] for f in audit["findings"] if f["kind"] == kind]
        true = [paths for paths in of_kind if hits(paths)]
        untouched = [paths for paths in of_kind if not set(paths) & planted_files.get(kind, copies)]
        if planted in ("exact", "near"):
            found = [pair for pair in pairs[planted] if any(pair <= set(paths) for paths in true)]
            by_edit = collections.Counter(pairs[planted][pair] for pair in found)
            edits = {edit: f"{by_edit[edit]}/{n}" for edit, n in collections.Counter(pairs[planted].values()).items()}
        else:
            found, edits = {paths[0] for paths in true}, {}
        total = {"label": len(flips), "foreign": len(foreign)}.get(planted) or len(pairs[planted])
        rows[planted] = {"kind": kind, "planted": total, "found": len(found), "recall": len(found) / total,
                         "findings": len(of_kind), "true": len(true), "untouched": len(untouched),
                         "precision": len(true) / max(1, len(of_kind)),
                         "precision_planted": len(true) / max(1, len(of_kind) - len(untouched)), "by_edit": edits}
    labelled = {rel(f["paths"][0]): f for f in audit["findings"] if f["kind"] == "label"}
    rows["label"]["suggested_true"] = sum(1 for path, f in labelled.items() if path in flips
                                          and f["suggestion_label"] == flips[path]["true"])
    rows["label"]["on_foreign"] = len(foreign & set(labelled))
    outliers = {rel(f["paths"][0]) for f in audit["findings"] if f["kind"] == "outlier"}
    rows["foreign"]["found_as_label"] = len(foreign & set(labelled))
    rows["foreign"]["found_either"] = len(foreign & (set(labelled) | outliers))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    maker = commands.add_parser("make", help="write a planted copy")
    maker.add_argument("source", type=Path)
    maker.add_argument("out", type=Path)
    maker.add_argument("--seed", type=int, default=0)
    maker.add_argument("--flip-fraction", type=float, default=0.02)
    maker.add_argument("--exact", type=int, default=30)
    maker.add_argument("--near", type=int, default=30)
    maker.add_argument("--foreign", type=int, default=20)
    maker.add_argument("--foreign-from", type=Path)
    scorer = commands.add_parser("score", help="score an audit of a planted copy")
    scorer.add_argument("audit", type=Path)
    scorer.add_argument("truth", type=Path)
    scorer.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()
    if args.command == "make":
        truth = make(args.source, args.out, args.seed, args.flip_fraction, args.exact, args.near, args.foreign,
                     args.foreign_from)
        truth_file = args.out.with_name(args.out.name + ".truth.json")
        truth_file.write_text(json.dumps(truth, indent=1))
        print(f"{args.out}: {', '.join(f'{len(v)} {k}' for k, v in truth.items())} planted; truth in {truth_file}")
        return
    rows = score(args.audit, args.truth)
    print("| kind | planted | found | recall | findings | on untouched images | precision | precision, findings "
          "naming a planted file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for planted, row in rows.items():
        print(f"| {planted} ({row['kind']}) | {row['planted']} | {row['found']} | {row['recall']:.2f} | "
              f"{row['findings']} | {row['untouched']} | {row['precision']:.2f} | {row['precision_planted']:.2f} |")
    for planted in ("exact", "near"):
        print(f"{planted}: found per edit {rows[planted]['by_edit']}")
    print(f"label: suggested label is the true one for {rows['label']['suggested_true']} of {rows['label']['found']}; "
          f"{rows['label']['on_foreign']} label findings are planted foreign images")
    print(f"foreign: {rows['foreign']['found']} found as outliers, {rows['foreign']['found_as_label']} as label errors, "
          f"{rows['foreign']['found_either']} by either")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
