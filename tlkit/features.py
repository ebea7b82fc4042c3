"""Extract VGG16 conv-base features once and cache them on disk.

The cache is keyed by a manifest of everything the features depend on: the
dataset folder, every file's relative path, size and mtime, the image size, the
weights' identity, the feature layer and the compute precision. The same manifest finds the same cache
folder (reused, and said so); any change finds a new one (recomputed). One row
per file of the whole dataset, so changing the split or its seed reuses the cache.

Finding that every cache is current needs only the manifests, file stats and the caches' checksums: no ML
framework is imported then, and ``tlkit extract`` on unchanged data answers at once. Building a cache is
:mod:`tlkit.extraction`'s job, imported when one is missing.

Augmented copies (``--augmented-copies K``, offline augmentation): copy ``k`` holds the features of every
image randomly transformed as training augments it (:class:`~tlkit.augment.RandomAffine`, seeded by ``k``),
in a cache folder of its own keyed by the same manifest, the augmentation settings and ``k``. A head
trained on the plain features and on K copies gets augmentation's benefit at cached-feature speed; the
copies are extracted once, shared by every split, seed and later run, and K + 1 reuses the first K.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlkit.backbone import FEATURE_LAYER, weights_identity
from tlkit.config import Config
from tlkit.data.index import DatasetIndex
from tlkit.data.scan import scan
from tlkit.errors import OptionError
from tlkit.hardware import resolve_precision
from tlkit.io import MANIFEST, cache_folder, file_records, is_built, read_json, relative_name

if TYPE_CHECKING:
    from tlkit.backends.devices import Devices

log = logging.getLogger("tlkit")

CACHE_VERSION = 3
#: The feature table in a feature-cache folder: one row per file of the dataset.
FEATURES_FILE = "features.npy"


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

    def pooled(self, name: str, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        """As :meth:`split`, each feature map averaged over its positions into one float32 vector, read a chunk
        of rows at a time (memory holds the vectors, never the maps)."""
        table = np.load(self.path / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
        pairs = self._pairs(self.path, name)
        rows = np.array([row for row, _, _ in pairs], dtype=np.int64)
        axes = tuple(range(1, table.ndim - 1))
        vectors = np.zeros((len(rows), table.shape[-1]), np.float32)
        for start in range(0, len(rows), chunk):
            maps = np.asarray(table[rows[start:start + chunk]], dtype=np.float32)
            vectors[start:start + chunk] = maps.mean(axis=axes) if axes else maps
        return vectors, np.array([l for _, l, _ in pairs], np.int32), [p for _, _, p in pairs]

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
        "weights": weights_identity(config.model.weights, remember_in=Path(config.runtime.cache_dir)),
        "seed": config.data.seed if config.model.weights.lower() == "none" else None,
        "layer": FEATURE_LAYER,
        "precision": resolve_precision(config.runtime.precision).policy,
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
        one_machine(config.runtime.distribute)
    index = data if isinstance(data, DatasetIndex) else scan(data, config.data)
    wanted = [manifest(index, config, copy) for copy in (None, *range(config.fit.augmented_copies))]
    folders = [cache_folder(config.runtime.cache_dir, "features", manifest_) for manifest_ in wanted]
    reused = [is_built(folder) for folder in folders]
    if not all(reused):  # only now the framework: the devices, the base, the extraction
        from tlkit.backends import load_quietly

        load_quietly()
        from tlkit.backends.devices import resolve
        from tlkit.extraction import build_cache

        if devices is None:
            devices = resolve(config.runtime.distribute)
        for copy, (manifest_, folder) in enumerate(zip(wanted, folders)):
            if not reused[copy]:
                reused[copy] = build_cache(index, config, manifest_, folder, verbose, devices,
                                           copy=copy - 1 if copy else None)
    for copy, (folder, was_there) in enumerate(zip(folders, reused)):
        if was_there:
            log.info("feature cache%s up to date, reusing %s", f" (augmented copy {copy})" if copy else "", folder)
    undecodable = {str(index.root / name): reason for name, reason in read_json(folders[0] / "skipped.json").items()}
    return FeatureSet(index, folders[0], reused[0], {**index.skipped, **undecodable}, tuple(folders[1:]))


def one_machine(distribute: str) -> str:
    """``distribute``, refused when it asks for several machines: only training spreads over them.

    Raises:
        OptionError: For ``multiworker``.
    """
    if distribute == "multiworker":
        raise OptionError("--distribute multiworker is for tlkit train (each machine would repeat the whole job); "
                          "here use mirrored for every device of this machine")
    return distribute
