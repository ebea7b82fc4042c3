"""Compute VGG16 conv-base features into a new cache folder: the part of :mod:`tlkit.features` that needs
an ML framework, imported only when a cache must be built.

Extraction streams: each split's images come from the decoded-image cache (see
:func:`tlkit.data.image_cache.load_split`) a chunk at a time, and their features are written into
an ``.npy`` file as they come (plain file I/O, so memory stays flat). For an augmented copy, each
image is randomly transformed first, on the device, seeded by the copy's number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import keras
import numpy as np

from tlkit.augment import AlwaysAugment, RandomAffine
from tlkit.backbone import build_base
from tlkit.backends.devices import Devices
from tlkit.config import Config
from tlkit.data.image_cache import IMAGES_FILE, load_split
from tlkit.data.index import DatasetIndex
from tlkit.features import FEATURES_FILE
from tlkit.io import MANIFEST, RowFile, building, is_built, relative_name, write_json
from tlkit.locks import building_cache
from tlkit.model import build_feature_extractor, precision_policy, predict_rows

log = logging.getLogger("tlkit")

#: Images pushed through the base per chunk while extracting (memory stays bounded by it).
CHUNK_IMAGES = 1024
#: Batch size of feature extraction: inference only, so larger than training's.
EXTRACT_BATCH = 128


def build_cache(index: DatasetIndex, config: Config, wanted: dict, folder: Path, verbose: int, devices: Devices,
                *, copy: int | None) -> bool:
    """Build the cache folder ``folder`` of manifest ``wanted`` unless another process built it meanwhile (it
    is locked while built); whether it was built meanwhile."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with building_cache(folder):
        if is_built(folder):  # built meanwhile by the process waited for
            return True
        copy_name = "" if copy is None else f" (augmented copy {copy + 1})"
        log.info("extracting features%s of %d images into %s", copy_name, len(wanted["files"]), folder)
        _compute(index, config, wanted, folder, verbose, devices, copy=copy)
    return False


def _compute(index: DatasetIndex, config: Config, wanted: dict, folder: Path, verbose: int,
             devices: Devices, *, copy: int | None) -> None:
    """Stream every split's decoded images through the base into a new cache folder, made whole at the end.

    Images come from the decoded-image caches (built here if missing), read a chunk at a time
    across all splits, and their features are written into the table as they are computed. For an
    augmented copy, each image is randomly transformed first, on the device, seeded by ``copy``.
    """
    row_of = {record[0]: row for row, record in enumerate(wanted["files"])}
    augment = None if copy is None else AlwaysAugment(RandomAffine.from_augment_config(config.augment, seed=copy))
    with precision_policy(wanted["precision"]), devices.local_scope():
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
