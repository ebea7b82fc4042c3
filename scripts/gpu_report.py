"""The GPU check's report: ``scripts/bench.py``'s JSON of each precision and the GPU samples taken meanwhile,
as one JSON file and one markdown table (``scripts/gpu_check.sh`` runs it).

Each stage's GPU utilisation is the mean of the ``nvidia-smi`` samples taken while that side of that stage
ran (bench.py records when: its ``spans``), and its GPU memory the largest sample then. Without samples (no
``nvidia-smi``: the dry run on a CPU) both are left empty.

    python scripts/gpu_report.py --bench float32=b32.json --bench mixed_bfloat16=b16.json \\
        --samples gpu.csv --tests tests.txt --out OUT
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

#: The issue's targets, by stage: (what is compared, the floor).
TARGETS = {"extract_warm": ("tlkit_images_per_s", 20_000), "frozen_epoch": ("ratio", 20),
           "finetune_epoch": ("ratio", 10)}
#: The GPU utilisation every stage should reach, in percent.
UTILISATION_TARGET = 80


def read_samples(path: Path | None) -> list[tuple[float, float, float]]:
    """``(time, utilisation %, memory used MiB)`` of each line ``nvidia-smi --query-gpu=timestamp,
    utilization.gpu,memory.used --format=csv,noheader,nounits`` wrote (every GPU's line counts alike)."""
    if path is None or not path.is_file():
        return []
    samples = []
    for line in path.read_text().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((when, float(parts[1]), float(parts[2])))
        except ValueError:
            continue
    return samples


def during(samples: list[tuple[float, float, float]], spans: list[dict], stage: str, side: str) -> dict:
    """Mean utilisation and largest memory of the samples taken while ``side`` ran ``stage``."""
    inside = [s for s in samples for span in spans
              if span["stage"] == stage and span["side"] == side and span["start"] <= s[0] <= span["end"]]
    if not inside:
        return {"gpu_utilisation": None, "gpu_memory_mib": None, "samples": 0}
    return {"gpu_utilisation": round(sum(s[1] for s in inside) / len(inside), 1),
            "gpu_memory_mib": max(s[2] for s in inside), "samples": len(inside)}


def combine(benches: dict[str, dict], samples: list, tests: str) -> dict:
    """One row per stage: the classic side, tlkit in each precision, their GPU use, and the targets."""
    rows = []
    first = next(iter(benches.values()))
    for result in first["results"]:
        stage = result["stage"]
        row = {"stage": stage, "classic_images_per_s": result["classic_images_per_s"],
               "classic": during(samples, first["spans"], stage, "classic")}
        for precision, bench in benches.items():
            mine = next((r for r in bench["results"] if r["stage"] == stage), None)
            if mine is not None:
                row[precision] = {"images_per_s": mine["tlkit_images_per_s"], "ratio": mine["ratio"],
                                  **during(samples, bench["spans"], stage, "tlkit")}
        if stage in TARGETS:
            key, floor = TARGETS[stage]
            row["target"] = f"{key.replace('tlkit_', '')} >= {floor:,}"
            row["met"] = {p: (bench_row.get("ratio" if key == "ratio" else "images_per_s") or 0) >= floor
                          for p, bench_row in row.items() if p in benches}
        rows.append(row)
    passed = re.search(r"(\d+) passed", tests)
    failed = re.search(r"(\d+) (failed|error)", tests)
    return {"devices": first["devices"], "backend": first["backend"], "image_size": first["image_size"],
            "images": first["images"], "batch_size": first["batch_size"], "stages": rows, "host": first["host"],
            "predict": {p: b["predict"] for p, b in benches.items()},
            "tests": {"passed": int(passed.group(1)) if passed else 0, "failed": int(failed.group(1)) if failed else 0,
                      "summary": tests.strip().splitlines()[-1] if tests.strip() else ""},
            "utilisation_target": UTILISATION_TARGET}


def markdown(report: dict, precisions: list[str]) -> str:
    """The report as markdown tables: the stages, then the host stages, then the tests' line."""
    def cell(value, digits=1):
        return "-" if value is None else f"{value:,.{digits}f}"

    head = ["stage", "classic img/s", "classic GPU %"]
    for p in precisions:
        head += [f"tlkit {p} img/s", "ratio", "GPU %", "GPU MiB"]
    head += ["target", "met"]
    lines = [f"Devices: {', '.join(report['devices'])}; backend {report['backend']}; {report['images']} images at "
             f"{report['image_size']} px, batch {report['batch_size']}.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in report["stages"]:
        cells = [row["stage"], cell(row["classic_images_per_s"]), cell(row["classic"]["gpu_utilisation"])]
        for p in precisions:
            mine = row.get(p, {})
            cells += [cell(mine.get("images_per_s")), cell(mine.get("ratio"), 2), cell(mine.get("gpu_utilisation")),
                      cell(mine.get("gpu_memory_mib"), 0)]
        met = row.get("met", {})
        cells += [row.get("target", ""), " / ".join("yes" if met[p] else "no" for p in precisions if p in met)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| host stage | images/s | MB/s | of memory copy | note |", "| --- | --- | --- | --- | --- |"]
    for row in report["host"]:
        lines.append(f"| {row['stage']} | {cell(row['images_per_s'])} | {cell(row['mb_per_s'])} | "
                     f"{row['bandwidth_fraction']:.3f} | {row['note']} |")
    for precision, runs in report["predict"].items():
        for run in runs:
            lines.append(f"\npredict ({precision}): {run['images']} images, {run['images_per_s']} images/s, "
                         f"peak RSS {run['peak_rss_mb']} MB")
    lines += ["", f"Tests on this machine: {report['tests']['summary'] or 'not run'}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", required=True, metavar="PRECISION=JSON",
                        help="bench.py's --json output of one precision (repeat; the first gives the classic side)")
    parser.add_argument("--samples", type=Path, help="nvidia-smi's CSV samples")
    parser.add_argument("--tests", type=Path, help="what pytest printed")
    parser.add_argument("--out", type=Path, required=True, help="folder of gpu_check.json and gpu_check.md")
    args = parser.parse_args()
    benches = {}
    for given in args.bench:
        precision, _, path = given.partition("=")
        benches[precision] = json.loads(Path(path).read_text())
    tests = args.tests.read_text() if args.tests and args.tests.is_file() else ""
    report = combine(benches, read_samples(args.samples), tests)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, list(benches))
    (args.out / "gpu_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
