"""Folder datasets: scan class sub-folders, split them, decode images once.

The data path, top to bottom:

1. :func:`scan` lists every file under each class folder of each split folder
   (``train/``, ``validation/`` or ``val/``, ``test/``), or of a plain folder of
   class folders, which it then splits stratified by class with a seed. Hidden
   entries are ignored (and said so); broken or looping symlinks are skipped and named.
2. :func:`decode_images` decodes files in parallel threads into one uint8 array
   (EXIF rotation applied, any mode converted to RGB, resized); files that cannot
   be decoded, or are above Pillow's decompression-bomb limit, are skipped and named.
3. :func:`load_split` gives one split's decoded images from the decoded-image cache
   (a memory-mapped uint8 array, built on first use) as a :class:`Split`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from PIL import Image, ImageOps

from tlkit.cache import MANIFEST, RowFile, building, cache_folder, file_records, is_built, relative_name
from tlkit.config import DataConfig
from tlkit.errors import TlkitError
from tlkit.files import read_json, write_json

if TYPE_CHECKING:
    from tlkit.distribute import Devices

log = logging.getLogger("tlkit")

SPLIT_NAMES = ("train", "val", "test")
#: Bumped when the decoded-image cache's layout or decoding changes.
IMAGE_CACHE_VERSION = 2
#: Images decoded per chunk when building the decoded-image cache.
DECODE_CHUNK = 256
#: The decoded images of a split, in its cache folder.
IMAGES_FILE = "images.npy"
#: Folder names accepted for each split of a pre-split dataset.
SPLIT_FOLDERS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
#: Pillow modes of 16-bit samples (16-bit PNG and TIFF open as ``I;16``, 16-bit PGM as ``I``): 0-65535.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
#: Names listed in one log line at most; the rest are counted.
LISTED_NAMES = 10


@dataclass(frozen=True)
class DatasetIndex:
    """The files of a dataset, by split, with integer labels into ``class_names``.

    Attributes:
        root: The dataset folder.
        class_names: Class folder names, sorted; a label is an index into it.
        files: Per split, the image paths (sorted within each class).
        labels: Per split, an int array of labels aligned with ``files``.
        presplit: True when the folder brought its own train/validation split.
        skipped: ``{path: reason}`` for entries rejected while scanning (broken or looping
            symlinks, folders that cannot be listed, special files); they are in no split.
    """

    root: Path
    class_names: tuple[str, ...]
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    presplit: bool
    skipped: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of files in each split."""
        return {split: len(paths) for split, paths in self.files.items()}

    def all_files(self) -> list[Path]:
        """Every file of every split, in split order (the order features are cached in)."""
        return [path for split in SPLIT_NAMES for path in self.files.get(split, [])]


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


def scan(root: str | Path, config: DataConfig) -> DatasetIndex:
    """Index a dataset folder: pre-split (``train/`` + ``validation/``|``val/`` [+ ``test/``]) or plain.

    A plain folder of class sub-folders is split here: per class, files are
    shuffled with ``config.seed`` and the first ``val_split`` / ``test_split``
    fractions go to validation / test, so every class is represented in every split
    and the same files give the same split each time.

    Hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``...) are ignored, listed in one
    INFO line; broken symlinks, symlink loops, folders that cannot be listed and special
    files are skipped with a warning naming each, and recorded in ``DatasetIndex.skipped``.

    Raises:
        TlkitError: If the folder is missing, holds no class folders or an empty one, or its
            splits' classes differ.
    """
    root = Path(root)
    if not root.exists():
        raise TlkitError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise TlkitError(f"dataset path is not a folder: {root}; give the folder that holds the class folders")
    walk = _Walk(root)
    try:
        class_names, by_split, presplit = _classes_by_split(root, walk, config)
    finally:
        walk.log_hidden()
    files, labels = {}, {}
    for split, classes in by_split.items():
        pairs = [(path, class_names.index(name)) for name in class_names for path in classes[name]]
        files[split] = [path for path, _ in pairs]
        labels[split] = np.array([label for _, label in pairs], dtype=np.int32)
    return DatasetIndex(root, class_names, files, labels, presplit, walk.skipped)


def require_classes(index: DatasetIndex) -> None:
    """Check that a dataset has the two or more classes a classifier needs.

    Raises:
        TlkitError: Naming the folder and how many class folders it has.
    """
    if len(index.class_names) < 2:
        raise TlkitError(f"{index.root} has {len(index.class_names)} class folder(s); a classifier needs at "
                         "least 2: add a folder of images per class")


def _classes_by_split(root: Path, walk: _Walk, config: DataConfig
                      ) -> tuple[tuple[str, ...], dict[str, dict[str, list[Path]]], bool]:
    """``(class names, split -> class -> files, presplit)``: the folder's own split, or one drawn here."""
    split_dirs = _find_split_dirs(root)
    if not split_dirs:
        by_class = _class_files(root, walk)
        return tuple(sorted(by_class)), _stratified_split(by_class, config), False
    if "train" not in split_dirs or "val" not in split_dirs:
        raise TlkitError(
            f"{root} has {', '.join(d.name for d in split_dirs.values())}/ but a split dataset needs "
            "both train/ and validation/ (or val/)"
        )
    for folder in split_dirs.values():  # entered first: a symlink into one ends there
        walk.enter(folder)
    by_split = {split: _class_files(folder, walk) for split, folder in split_dirs.items()}
    class_names = tuple(sorted(by_split["train"]))
    for split, classes in by_split.items():
        if set(classes) != set(class_names):
            raise TlkitError(
                f"classes of {split_dirs[split].name}/ ({', '.join(sorted(classes))}) differ from "
                f"train/ ({', '.join(class_names)}); every split needs the same class folders"
            )
    return class_names, by_split, True


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found


def _class_files(folder: Path, walk: _Walk) -> dict[str, list[Path]]:
    """Class name -> sorted files under it (recursively), for each sub-folder of ``folder``."""
    # Every class folder is entered before any is walked, so that no symlink leads one class into another.
    subfolders = [path for path, info in walk.entries(folder) if stat.S_ISDIR(info.st_mode) and walk.enter(path, info)]
    classes = {path.name: walk.files(path) for path in subfolders}
    if not classes:
        raise TlkitError(f"no class sub-folders in {folder}; expected one folder of images per class")
    empty = [name for name, paths in classes.items() if not paths]
    if empty:
        raise TlkitError(f"class folder(s) with no files in {folder}: {', '.join(empty)}; "
                         "add images to them or remove them")
    return classes


class _Walk:
    """Lists the files under a folder, recursively, keeping a record of what it leaves out.

    Hidden entries (a dot-file, a dot-folder and all inside it) are ignored and noted in
    ``hidden``. Broken symlinks, symlink loops (a symlink to itself, or to a folder it is
    inside), folders that cannot be listed and special files (FIFOs, sockets, devices) are
    skipped, with a warning, into ``skipped``. Symlinks to other folders are followed, but
    each real folder is entered once: a second way into one is skipped too.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: dict[str, str] = {}
        self.hidden: list[Path] = []
        self.entered: set[tuple[int, int]] = set()
        self.enter(root)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped[str(path)] = reason
        log.warning("skipped %s (%s)", path, reason)

    def enter(self, folder: Path, info: os.stat_result | None = None) -> bool:
        """Mark ``folder`` entered; False, and skipped, when it already was (reached again through a symlink)."""
        info = folder.stat() if info is None else info
        if (info.st_dev, info.st_ino) in self.entered:
            self.skip(folder, f"reached again through a symlink: {os.path.realpath(folder)} is already scanned")
            return False
        self.entered.add((info.st_dev, info.st_ino))
        return True

    def entries(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        """The visible entries of ``folder`` with their status (symlinks followed), sorted by name."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            self.skip(folder, f"cannot list the folder: {exc.strerror}")
            return []
        found = []
        for name in names:
            path = folder / name
            if name.startswith("."):
                self.hidden.append(path)
                continue
            try:
                info = path.stat()
            except OSError as exc:
                self.skip(path, _unreachable(path, exc))
                continue
            if stat.S_ISDIR(info.st_mode) and _leads_back(path, folder):
                self.skip(path, f"symlink loop: leads back to {os.path.realpath(path)}, a folder it is inside")
                continue
            found.append((path, info))
        return found

    def files(self, folder: Path) -> list[Path]:
        """Every file under ``folder``, recursively, sorted."""
        found = []
        for path, info in self.entries(folder):
            if stat.S_ISDIR(info.st_mode):
                if self.enter(path, info):
                    found.extend(self.files(path))
            elif stat.S_ISREG(info.st_mode):
                found.append(path)
            else:
                self.skip(path, "not a regular file (a FIFO, socket or device)")
        return sorted(found)

    def log_hidden(self) -> None:
        """One INFO line naming the hidden entries ignored, so that nothing is left out silently."""
        if self.hidden:
            names = [path.relative_to(self.root).as_posix() for path in self.hidden]
            log.info("ignored %d hidden file(s)/folder(s) in %s: %s", len(names), self.root, _listing(names))


def _leads_back(path: Path, folder: Path) -> bool:
    """True when ``path``, in ``folder``, resolves to ``folder`` or a folder holding it: a symlink loop."""
    target = os.path.realpath(path)
    return os.path.commonpath([target, os.path.realpath(folder)]) == target


def _unreachable(path: Path, exc: OSError) -> str:
    """Why ``path``, listed in its folder, cannot be followed (usually a bad symlink)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: too many levels of symbolic links"
    if path.is_symlink() and exc.errno == errno.ENOENT:
        return f"broken symlink: its target {os.readlink(path)} does not exist"
    return f"cannot read: {exc.strerror}"


def _listing(names: list[str]) -> str:
    """The first :data:`LISTED_NAMES` names, then how many more."""
    shown = ", ".join(names[:LISTED_NAMES])
    return shown if len(names) <= LISTED_NAMES else f"{shown} and {len(names) - LISTED_NAMES} more"


def _stratified_split(by_class: dict[str, list[Path]], config: DataConfig) -> dict[str, dict[str, list[Path]]]:
    """Per class: rank files by a seeded hash of their name, then cut off the validation and test fractions.

    Ranking by hash rather than shuffling keeps the split stable when files are added or removed:
    each file keeps its rank, so at most the files near a cut change side.
    """
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    if config.test_split > 0:
        splits["test"] = {}
    for name in sorted(by_class):
        paths = by_class[name]
        shuffled = sorted(paths, key=lambda path: _rank(config.seed, path.name))
        n_val = _share(len(paths), config.val_split)
        n_test = _share(len(paths), config.test_split)
        if len(paths) - n_val - n_test < 1:
            raise TlkitError(f"class {name!r} has {len(paths)} file(s): too few to split off validation/test")
        splits["val"][name] = sorted(shuffled[:n_val])
        if "test" in splits:
            splits["test"][name] = sorted(shuffled[n_val:n_val + n_test])
        splits["train"][name] = sorted(shuffled[n_val + n_test:])
    return splits


def _rank(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()


def _share(count: int, fraction: float) -> int:
    """Files a fraction of ``count`` takes: rounded, and at least one when the fraction is not 0."""
    return 0 if fraction == 0 else max(1, round(count * fraction))


class ImageTooLarge(OSError):
    """An image above Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), refused undecoded."""


#: Held around ``Image.open``: silencing Pillow's decompression-bomb warning there sets a process-wide
#: warnings filter, which decoding threads must not set and restore over one another.
_OPEN_LOCK = threading.Lock()


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """Decode one image file to a ``(image_size, image_size, 3)`` uint8 RGB array.

    EXIF orientation is applied; palette, grayscale, RGBA, CMYK and 16-bit images are
    converted to 8-bit RGB (transparent areas become white; 16-bit samples are scaled
    from 0-65535 whatever their values); animated images give their first frame. The
    image is resized to the square, as Keras's ``flow_from_directory`` does, without
    keeping the aspect ratio.

    Raises:
        ImageTooLarge: If the image has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``
            (read at each call); nothing of it is decoded.
        OSError: If the file cannot be read or decoded (PIL's errors included).
    """
    rgb = read_rgb(path, draft=image_size)
    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def read_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """An image file as an 8-bit RGB Pillow image, as :func:`decode_image` sees it before resizing.

    Args:
        path: The image file.
        draft: A JPEG is decoded at a reduced scale no smaller than this side, when given.

    Raises:
        ImageTooLarge, OSError: As :func:`decode_image`.
    """
    with _open_image(path) as img:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))  # decode JPEGs at a reduced scale when possible
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _open_image(path: str | Path) -> Image.Image:
    """``Image.open`` (which reads only the header), refusing an image above the pixel limit.

    Pillow warns about an image above ``MAX_IMAGE_PIXELS`` and raises above twice that;
    both become an :class:`ImageTooLarge` that says so, and no warning is printed.
    """
    limit = Image.MAX_IMAGE_PIXELS
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:  # its message is the only place Pillow gives the size
            found = re.search(r"(\d+) pixels", str(exc))
            raise _too_large(found[1] if found else f"more than {2 * limit}", limit) from None
    if limit is not None and img.width * img.height > limit:
        img.close()
        raise _too_large(str(img.width * img.height), limit)
    return img


def _too_large(pixels: str, limit: int) -> ImageTooLarge:
    return ImageTooLarge(f"image has {pixels} pixels, above the limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS), "
                         "so it was not decoded (a decompression bomb?)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit samples scaled by 255/65535, transparency over white."""
    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_images(
    paths: list[Path], image_size: int, workers: int = 1
) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Decode files in parallel threads into one uint8 array.

    Args:
        paths: Image files.
        image_size: Side of the square each image is resized to.
        workers: Decoding threads (Pillow releases the GIL while decoding).

    Returns:
        ``(images, kept, skipped)``: the decoded images stacked, the indices into
        ``paths`` that decoded, and ``{path: reason}`` for each file that did not.
    """
    images = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: dict[str, str] = {}

    def work(i: int) -> None:
        try:
            images[i] = decode_image(paths[i], image_size)
            ok[i] = True
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  any failure of one file skips that file, never the run
            skipped[str(paths[i])] = f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(paths))))
    for path, reason in skipped.items():
        log.warning("skipped %s (not a readable image: %s)", path, reason)
    kept = [int(i) for i in np.flatnonzero(ok)]
    return images[ok], kept, skipped


def load_split(index: DatasetIndex, split: str, config: DataConfig, progress: bool = False) -> Split:
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
    recipe = {"version": IMAGE_CACHE_VERSION, "root": str(index.root.resolve()),
              "files": file_records(files, index.root), "image_size": config.image_size}
    folder = cache_folder(config.cache_dir, "images", recipe)
    if is_built(folder):
        log.info("decoded %s images up to date, reusing %s", split, folder)
    else:
        log.info("decoding the %d images of the %s split into %s", len(files), split, folder)
        _build_image_cache(files, index.root, recipe, folder, config, progress)
    kept = read_json(folder / "kept.json")
    labels = index.labels[split][kept]
    for label, name in enumerate(index.class_names):
        if label not in labels and label in index.labels[split]:
            lost = [path.name for path, of in zip(files, index.labels[split]) if of == label]
            problem = (f"class {name!r} has no readable image in the {split} split of {index.root}: "
                       f"{_listing(lost)} could not be decoded")
            if split == "train":  # a class is never trained on zero images
                raise TlkitError(f"{problem}; replace them, or remove the class folder")
            log.warning("%s; its %s figures will be missing", problem, split)
    skipped = {str(index.root / name): reason for name, reason in read_json(folder / "skipped.json").items()}
    images = np.load(folder / IMAGES_FILE, mmap_mode="r", allow_pickle=False)
    return Split(images, labels, [files[i] for i in kept], skipped, folder)


def _build_image_cache(files: list[Path], root: Path, recipe: dict, folder: Path, config: DataConfig,
                       progress: bool) -> None:
    """Decode ``files`` a chunk at a time into an ``.npy`` file; skipped files leave no row."""
    size = config.image_size
    bar = keras.utils.Progbar(len(files), unit_name="image") if progress else None
    with building(folder) as staging:
        kept: list[int] = []
        skipped: dict[str, str] = {}
        with RowFile(staging / "all.npy", (len(files), size, size, 3), np.uint8) as table:
            for start in range(0, len(files), DECODE_CHUNK):
                chunk = files[start:start + DECODE_CHUNK]
                images, ok, bad = decode_images(chunk, size, config.workers)
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
        write_json(staging / MANIFEST, recipe)


class Batches(keras.utils.PyDataset):
    """Batches of an array (a memory-mapped image cache included) and its labels, read as they are needed.

    Args:
        images: ``(n, ...)`` array; only the rows of one batch are read at a time.
        labels: Targets aligned with ``images``.
        batch_size: Rows per batch.
        shuffle: Visit rows in a new random order every epoch (rows of a batch are read in order).
        seed: Seed of the shuffling.
        epoch: The epoch the first batches belong to (a resumed run starts past 0).
        weights: A sample weight per row (class weights), given with each batch; none if omitted.
        devices: The devices a batch is spread over (:meth:`tlkit.distribute.Devices.share`): each
            batch padded to a multiple of them, and this process's part of it; one device if omitted.
        whole_epoch: On several devices, scale the real rows of every batch by one factor, the
            epoch's padded rows over its real rows, so that Keras's mean over the epoch (each batch
            weighed by its rows, padding included) is the real rows' mean: for validation. Otherwise
            each batch's real rows are scaled by its own padded / real, so that each step's gradient
            is the mean over its real rows: for training.

    Each epoch's order and random stream are drawn from ``(seed, epoch)`` alone, ``epoch``
    counting Keras's ``on_epoch_end`` calls, so a run resumed at some epoch sees the batches an
    uninterrupted run would have seen. (On TensorFlow, Keras reads a pass ahead before training,
    so there epoch k draws from ``k + 1``: the same in both runs.)
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, epoch: int = 0, weights: np.ndarray | None = None, devices: Devices | None = None,
                 whole_epoch: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size, self.shuffle, self.seed = images, labels, batch_size, shuffle, seed
        self.weights, self.devices = weights, devices
        spread = devices is not None and whole_epoch and len(images) > 0
        self.factor = devices.epoch_factor(len(images), batch_size) if spread else None
        self.begin_epoch(epoch)

    def begin_epoch(self, epoch: int) -> None:
        """Draw ``epoch``'s order (and random stream, ``self.rng``) from the seed and the epoch."""
        self.epoch = epoch
        self.rng = np.random.default_rng([self.seed, epoch])
        self.order = self.rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        """The rows of batch ``index``, sorted so that a memory-mapped array is read forwards."""
        return np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])

    def share(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The rows of batch ``index`` this process feeds, and their loss-weight factors (``None``: all 1)."""
        rows = self.rows(index)
        return (rows, None) if self.devices is None else self.devices.share(rows, self.factor)

    def __getitem__(self, index: int):
        rows, factors = self.share(index)
        return self.pack(rows, self.images[rows], factors)

    def pack(self, rows: np.ndarray, images: np.ndarray, factors: np.ndarray | None = None) -> tuple:
        """A batch of ``images``: ``(images, labels)``, plus sample weights when there are any: the rows'
        weights times ``factors``."""
        if self.weights is None and factors is None:
            return images, self.labels[rows]
        weights = np.ones(len(rows), np.float32) if self.weights is None else self.weights[rows]
        return images, self.labels[rows], weights if factors is None else weights * factors

    def on_epoch_end(self) -> None:
        self.begin_epoch(self.epoch + 1)


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into a list of files, for prediction.

    Inside folders, hidden entries are ignored (one INFO line names them) and broken or
    looping symlinks are skipped with a warning, as :func:`scan` does.

    Raises:
        TlkitError: If a path does not exist, or nothing is found at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walk = _Walk(path)
            found.extend(walk.files(path))
            walk.log_hidden()
        elif path.is_file():
            found.append(path)
        else:
            raise TlkitError(f"no such file or folder: {path}")
    if not found:
        raise TlkitError(f"no files found in {', '.join(map(str, paths))}; give image files or folders holding some")
    return found
