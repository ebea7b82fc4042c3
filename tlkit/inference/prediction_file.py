"""Prediction results written to a file as they come, CSV or JSON Lines, and resumed where they stopped.

Each batch's rows go out in one write, flushed and synced to disk, so a killed ``tlkit predict --out``
leaves every finished batch on disk; at most its last line is torn. Run again, it cuts a torn line
off, reads which paths are already there, and predicts only the others. Unreadable images get a row
too (with the reason), so a rerun does not try them again.

- ``.csv``: ``path, label, probability, probability_<class>...`` (every class), ``error``.
- ``.jsonl``: ``{"path", "label", "probability", "probabilities": {class: p}}`` or ``{"path", "error"}``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tlkit.augment import tta_views
from tlkit.config import PREDICT_BATCH
from tlkit.data.scan import list_images
from tlkit.errors import TlkitError
from tlkit.inference.predict import iter_probabilities
from tlkit.io import require_parent
from tlkit.runs import Run, resolve_run

log = logging.getLogger("tlkit")

FORMATS = (".csv", ".jsonl")
#: File names that are not valid UTF-8 (Linux allows any bytes) are written and read back byte for byte.
PATH_ERRORS = "surrogateescape"


def predict_to_file(paths: list[str | Path], out: str | Path, run: Run | str | Path | None = None,
                    batch_size: int = PREDICT_BATCH, tta: int = 1, progress: bool = False) -> dict[str, int]:
    """Predict every image in ``paths`` (files or folders, recursively) into ``out``, resuming it.

    Images whose path is already in ``out`` are skipped, so the same command, rerun after an
    interruption, finishes the job; paths are recorded as listed (give the same ``paths``).

    Args:
        paths: Image files and/or folders.
        out: A ``.csv`` or ``.jsonl`` file; created, or continued if it exists.
        run: A loaded run, a run folder, or ``None`` for the latest under ``runs/``.
        batch_size: Images decoded and predicted at a time.
        tta: Test-time views averaged per image (1: none).
        progress: Show a progress bar.

    Returns:
        ``{"predicted", "unreadable", "already"}``: rows written now (readable and not), rows found.

    Raises:
        TlkitError: On a bad path, run, ``tta`` or output (wrong suffix, missing folder, a file
            holding other columns), before anything is written.
    """
    out = require_parent(out)
    if out.suffix.lower() not in FORMATS:
        raise TlkitError(f"cannot write predictions to {out}: give a file ending in .csv or .jsonl")
    tta_views(tta)
    run = resolve_run(run)
    files = list_images(paths)
    writer = ResultsWriter(out, run.class_names)
    done = writer.recorded()
    todo = [path for path in files if str(path) not in done]
    if done:
        log.info("%d of the %d images are already in %s; predicting the other %d", len(files) - len(todo),
                 len(files), out, len(todo))
    counts = {"predicted": 0, "unreadable": 0, "already": len(files) - len(todo)}
    for readable, probabilities, skipped in iter_probabilities(run, todo, batch_size, progress, tta):
        writer.append(zip(map(str, readable), probabilities), skipped)
        counts["predicted"] += len(readable)
        counts["unreadable"] += len(skipped)
    return counts


class ResultsWriter:
    """Appends prediction rows to a CSV or JSON Lines file, one synced write per batch."""

    def __init__(self, path: Path, class_names: tuple[str, ...]) -> None:
        self.path = path
        self.class_names = class_names
        self.csv = path.suffix.lower() == ".csv"
        self.header = ["path", "label", "probability", *(f"probability_{name}" for name in class_names), "error"]

    def recorded(self) -> set[str]:
        """The paths already in the file (cutting off a torn last line); starts the file if it is new or empty.

        Raises:
            TlkitError: If the file holds results of other classes.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:  # new, or killed before its header
            if self.csv:
                self._write(self._csv_lines([self.header]))
            else:
                self.path.touch()
            return set()
        self._cut_torn_line()
        try:
            with open(self.path, encoding="utf-8", errors=PATH_ERRORS, newline="") as handle:
                if self.csv:
                    rows = csv.reader(handle)
                    if next(rows, None) != self.header:
                        raise self._other_columns()
                    return {row[0] for row in rows if row}
                records = [json.loads(line) for line in handle if line.strip()]
            for record in records:
                if "probabilities" in record and list(record["probabilities"]) != list(self.class_names):
                    raise self._other_columns()
            return {record["path"] for record in records}
        except TlkitError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, csv.Error):  # not lines this writer wrote
            raise TlkitError(f"{self.path} is not a tlkit results file (its lines are not predictions); "
                             "give another --out") from None

    def append(self, rows: Iterable[tuple[str, np.ndarray]], skipped: dict[str, str]) -> None:
        """Write one batch: a row per predicted path, then one per unreadable path."""
        records = []
        for path, probabilities in rows:
            best = int(np.argmax(probabilities))
            records.append({"path": path, "label": self.class_names[best], "probability": float(probabilities[best]),
                            "probabilities": dict(zip(self.class_names, map(float, probabilities)))})
        records += [{"path": path, "error": reason} for path, reason in skipped.items()]
        if not records:
            return
        if self.csv:
            self._write(self._csv_lines([self._csv_row(record) for record in records]))
        else:
            self._write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))

    def _csv_row(self, record: dict) -> list:
        if "error" in record:
            return [record["path"], "", "", *([""] * len(self.class_names)), record["error"]]
        return [record["path"], record["label"], record["probability"], *record["probabilities"].values(), ""]

    @staticmethod
    def _csv_lines(rows: list[list]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def _write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8", errors=PATH_ERRORS, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def _cut_torn_line(self) -> None:
        """Truncate the file after its last newline: a write killed midway leaves part of a line."""
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning("%s ended in a torn line (an interrupted write); it is cut off and predicted again",
                        self.path)
            handle.truncate(keep)
            handle.seek(keep)
            if keep == 0 and self.csv:
                handle.write(self._csv_lines([self.header]).encode("utf-8"))

    def _other_columns(self) -> TlkitError:
        return TlkitError(f"{self.path} holds predictions of other classes than {', '.join(self.class_names)}; "
                          "give another --out, or the run that wrote it")
