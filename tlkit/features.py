"""Extract VGG16 conv-base features once and cache them on disk.

The cache is keyed by a manifest of everything the features depend on: the
dataset folder, every file's relative path, size and mtime, the image size, the
weights' identity and the feature layer. The same manifest finds the same cache
folder (reused, and said so); any change finds a new one (recomputed). One row
per file of the whole dataset, so changing the split or its seed reuses the cache.

Extraction streams: each split's images come from the decoded-image cache (see
:func:`tlkit.data.image_cache.load_split`) a chunk at a time, and their features are written into
an ``.npy`` file as they come (plain file I/O, so memory stays flat).

Augmented copies (``--augmented-copies K``, offline augmentation): copy ``k`` holds the features of every
image randomly transformed as training augments it (:class:`~tlkit.augment.RandomAffine`, seeded by ``k``),
in a cache folder of its own keyed by the same manifest, the augmentation settings and ``k``. A head
trained on the plain features and on K copies gets augmentation's benefit at cached-feature speed; the
copies are extracted once, shared by every split, seed and later run, and K + 1 reuses the first K.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlkit.augment import AlwaysAugment, RandomAffine
from tlkit.backbone import FEATURE_LAYER, build_base, weights_identity
from tlkit.backends.devices import Devices, resolve
from tlkit.config import Config
from tlkit.errors import OptionError
from tlkit.data.image_cache import IMAGES_FILE, load_split
from tlkit.data.index import DatasetIndex
from tlkit.data.scan import scan
from tlkit.io import (MANIFEST, RowFile, building, cache_folder, file_records, is_built, read_json, relative_name,
                      write_json)
from tlkit.locks import building_cache
from tlkit.model import build_feature_extractor, precision_policy, predict_rows

log = logging.getLogger("tlkit")

CACHE_VERSION = 3
#: The feature table in a feature-cache folder: one row per file of the dataset.
FEATURES_FILE = "features.npy"
#: Images pushed through the base per chunk while extracting (memory stays bounded by it).
CHUNK_IMAGES = 1024
#: Batch size of feature extraction: inference only, so larger than training's.
EXTRACT_BATCH = 128


@dataclass
class FeatureSet:
    """Cached conv-base features of a dataset, looked up by split.

    Attributes:
        index: The dataset they were computed from.
        path: The cache folder.
        reused: True when the cache already existed and nothing was computed.
        skipped: ``{path: reason}`` for entries the scan rejected (``index.skipped``: broken or
            looping symlinks...) and files that could not be decoded.
    """

    index: DatasetIndex
    path: Path
    reused: bool
    skipped: dict[str, str]
    copies: tuple[Path, ...] = ()

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        """``(features, labels, files)`` of one split, undecodable files left out."""
        return self._rows(self.path, name)

    def augmented(self, name: str) -> np.ndarray:
        """The features of every augmented copy of one split's images, ``(copies, images, ...)``: row ``i`` of
        each copy is the image of row ``i`` of :meth:`split` (``(0, images, ...)`` without copies, read from
        nothing)."""
        if self.copies:
            return np.stack([self._rows(folder, name)[0] for folder in self.copies])
        table = np.load(self.path / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
        return np.empty((0, len(self._pairs(self.path, name)), *table.shape[1:]), table.dtype)

    def _rows(self, folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        table = np.load(folder / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
        pairs = self._pairs(folder, name)
        rows = np.array([row for row, _, _ in pairs], dtype=np.int64)
        return np.asarray(table[rows]), np.array([l for _, l, _ in pairs], np.int32), [p for _, _, p in pairs]

    def _pairs(self, folder: Path, name: str) -> list[tuple[int, object, Path]]:
        """``(table row, label, file)`` of each readable image of a split, in the split's order."""
        row_of = {record[0]: row for row, record in enumerate(read_json(folder / MANIFEST)["files"])}
        return [(row_of[relative_name(p, self.index.root)], label, p)
                for p, label in zip(self.index.files[name], self.index.labels[name]) if str(p) not in self.skipped]


def manifest(index: DatasetIndex, config: Config, copy: int | None = None) -> dict:
    """Everything the cached features depend on; for augmented copy ``copy``, the augmentation too."""
    files = sorted(index.all_files())
    augmented = {} if copy is None else {"augmented_copy": copy, "augment": dataclasses.asdict(config.augment)}
    return {
        "version": CACHE_VERSION,
        "root": str(index.root.resolve()),
        "files": file_records(files, index.root),
        "image_size": config.data.image_size,
        "weights": weights_identity(config.model.weights),
        "seed": config.data.seed if config.model.weights.lower() == "none" else None,
        "layer": FEATURE_LAYER,
        "precision": config.runtime.precision,
        **augmented,
    }


def extract(data: str | Path | DatasetIndex, config: Config | None = None, verbose: int = 1,
            devices: Devices | None = None) -> FeatureSet:
    """Compute (or reuse from the cache) the VGG16 features of every image of a dataset.

    Args:
        data: A dataset folder, or an index from :func:`tlkit.data.scan`.
        config: Settings (image size, weights, cache folder, ``fit.augmented_copies``...); defaults if omitted.
        verbose: 0 silent, 1 progress bars.
        devices: The devices to extract on (this process's); resolved from ``config.runtime.distribute``
            if omitted.

    Returns:
        The cached :class:`FeatureSet`, with its ``fit.augmented_copies`` augmented copies.

    Raises:
        TlkitError: On a bad dataset folder or weights path, or a class with no readable image in
            one of the splits (all its files there skipped): nothing is then cached but the
            decoded images.
        OptionError: For ``multiworker`` (only training spreads over machines).
    """
    config = config or Config()
    if devices is None:
        devices = resolve(one_machine(config.runtime.distribute))
    index = data if isinstance(data, DatasetIndex) else scan(data, config.data)
    folder, reused = _cached(index, config, verbose, devices)
    copies = tuple(_cached(index, config, verbose, devices, copy)[0] for copy in range(config.fit.augmented_copies))
    undecodable = {str(index.root / name): reason for name, reason in read_json(folder / "skipped.json").items()}
    return FeatureSet(index, folder, reused, {**index.skipped, **undecodable}, copies)


def _cached(index: DatasetIndex, config: Config, verbose: int, devices: Devices,
            copy: int | None = None) -> tuple[Path, bool]:
    """The cache folder of the plain features (or of augmented copy ``copy``), built unless it exists; and
    whether it existed."""
    wanted = manifest(index, config, copy)
    folder = cache_folder(config.runtime.cache_dir, "features", wanted)
    copy_name = "" if copy is None else f" (augmented copy {copy + 1})"
    reused = is_built(folder)
    if not reused:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with building_cache(folder):
            reused = is_built(folder)  # built meanwhile by the process waited for
            if not reused:
                log.info("extracting features%s of %d images into %s", copy_name, len(wanted["files"]), folder)
                _compute(index, config, wanted, folder, verbose, devices, copy=copy)
    if reused:
        log.info("feature cache%s up to date, reusing %s", copy_name, folder)
    return folder, reused


def _compute(index: DatasetIndex, config: Config, wanted: dict, folder: Path, verbose: int,
             devices: Devices, *, copy: int | None) -> None:
    """Stream every split's decoded images through the base into a new cache folder, made whole at the end.

    Images come from the decoded-image caches (built here if missing), read a chunk at a time
    across all splits, and their features are written into the table as they are computed. For an
    augmented copy, each image is randomly transformed first, on the device, seeded by ``copy``.
    """
    row_of = {record[0]: row for row, record in enumerate(wanted["files"])}
    augment = None if copy is None else AlwaysAugment(RandomAffine.from_augment_config(config.augment, seed=copy))
    with precision_policy(config.runtime.precision), devices.local_scope():
        base = build_base(config.model.weights, config.data.image_size, config.data.seed)
        extractor = build_feature_extractor(base, augment)
    skipped: dict[str, str] = {}
    with building(folder) as staging, ExitStack() as files:
        table = files.enter_context(RowFile(staging / FEATURES_FILE, (len(row_of), *extractor.output_shape[1:])))
        sources = []  # per split: its decoded images (read, not mapped: memory stays flat) and their table rows
        for name, paths in index.files.items():
            if not paths:  # --val-split 0 leaves val empty: nothing to decode
                continue
            split = load_split(index, name, config, progress=bool(verbose))
            skipped.update({relative_name(Path(path), index.root): reason for path, reason in split.skipped.items()})
            sources.append((files.enter_context(RowFile(split.cache / IMAGES_FILE)),
                            [row_of[relative_name(path, index.root)] for path in split.files]))
        bar = keras.utils.Progbar(sum(len(rows) for _, rows in sources), unit_name="image") if verbose else None
        done = 0
        for images, rows in _chunks(sources, CHUNK_IMAGES):
            for row, feature in zip(rows, predict_rows(extractor, images, EXTRACT_BATCH, devices)):
                table.write(row, feature[None])
            done += len(rows)
            if bar is not None:
                bar.update(done)
        write_json(staging / "skipped.json", skipped)
        write_json(staging / MANIFEST, wanted)


def _chunks(sources: list[tuple[RowFile, list[int]]], size: int) -> Iterator[tuple[np.ndarray, list[int]]]:
    """The images of every source in turn, ``size`` at a time (a chunk may span splits), with their rows."""
    positions = [(source, i) for source, (_, rows) in enumerate(sources) for i in range(len(rows))]
    for start in range(0, len(positions), size):
        part = positions[start:start + size]
        arrays, rows = [], []
        for source in dict.fromkeys(source for source, _ in part):
            local = [i for s, i in part if s == source]
            images, table_rows = sources[source]
            arrays.append(images.read(local[0], local[-1] + 1))
            rows.extend(table_rows[i] for i in local)
        yield np.concatenate(arrays), rows


def one_machine(distribute: str) -> str:
    """``distribute``, refused when it asks for several machines: only training spreads over them.

    Raises:
        OptionError: For ``multiworker``.
    """
    if distribute == "multiworker":
        raise OptionError("--distribute multiworker is for tlkit train (each machine would repeat the whole job); "
                          "here use mirrored for every device of this machine")
    return distribute
