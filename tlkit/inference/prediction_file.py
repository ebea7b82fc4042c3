"""Prediction results written to a file as they come, CSV or JSON Lines, and resumed where they stopped.

Each batch's rows go out in one write, flushed and synced to disk, so a killed ``tlkit predict --out``
leaves every finished batch on disk; at most its last line is torn. Run again, it reads which paths are
already there, and predicts only the others. Unreadable images get a row too (with the reason), so a
rerun does not try them again. Every row names the run that wrote it (:attr:`tlkit.runs.Run.identity`).

- ``.csv``: ``path, label, probability, probability_<class>...`` (every class), ``error``, ``run``.
- ``.jsonl``: ``{"path", "label", "probability", "probabilities": {class: p}, "run"}`` or ``{"path", "error", "run"}``.

An existing file is read, never changed, until it is known to be a results file of this run: a CSV with
this header, JSON Lines of these records, every row of this run. Only then is a torn last line (an
interrupted write) cut off. A file of another run, or of a tlkit that did not record runs, is refused
(``overwrite`` starts it afresh); any other file is refused and left as it is.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tlkit.augment import tta_views
from tlkit.config import PREDICT_BATCH
from tlkit.data.scan import list_images
from tlkit.errors import TlkitError
from tlkit.inference.predict import iter_probabilities, prediction_run
from tlkit.outputs import check_output, disk_errors
from tlkit.runs import Run

log = logging.getLogger("tlkit")

FORMATS = (".csv", ".jsonl")
#: File names that are not valid UTF-8 (Linux allows any bytes) are written and read back byte for byte.
PATH_ERRORS = "surrogateescape"
#: How every JSON Lines record of ours starts, and the least of a CSV header that a torn one holds (the file
#: held nothing else when the header write was cut short).
JSONL_START = '{"path": "'
CSV_START = "path,label,probability,"
#: The keys of a JSON Lines record of a prediction and of an unreadable image, "run" aside.
RECORD_KEYS = ({"path", "label", "probability", "probabilities"}, {"path", "error"})


def predict_to_file(paths: list[str | Path], out: str | Path, run: Run | str | Path | None = None,
                    batch_size: int = PREDICT_BATCH, tta: int = 1, progress: bool = False, *,
                    overwrite: bool = False) -> dict[str, int]:
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
        overwrite: Start ``out`` afresh if it holds results (of any run, or of a tlkit that did not record
            runs) instead of continuing it; a file that is not tlkit results is refused all the same.

    Returns:
        ``{"predicted", "unreadable", "already"}``: rows written now (readable and not), rows found.

    Raises:
        TlkitError: On a bad path, run, ``tta`` or output (wrong suffix, missing folder, not a regular
            file, a file that is not tlkit results or holds another run's), before anything is written.
    """
    out = check_output(out)  # a link, a device, a named pipe, a read-only folder...: before the run is loaded
    if out.suffix.lower() not in FORMATS:
        raise TlkitError(f"cannot write predictions to {out}: give a file ending in .csv or .jsonl")
    tta_views(tta)
    run = prediction_run(run)
    files = list_images(paths)
    writer = ResultsWriter(out, run.class_names, run.identity, thresholds=run.thresholds if run.multi_label else None)
    done = writer.recorded(overwrite)
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
    """Appends the prediction rows of one run to a CSV or JSON Lines file, one synced write per batch; for a
    multi-label run (``thresholds`` given), ``label`` holds every label reaching its threshold, joined by ``;``."""

    def __init__(self, path: Path, class_names: tuple[str, ...], run_id: str, *,
                 thresholds: list[float] | None = None) -> None:
        self.path = path
        self.class_names = class_names
        self.run_id = run_id
        self.thresholds = thresholds
        self.csv = path.suffix.lower() == ".csv"
        self.header = ["path", "label", "probability", *(f"probability_{name}" for name in class_names), "error",
                       "run"]

    def recorded(self, overwrite: bool = False) -> set[str]:
        """The paths already in the file, once it is known to hold this run's results (or, with ``overwrite``,
        any tlkit results, which are then dropped); a new or empty file is started.

        The file is only read until then; a torn last line (an interrupted write) is cut off after.

        Raises:
            TlkitError: If the file is not tlkit results, or (unless
                ``overwrite``) it holds predictions of another run or other classes; the file is left as it was.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:  # new, or emptied
            self._start()
            return set()
        paths, runs, classes, whole = self._read()
        if overwrite:
            if paths:
                log.warning("%s: its %d row(s) are dropped (--overwrite)", self.path, len(paths))
            self._truncate(0)
            return set()
        if None in runs:
            raise TlkitError(f"{self.path} was written by an older tlkit, which did not record the run of each row; "
                             "give another --out, or --overwrite to start it afresh")
        if runs - {self.run_id}:
            raise TlkitError(f"{self.path} holds predictions of run {min(runs - {self.run_id})}, not of run "
                             f"{self.run_id} given now; give --run with the run that wrote it to continue it, "
                             "another --out, or --overwrite to start it afresh")
        if classes - {self.class_names}:
            raise TlkitError(f"{self.path} holds predictions of other classes than {', '.join(self.class_names)}; "
                             "give another --out, the run that wrote it, or --overwrite to start it afresh")
        if whole < self.path.stat().st_size:
            log.warning("%s ended in a torn line (an interrupted write); it is cut off and predicted again",
                        self.path)
            self._truncate(whole)
        return paths

    def append(self, rows: Iterable[tuple[str, np.ndarray]], skipped: dict[str, str]) -> None:
        """Write one batch: a row per predicted path, then one per unreadable path."""
        records = []
        for path, probabilities in rows:
            best = int(np.argmax(probabilities))
            label = self.class_names[best] if self.thresholds is None else ";".join(
                name for name, p, t in zip(self.class_names, probabilities, self.thresholds) if p >= t)
            records.append({"path": path, "label": label, "probability": float(probabilities[best]),
                            "probabilities": dict(zip(self.class_names, map(float, probabilities))),
                            "run": self.run_id})
        records += [{"path": path, "error": reason, "run": self.run_id} for path, reason in skipped.items()]
        if not records:
            return
        if self.csv:
            self._write(self._csv_lines([self._csv_row(record) for record in records]))
        else:
            self._write("".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records))

    def _read(self) -> tuple[set[str], set[str | None], set[tuple[str, ...]], int]:
        """Read the file without changing it: its paths, the runs of its rows (``None``: a row or header
        without one), the classes of its header or records, and the size of its complete lines.

        Raises:
            TlkitError: If a complete line, or the torn part of a file that has none, is not ours.
        """
        paths: set[str] = set()
        runs: set[str | None] = set()
        classes: set[tuple[str, ...]] = set()
        torn: list[str] = []
        with open(self.path, "rb") as handle:
            try:
                lines = _complete_lines(handle, torn)
                if self.csv:
                    self._read_csv(lines, paths, runs, classes)
                else:
                    self._read_jsonl(lines, paths, runs, classes)
            except (ValueError, KeyError, TypeError, IndexError, csv.Error):
                raise self._not_ours() from None
        if torn and not (paths or runs or classes) and not self._starts_ours(torn[0]):
            raise self._not_ours()  # no complete line: only a torn start of ours may be there
        tail = len(torn[0].encode("utf-8", PATH_ERRORS)) if torn else 0
        return paths, runs, classes, self.path.stat().st_size - tail

    @staticmethod
    def _read_csv(lines: Iterable[str], paths: set, runs: set, classes: set) -> None:
        rows = csv.reader(lines)
        header = next(rows, None)
        if header is None:
            return
        has_run = header[-1:] == ["run"]
        columns = header[:-1] if has_run else header
        names = columns[3:-1]
        if columns[:3] != ["path", "label", "probability"] or columns[-1:] != ["error"] or not names or \
                not all(name.startswith("probability_") for name in names):
            raise ValueError("not a results header")
        classes.add(tuple(name[len("probability_"):] for name in names))
        if not has_run:
            runs.add(None)
        for row in rows:
            if len(row) != len(header):
                raise ValueError("not a results row")
            paths.add(row[0])
            runs.add(row[-1] if has_run else None)

    @staticmethod
    def _read_jsonl(lines: Iterable[str], paths: set, runs: set, classes: set) -> None:
        for line in lines:
            record = json.loads(line)
            if not isinstance(record, dict) or set(record) - {"run"} not in RECORD_KEYS or \
                    not isinstance(record["path"], str) or not isinstance(record.get("run", ""), str) or \
                    not isinstance(record.get("probabilities", {}), dict):
                raise ValueError("not a results record")
            paths.add(record["path"])
            runs.add(record.get("run"))
            if "probabilities" in record:
                classes.add(tuple(record["probabilities"]))

    def _starts_ours(self, text: str) -> bool:
        """Whether ``text``, all a file holds, is how a file of ours starts (a write was cut short)."""
        if self.csv:
            return text.startswith(CSV_START) and self._csv_lines([self.header]).startswith(text)
        return text.startswith(JSONL_START)

    def _csv_row(self, record: dict) -> list:
        if "error" in record:
            return [record["path"], "", "", *([""] * len(self.class_names)), record["error"], record["run"]]
        return [record["path"], record["label"], record["probability"], *record["probabilities"].values(), "",
                record["run"]]

    @staticmethod
    def _csv_lines(rows: list[list]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def _start(self) -> None:
        """Begin a new or empty file: a CSV with its header."""
        if self.csv:
            self._write(self._csv_lines([self.header]))
        else:
            self.path.touch()

    def _truncate(self, size: int) -> None:
        """Keep the first ``size`` bytes of the file; emptied, it is started again."""
        with disk_errors(self.path), open(self.path, "rb+") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())
        if size == 0:
            self._start()

    def _write(self, text: str) -> None:
        with disk_errors(self.path), open(self.path, "a", encoding="utf-8", errors=PATH_ERRORS, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def _not_ours(self) -> TlkitError:
        return TlkitError(f"{self.path} is not a tlkit results file (its lines are not predictions); it is left as "
                          "it is: give another --out")


def _complete_lines(handle: io.BufferedReader, torn: list[str]) -> Iterator[str]:
    """The lines of ``handle`` that end in a newline, decoded; the rest of the file, if any, goes into ``torn``."""
    for line in handle:
        text = line.decode("utf-8", PATH_ERRORS)
        if not line.endswith(b"\n"):
            torn.append(text)
            return
        yield text
