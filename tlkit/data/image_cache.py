"""The decoded-image cache: each split's images decoded once into a memory-mapped uint8 array.

The cache holds one ``.npy`` array per split, keyed by the split's files (names, sizes, times) and the
image size, so later epochs and later runs read images at memory speed instead of decoding them again,
and a dataset larger than memory is paged in as it is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlkit.config import Config
from tlkit.data.decode import decode_images
from tlkit.data.index import DatasetIndex
from tlkit.data.scan import listing
from tlkit.errors import TlkitError
from tlkit.io import (MANIFEST, RowFile, building, cache_folder, file_records, is_built, read_json, relative_name,
                      write_json)
from tlkit.locks import building_cache

log = logging.getLogger("tlkit")

#: Bumped when the decoded-image cache's layout or decoding changes.
IMAGE_CACHE_VERSION = 2
#: Images decoded per chunk when building the decoded-image cache.
DECODE_CHUNK = 256
#: The decoded images of a split, in its cache folder.
IMAGES_FILE = "images.npy"


@dataclass
class Split:
    """Decoded images of one split: ``images[i]`` is ``files[i]`` with label ``labels[i]``.

    ``images`` is memory-mapped from ``cache / IMAGES_FILE`` (the decoded-image cache).
    """

    images: np.ndarray
    labels: np.ndarray
    files: list[Path]
    skipped: dict[str, str]
    cache: Path


def load_split(index: DatasetIndex, split: str, config: Config, progress: bool = False) -> Split:
    """The decoded images of one split, from the decoded-image cache (built on first use).

    The cache holds one memory-mapped uint8 array per split, keyed by the split's files
    (names, sizes, mtimes) and the image size, so later epochs and later runs read
    images at memory speed instead of decoding them again, and a dataset larger than
    memory is paged in as it is read. Undecodable files are skipped and named.

    Raises:
        TlkitError: If a class has no image that can be decoded in the train split (a class is
            never trained on zero images); in another split this is a warning.
    """
    files = index.files[split]
    manifest = {"version": IMAGE_CACHE_VERSION, "root": str(index.root.resolve()),
                "files": file_records(files, index.root), "image_size": config.data.image_size}
    folder = cache_folder(config.runtime.cache_dir, "images", manifest)
    if is_built(folder):
        log.info("decoded %s images up to date, reusing %s", split, folder)
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with building_cache(folder):
            if not is_built(folder):  # else built meanwhile by the process waited for
                log.info("decoding the %d images of the %s split into %s", len(files), split, folder)
                _build_image_cache(files, index.root, manifest, folder, config.runtime.workers, progress)
    kept = read_json(folder / "kept.json")
    labels = index.labels[split][kept]
    lost_classes = index.present(index.labels[split]) & ~index.present(labels)
    for label in np.flatnonzero(lost_classes):
        lost = [path.name for path, of in zip(files, index.labels[split]) if index.present(of)[label]]
        problem = (f"class {index.class_names[label]!r} has no readable image in the {split} split of {index.root}: "
                   f"{listing(lost)} could not be decoded")
        if split == "train":  # a class is never trained on zero images
            raise TlkitError(f"{problem}; replace them, or remove the class folder")
        log.warning("%s; its %s figures will be missing", problem, split)
    skipped = {str(index.root / name): reason for name, reason in read_json(folder / "skipped.json").items()}
    images = np.load(folder / IMAGES_FILE, mmap_mode="r", allow_pickle=False)
    return Split(images, labels, [files[i] for i in kept], skipped, folder)


def _build_image_cache(files: list[Path], root: Path, manifest: dict, folder: Path, workers: int,
                       progress: bool) -> None:
    """Decode ``files`` a chunk at a time into an ``.npy`` file; skipped files leave no row."""
    size = manifest["image_size"]
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress else None
    with building(folder) as staging:
        kept: list[int] = []
        skipped: dict[str, str] = {}
        with RowFile(staging / "all.npy", (len(files), size, size, 3), np.uint8) as table:
            for start in range(0, len(files), DECODE_CHUNK):
                chunk = files[start:start + DECODE_CHUNK]
                images, ok, bad = decode_images(chunk, size, workers)
                table.write(len(kept), images)
                kept.extend(start + i for i in ok)
                skipped.update({relative_name(Path(path), root): reason for path, reason in bad.items()})
                if bar is not None:
                    bar.update(start + len(chunk))
            if len(kept) < len(files):  # keep only the decoded rows, copied a chunk at a time
                with RowFile(staging / IMAGES_FILE, (len(kept), size, size, 3), np.uint8) as compact:
                    for start in range(0, len(kept), DECODE_CHUNK):
                        compact.write(start, table.read(start, min(start + DECODE_CHUNK, len(kept))))
        if not kept:  # nothing to cache: fail now, and try again next time
            raise TlkitError(f"no readable images in {', '.join(sorted({str(p.parent) for p in files}))}")
        if len(kept) == len(files):
            (staging / "all.npy").replace(staging / IMAGES_FILE)
        else:
            (staging / "all.npy").unlink()
        write_json(staging / "kept.json", kept)
        write_json(staging / "skipped.json", skipped)
        write_json(staging / MANIFEST, manifest)
