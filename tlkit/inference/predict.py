"""Predict classes of image files with a saved run, streaming in batches.

The run loaded last is kept (:func:`prediction_run`): calling :func:`predict` again with the same run folder
reuses its model instead of loading it anew, which took seconds and gave Keras a new ``predict`` function to
trace each time (TensorFlow warned of retracing after five calls).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np

from tlkit.augment import tta_views, view_images
from tlkit.config import PREDICT_BATCH
from tlkit.data.decode import decode_images
from tlkit.data.scan import list_images
from tlkit.errors import TlkitError
from tlkit.io import CHECKSUMS
from tlkit.model import class_probabilities
from tlkit.runs import Run, checked_run, load_run, resolve_run

log = logging.getLogger("tlkit")

#: The run :func:`prediction_run` loaded last, under its folder and the digest of its ``checksums.json``.
_loaded: dict[tuple[Path, str], Run] = {}


@dataclass(frozen=True)
class Prediction:
    """The prediction for one image: the top class, its probability, the top k, and the run that made it
    (its :attr:`~tlkit.runs.Run.identity`). A multi-label run's also has ``labels``, every label whose
    probability reaches its threshold (in the run's label order), and ``top_k`` then ranks every label."""

    path: str
    label: str
    probability: float
    top_k: tuple[tuple[str, float], ...]
    run: str = ""
    labels: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        """JSON-ready form: ``path``, ``label``, ``probability``, ``top_k`` (list of ``{label, probability}``), ``run``;
        multi-label: ``labels`` (those predicted) and ``probabilities`` (``{label: probability}``, every label)."""
        record = {"path": self.path, "label": self.label, "probability": self.probability,
                  "top_k": [{"label": name, "probability": p} for name, p in self.top_k], "run": self.run}
        if self.labels is not None:
            record.update(labels=list(self.labels), probabilities=dict(self.top_k))
        return record


def prediction_run(run: Run | str | Path | None) -> Run:
    """A loaded run, as :func:`tlkit.runs.resolve_run` gives it; the folder loaded last is reused while its
    files are unchanged (checked against its checksums each time), so repeated calls share one model.

    Raises:
        TlkitError: If the folder is not a whole, unmodified run (see :func:`tlkit.runs.load_run`).
    """
    return resolve_run(run, _load_reusing_the_last)


def _load_reusing_the_last(path: Path) -> Run:
    """The run in ``path``: the one loaded last if it is the same folder with the same checksums."""
    try:
        key = (path.resolve(), hashlib.sha256((path / CHECKSUMS).read_bytes()).hexdigest())
    except OSError:  # not a run: load_run says why
        key = None
    loaded = _loaded.get(key)
    if loaded is not None:
        checked_run(path)  # its files still match the checksums it was loaded with
        return loaded
    loaded = load_run(path)
    _loaded.clear()
    if key is not None:
        _loaded[key] = loaded
    return loaded


def iter_predictions(paths: list[str | Path], run: Run | str | Path | None = None, top_k: int = 1,
                     batch_size: int = PREDICT_BATCH, tta: int = 1, threshold: float | None = None
                     ) -> Iterator[Prediction]:
    """Yield a :class:`Prediction` per readable image, in order, a batch at a time.

    Folders are searched recursively; files that are not readable images are skipped
    with a warning naming them. ``tta`` > 1 averages the probabilities of that many
    test-time views of each image (:func:`tlkit.augment.tta_views`). A multi-label run predicts
    each label whose probability reaches ``threshold`` (default: the run's thresholds).

    Raises:
        TlkitError: On a missing path, no files, a bad run, ``top_k < 1`` or a bad ``tta`` (at
            the call), or when no file at all is a readable image (once the files are used up).
    """
    if top_k < 1:
        raise TlkitError(f"invalid top_k: {top_k}; expected an integer >= 1")
    tta_views(tta)  # checked now, before any output
    run = prediction_run(run)  # checked now, not at the first item: nothing is printed before an error
    if threshold is not None and not 0 <= threshold <= 1:
        raise TlkitError(f"invalid threshold: {threshold!r}; expected a probability in [0, 1]")
    files = list_images(paths)
    k = len(run.class_names) if run.multi_label else min(top_k, len(run.class_names))
    cut = np.array(run.thresholds if threshold is None else [threshold] * len(run.class_names))
    identity = run.identity

    def predictions() -> Iterator[Prediction]:
        count = 0
        for readable, probabilities, _ in iter_probabilities(run, files, batch_size, tta=tta):
            for path, probs in zip(readable, probabilities):
                order = np.argsort(-probs, kind="stable")[:k]
                ranked = tuple((run.class_names[i], float(probs[i])) for i in order)
                chosen = tuple(name for name, p, t in zip(run.class_names, probs, cut) if p >= t)  # in label order
                count += 1
                yield Prediction(str(path), ";".join(chosen) if run.multi_label else ranked[0][0], ranked[0][1],
                                 ranked, identity, chosen if run.multi_label else None)
        if count == 0:
            raise TlkitError(f"none of the {len(files)} file(s) given is a readable image "
                             "(each was skipped: see the warnings); give JPEG, PNG... image files")

    return predictions()


def view_probabilities(run: Run, images: np.ndarray, tta: int = 1, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Class probabilities of ``images`` averaged over ``tta`` test-time views (1: the images as they are),
    the shifted views' borders filled as the run's augmentation filled them."""
    views = tta_views(tta)
    total = sum(class_probabilities(run.model, view_images(images, view, run.config.augment.fill_mode), batch_size)
                for view in views)
    return total / len(views)


def iter_probabilities(run: Run, files: list[Path], batch_size: int = PREDICT_BATCH, progress: bool = False,
                       tta: int = 1) -> Iterator[tuple[list[Path], np.ndarray, dict[str, str]]]:
    """Decode and predict ``files`` a batch at a time (over ``tta`` views: :func:`view_probabilities`);
    yields ``(readable files, their probabilities, {unreadable file: reason})`` per batch.

    The next batch is decoded in the background while the model predicts this one, so the device
    does not wait for the decoders (memory holds two batches).

    Raises:
        TlkitError: If the model gives a probability that is NaN or infinite (a broken model), naming an image.
    """
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress else None
    chunks = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    done = 0
    with ThreadPoolExecutor(max_workers=1) as ahead:
        decode = partial(decode_images, image_size=run.image_size, workers=run.config.runtime.workers)
        pending = ahead.submit(decode, chunks[0]) if chunks else None
        for position, chunk in enumerate(chunks):
            images, kept, skipped = pending.result()
            if position + 1 < len(chunks):
                pending = ahead.submit(decode, chunks[position + 1])
            probabilities = (view_probabilities(run, images, tta, batch_size) if kept
                             else np.empty((0, len(run.class_names))))
            broken = ~np.isfinite(probabilities).all(axis=1)
            if broken.any():
                raise TlkitError(f"run {run.path} gives a probability that is not a number (NaN or infinite) for "
                                 f"{chunk[kept[int(np.argmax(broken))]]}: its model is broken; retrain it")
            yield [chunk[i] for i in kept], probabilities, skipped
            done += len(chunk)
            if bar is not None:
                bar.update(done)


def predict(paths: list[str | Path], run: Run | str | Path | None = None, top_k: int = 1,
            batch_size: int = PREDICT_BATCH, tta: int = 1, threshold: float | None = None) -> list[Prediction]:
    """Predict every image in ``paths`` (files or folders) with a run; see :func:`iter_predictions`.

    Args:
        paths: Image files and/or folders.
        run: A loaded :class:`~tlkit.runs.Run`, a run folder (the one loaded last is kept for the next
            call: :func:`prediction_run`), or ``None`` for the latest under ``runs/``.
        top_k: How many ranked classes each prediction carries.
        batch_size: Images decoded and predicted per step.
        tta: Test-time views averaged per image (1: none).
        threshold: Multi-label: the probability from which a label is predicted (default: the run's).

    Returns:
        One :class:`Prediction` per readable image.
    """
    return list(iter_predictions(paths, run, top_k, batch_size, tta, threshold))
