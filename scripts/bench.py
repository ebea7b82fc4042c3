"""Throughput of tlkit against the classic recipe, measured side by side in one process.

The classic recipe is Keras's ImageDataGenerator ``flow_from_directory`` with ``rescale=1/255``
feeding the same VGG16, at the same image size and batch size. For each stage, images/s of each
side and the ratio tlkit/classic:

Extraction runs at tlkit's extraction batch size (128) on both sides; training at ``--batch-size``.

- ``extract_cold``: features of every training image, starting from the JPEG files
  (tlkit: parallel decode into its decoded-image cache, then VGG16).
- ``extract_warm``: the same from tlkit's decoded-image cache (the feature cache cleared);
  the classic side has no cache and decodes again.
- ``extract_cached``: tlkit's second extract of unchanged data (feature cache hit), against the
  classic side's plain re-run.
- ``frozen_epoch``: one epoch of training with the base frozen and the classic augmentation.
- ``finetune_epoch``: one epoch with ``block5_conv1`` and up unfrozen.

Host stages (``feed``, ``decode``, ``transfer``; no model in the way), each in images/s, MB/s and as a
fraction of this machine's memory bandwidth (a plain numpy copy, measured in the same run):

- ``feed``: a decoded-image cache (uint8, memory-mapped) -> shuffled batches in a new order each epoch
  (:class:`tlkit.data.batches.Batches`, read in the training loop as tlkit trains) -> Keras's own data
  adapter for the backend -> arrays on the device, as ``fit`` takes them. The first epoch pages the cache in;
  the best of the next three counts. A second row reads ahead with Keras's threads, for comparison.
- ``decode``: 500x375 JPEGs to the image size with tlkit's decoder and its threads (JPEG draft mode,
  antialiased resize), against plain Pillow ``open().convert("RGB").resize()`` on the same files in one
  thread; images/s per core of each.
- ``transfer``: one batch moved to the device as uint8 (what tlkit sends) and as float32 (4x the bytes).

The ``audit`` stage (tlkit only, no images) times ``tlkit audit``'s similarity searches over
``--audit-vectors`` synthetic 512-d feature vectors: the near-duplicate pairs (upper triangle, blocked), the
five searches of as many 16x16 thumbnails (as they are, mirrored, three crops: every column) and the
similarity to each class (outliers), with the peak memory numpy allocated, against a full n x n matrix's.

The ``predict`` stage (tlkit only) runs ``tlkit predict`` in a fresh process over each of
``--predict-images`` JPEGs and reports its images/s and peak resident memory: streaming in
batches, memory must not grow with the count.

Training epochs are timed from the first to the last training batch of the second epoch, so
compilation and validation are left out on both sides. The dataset is made here: realistic
500x375 JPEGs, synthesised, or cut from the photos of ``--source`` (any folder of images).
Throughput does not depend on the weights' values, so ``--weights none`` is as good as any.

CPU (a few minutes)::

    python scripts/bench.py --images 320 --image-size 96

GPU machine, JAX backend (see README, "Benchmark")::

    KERAS_BACKEND=jax python scripts/bench.py --images 4000 --batch-size 64 --json bench.json

tlkit's side trains and extracts on ``--distribute``'s devices (``auto``: every GPU of a machine with
several); the classic side always on one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402

import tlkit  # noqa: E402
from tlkit.backends.devices import resolve  # noqa: E402
from tlkit.backbone import build_base, set_trainable_from  # noqa: E402
from tlkit.config import PRECISIONS  # noqa: E402
from tlkit.extraction import EXTRACT_BATCH  # noqa: E402

CLASSES = ("class_a", "class_b")
JPEG_SIZE = (500, 375)
VALIDATION_IMAGES = 16  # per class: tlkit trains with a validation split; it is not timed


def make_dataset(root: Path, count: int, source: Path | None, seed: int = 0) -> Path:
    """``root/train/<class>/*.jpg`` (``count`` images) and a small ``root/val``: 500x375 JPEGs, quality 90."""
    photos = sorted(p for p in source.rglob("*") if p.is_file()) if source else []
    jobs = []
    for split, per_class in (("train", count // len(CLASSES)), ("val", VALIDATION_IMAGES)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(folder / f"{i:05d}.jpg", zlib.crc32(f"{split}/{c}/{i}".encode()), c) for i in range(per_class)]

    def write(job):
        path, job_seed, label = job
        rng = np.random.default_rng([seed, job_seed])
        image = _cut_from(photos, rng) if photos else _synthesise(rng, label)
        image.save(path, quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write, jobs))
    return root


def _cut_from(photos: list[Path], rng: np.random.Generator) -> Image.Image:
    """A random crop of a random photo, scaled to 500x375."""
    while True:
        try:
            with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
                photo = photo.convert("RGB")
                w, h = photo.size
                cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return photo.crop((x, y, x + cw, y + ch)).resize(JPEG_SIZE, Image.Resampling.BILINEAR)
        except OSError:
            continue


def _synthesise(rng: np.random.Generator, label: int) -> Image.Image:
    """A photo-like picture: a smooth colour field with soft shapes and sensor noise (JPEG-sized entropy)."""
    w, h = JPEG_SIZE
    corners = rng.uniform(0, 255, (2, 2, 3))
    ys, xs = np.mgrid[0:h, 0:w]
    u, v = (xs / w)[..., None], (ys / h)[..., None]
    field = (corners[0, 0] * (1 - u) * (1 - v) + corners[0, 1] * u * (1 - v)
             + corners[1, 0] * (1 - u) * v + corners[1, 1] * u * v)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, 90)
        box = (x - r, y - r, x + r, y + r)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if label == 0 else pen.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_images(folder: Path, count: int, seed: int = 1) -> list[Path]:
    """``count`` synthesised 500x375 JPEGs in sub-folders of 1,000; returns the sub-folders."""
    parts = [folder / f"part-{i:03d}" for i in range(-(-count // 1000))]

    def write(i: int) -> None:
        path = parts[i // 1000] / f"{i:06d}.jpg"
        if not path.exists():
            _synthesise(np.random.default_rng([seed, i]), i % 2).save(path, quality=90)

    for part in parts:
        part.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write, range(count)))
    return parts


def predict_in_process(paths: list[Path], run: Path, out: Path) -> dict:
    """Run ``tlkit predict`` on ``paths`` in a new process; its images/s and peak resident memory."""
    start = time.perf_counter()
    with open(out, "w") as stdout:
        process = subprocess.Popen([sys.executable, "-c", "from tlkit.cli import main; main()", "predict",
                                    *map(str, paths), "--run", str(run), "--quiet"],
                                   stdout=stdout, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    printed = sum(1 for _ in open(out))
    if status != 0:
        raise SystemExit(f"tlkit predict failed (status {status})")
    return {"images": printed, "seconds": round(seconds, 1), "images_per_s": round(printed / seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # ru_maxrss is in KiB on Linux


class EpochTimer(keras.callbacks.Callback):
    """Seconds from the first to the last training batch of each epoch, and the batches seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.batches: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.count, self.end = None, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()
        self.count += 1

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self.end - self.start)
        self.batches.append(self.count)


# ---------------------------------------------------------------------------------------------------- host stages


def copy_bandwidth(megabytes: int = 256, repeat: int = 5) -> float:
    """This machine's memory bandwidth in MB/s: bytes copied per second by ``np.copyto`` (best of ``repeat``)."""
    source = np.ones(megabytes * 2**20, np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return source.nbytes / best / 1e6


def host_row(stage: str, images: int, seconds: float, image_bytes: int, bandwidth: float, note: str) -> dict:
    rate = images / seconds
    megabytes = rate * image_bytes / 1e6
    return {"stage": stage, "images_per_s": round(rate, 1), "mb_per_s": round(megabytes, 1),
            "bandwidth_fraction": round(megabytes / bandwidth, 4), "note": note}


def feed_stage(work: Path, count: int, size: int, batch: int, threads: int, bandwidth: float) -> dict:
    """Images/s from a memory-mapped uint8 cache to arrays on the device, through tlkit's batches and Keras's
    data adapter, as ``fit`` reads them (the best of three epochs after the first, which pages the cache in)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from tlkit.data.batches import Batches

    path = work / f"feed-{count}x{size}.npy"
    if not path.exists():
        rows = np.lib.format.open_memmap(path, "w+", np.uint8, (count, size, size, 3))
        for start in range(0, count, 512):
            rows[start:start + 512] = np.random.default_rng(start).integers(0, 256, rows[start:start + 512].shape)
        rows.flush()
        del rows
    images = np.load(path, mmap_mode="r")
    batches = Batches(images, np.zeros(count, np.float32), batch, shuffle=True, seed=0, workers=threads)
    adapter = PyDatasetAdapter(batches, shuffle=False)
    to_device = _device_batches(adapter)
    times = []
    for _ in range(4):
        adapter.on_epoch_begin()
        start = time.perf_counter()
        seen = sum(len(x) for x in to_device())
        times.append(time.perf_counter() - start)
        adapter.on_epoch_end()
    seconds = min(times[1:])
    assert seen == count
    name = "feed" if threads == 1 else f"feed_{threads}_threads"
    how = "read in the training loop" if threads == 1 else f"{threads} Keras threads reading ahead"
    return host_row(name, count, seconds, size * size * 3, bandwidth,
                    f"batch {batch}, {how}, {keras.backend.backend()} adapter")


def _device_batches(adapter):
    """A function iterating ``adapter``'s batches as the backend's trainer does, each image batch on the device
    (ready when yielded)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def batches():
            for x, *_ in adapter.get_jax_iterator():
                yield jax.device_put(x).block_until_ready()
    elif backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

        def batches():
            for x, *_ in adapter.get_torch_dataloader():
                yield torch.as_tensor(x).to(device, non_blocking=False)
    else:
        dataset = adapter.get_tf_dataset()

        def batches():
            for x, *_ in dataset:
                yield x
    return batches


def decode_stage(work: Path, count: int, size: int, workers: int, bandwidth: float) -> list[dict]:
    """tlkit's threaded decoder against plain single-threaded Pillow, on the same 500x375 JPEGs."""
    from tlkit.data.decode import decode_images

    files = sorted(path for part in make_images(work / "decode", count, seed=2) for path in part.glob("*.jpg"))
    for path in files:  # both sides read from the page cache: decoding is what is timed
        path.read_bytes()
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((size, size)))
    plain = time.perf_counter() - start
    start = time.perf_counter()
    _, decoded, _ = decode_images(files, size, workers)
    ours = time.perf_counter() - start
    threads = min(workers, os.cpu_count() or 1)
    image_bytes = size * size * 3
    rows = [host_row("decode_pillow", len(files), plain, image_bytes, bandwidth, "1 thread; per core: the same"),
            host_row("decode_tlkit", len(decoded), ours, image_bytes, bandwidth,
                     f"{workers} worker thread(s) on {os.cpu_count()} core(s); per core: "
                     f"{len(decoded) / ours / threads:.1f} images/s")]
    return rows


def transfer_stage(size: int, batch: int, bandwidth: float, repeat: int = 20) -> list[dict]:
    """One batch to the device, uint8 against float32 (best of ``repeat``), images/s and MB/s moved."""
    rows = []
    for dtype in (np.uint8, np.float32):
        x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3)).astype(dtype)
        move = _mover()
        move(x)
        best = min(_timed(move, x) for _ in range(repeat))
        rows.append(host_row(f"transfer_{np.dtype(dtype).name}", batch, best, x[0].nbytes, bandwidth,
                             f"batch {batch}, {x.nbytes / 1e6:.1f} MB, to {_device_name()}"))
    return rows


def _timed(move, x) -> float:
    start = time.perf_counter()
    move(x)
    return time.perf_counter() - start


def _mover():
    """A function copying a numpy batch onto the backend's first device, returning when it is there."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return lambda x: jax.device_put(x).block_until_ready()
    if backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return lambda x: torch.tensor(x)  # a copy (as_tensor would share the numpy memory)
        def move(x):
            moved = torch.as_tensor(x).to(device)
            torch.cuda.synchronize()
            return moved

        return move
    import tensorflow as tf

    return tf.constant  # a host copy into a tensor (TensorFlow is not on the GPU machine: CPU only here)


def _device_name() -> str:
    return _devices()[0]


# ---------------------------------------------------------------------------------------------- the classic recipe


def classic_generator(folder: Path, size: int, batch: int, augment: bool, shuffle: bool):
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    settings = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
                    zoom_range=0.2, horizontal_flip=True, fill_mode="nearest") if augment else {}
    return ImageDataGenerator(rescale=1.0 / 255, **settings).flow_from_directory(
        folder, target_size=(size, size), batch_size=batch, class_mode="binary", shuffle=shuffle)


def classic_extract(train: Path, size: int, batch: int, weights: str) -> float:
    """The whole classic extraction job, building the model included (as tlkit's side is timed)."""
    start = time.perf_counter()
    base = build_base(weights, size)
    generator = classic_generator(train, size, batch, augment=False, shuffle=False)
    base.predict(generator, verbose=0)  # batch: tlkit's EXTRACT_BATCH, so both sides use the same
    return generator.samples / (time.perf_counter() - start)


def classic_epoch(train: Path, size: int, batch: int, weights: str, unfreeze_from: str | None) -> float:
    base = build_base(weights, size)
    set_trainable_from(base, unfreeze_from)
    model = keras.Sequential([keras.Input((size, size, 3)), base, keras.layers.Flatten(),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.RMSprop(2e-5 if unfreeze_from is None else 1e-5),
                  loss="binary_crossentropy", metrics=["accuracy"])
    generator = classic_generator(train, size, batch, augment=True, shuffle=True)
    timer = EpochTimer()
    model.fit(generator, epochs=2, callbacks=[timer], verbose=0)
    return timer.batches[-1] * batch / timer.seconds[-1]


# ---------------------------------------------------------------------------------------------------------- tlkit


def tlkit_extract(data: Path, config: tlkit.Config, clear: tuple[str, ...]) -> float:
    for kind in clear:
        shutil.rmtree(Path(config.runtime.cache_dir) / kind, ignore_errors=True)
    start = time.perf_counter()
    features = tlkit.extract(data, config, verbose=0)
    return sum(features.index.counts().values()) / (time.perf_counter() - start)  # every split is extracted


def tlkit_epoch(data: Path, config: tlkit.Config, runs: Path, mode: str, from_run: Path | None = None) -> float:
    timer = EpochTimer()
    settings = config.replace(fit={"mode": mode, "epochs": 2, "warmup_epochs": 1, "patience": 0})
    tlkit.train(data, settings, run_dir=runs / mode, from_run=from_run, verbose=0, callbacks=[timer])
    return timer.batches[-1] * config.fit.batch_size / timer.seconds[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images (half per class)")
    parser.add_argument("--image-size", type=int, default=tlkit.DataConfig().image_size)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weights", default=os.environ.get("TLKIT_WEIGHTS", "none"))
    parser.add_argument("--source", type=Path, help="cut the JPEGs from the photos in this folder")
    parser.add_argument("--workdir", type=Path, help="keep the dataset and caches here (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stages", default="feed,decode,transfer,extract,frozen,finetune",
                        help="comma-separated subset (also: predict, audit)")
    parser.add_argument("--host-images", type=int, default=4000, help="images of the feed and decode stages")
    parser.add_argument("--workers", type=int, default=tlkit.RuntimeConfig().workers, help="tlkit's decoding threads")
    parser.add_argument("--feed-threads", type=int, default=4,
                        help="the feed stage's second row: batches read ahead by this many of Keras's threads")
    parser.add_argument("--classic-from", type=Path,
                        help="take the classic side's figures from this earlier --json output instead of running it "
                             "again (e.g. a second precision)")
    parser.add_argument("--audit-vectors", default="6899,50000",
                        help="audit stage: feature-vector counts of the similarity searches")
    parser.add_argument("--repeat", type=int, default=2, help="extraction runs per side (the best counts)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="tlkit's compute precision (the classic recipe is float32)")
    parser.add_argument("--predict-images", default="1000,10000",
                        help="predict stage: image counts, each predicted by a fresh process")
    parser.add_argument("--distribute", default=tlkit.RuntimeConfig().distribute, choices=("auto", "none", "mirrored"),
                        help="the devices tlkit's side trains and extracts on (the classic side uses one)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tlkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size, batch, stages = args.image_size, args.batch_size, args.stages.split(",")
    host = host_stages(work, args, stages) if {"feed", "decode", "transfer"} & set(stages) else []
    data = work / "data"
    if {"extract", "frozen", "finetune", "predict"} & set(stages) and not data.is_dir():
        print(f"making {args.images} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} in {data}", flush=True)
        make_dataset(data, args.images, args.source)
    train = data / "train"
    config = tlkit.Config().replace(
        data={"image_size": args.image_size}, model={"weights": args.weights}, fit={"batch_size": args.batch_size},
        runtime={"cache_dir": str(work / "cache"), "precision": args.precision, "distribute": args.distribute})
    results, predictions, spans = [], [], []  # spans: when each side of each stage ran (for GPU samples)
    report = {
        "backend": keras.backend.backend(), "keras": keras.__version__, "devices": _devices(),
        "images": args.images, "image_size": size, "batch_size": batch, "weights": args.weights,
        "tlkit_precision": args.precision, "tlkit_devices": resolve(args.distribute).describe(),
        "host": host, "results": results, "predict": predictions, "spans": spans,
        "classic_from": str(args.classic_from) if args.classic_from else None,
        "audit": audit_stage([int(n) for n in args.audit_vectors.split(",")]) if "audit" in stages else [],
    }

    def save() -> None:  # after every stage: a run cut short (a timeout) keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    def record(stage: str, classic: float, ours: float) -> None:
        results.append({"stage": stage, "classic_images_per_s": classic, "tlkit_images_per_s": ours,
                        "ratio": ours / classic})
        print(f"  {stage:<16} classic {classic:9.1f}  tlkit {ours:11.1f}  ratio {ours / classic:8.2f}", flush=True)
        save()

    save()
    known = {row["stage"]: row["classic_images_per_s"]
             for row in json.loads(args.classic_from.read_text())["results"]} if args.classic_from else {}

    def timed(stage: str, side: str, function, *arguments):
        start = time.time()
        value = function(*arguments)
        spans.append({"stage": stage, "side": side, "start": start, "end": time.time()})
        return value

    def classic(stage: str, function, *arguments) -> float:
        return known[stage] if stage in known else timed(stage, "classic", function, *arguments)

    if "extract" in stages:  # alternating sides, best of --repeat: a shared machine's noise hits both alike
        for stage, clear in (("extract_cold", ("features", "images")), ("extract_warm", ("features",))):
            pairs = [(classic(stage, classic_extract, train, size, EXTRACT_BATCH, args.weights),
                      timed(stage, "tlkit", tlkit_extract, data, config, clear)) for _ in range(args.repeat)]
            record(stage, max(c for c, _ in pairs), max(t for _, t in pairs))
        record("extract_cached", results[-1]["classic_images_per_s"],
               timed("extract_cached", "tlkit", tlkit_extract, data, config, ()))
    runs = work / f"runs-{time.time_ns()}"
    if "frozen" in stages or "finetune" in stages:
        record("frozen_epoch", classic("frozen_epoch", classic_epoch, train, size, batch, args.weights, None),
               timed("frozen_epoch", "tlkit", tlkit_epoch, data, config, runs, "frozen"))
    if "finetune" in stages:
        record("finetune_epoch",
               classic("finetune_epoch", classic_epoch, train, size, batch, args.weights, "block5_conv1"),
               timed("finetune_epoch", "tlkit", tlkit_epoch, data, config, runs, "finetune", runs / "frozen"))

    if "predict" in stages:
        counts = [int(n) for n in args.predict_images.split(",")]
        print(f"making {max(counts)} JPEGs to predict", flush=True)
        parts = make_images(work / "predict", max(counts))
        settings = config.replace(fit={"mode": "features", "epochs": 1})
        run = tlkit.train(data, settings, run_dir=runs / "predict-run", verbose=0).run_dir
        for count in counts:
            predictions.append(timed(f"predict_{count}", "tlkit", predict_in_process, parts[:-(-count // 1000)], run,
                                     work / f"predict-{count}.txt"))
            print(f"  predict {predictions[-1]}", flush=True)
            save()

    print(json.dumps(report, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def host_stages(work: Path, args: argparse.Namespace, stages: list[str]) -> list[dict]:
    """The feed, decode and transfer stages asked for, printed as a table as they finish."""
    bandwidth = copy_bandwidth()
    rows = [{"stage": "memory_copy", "images_per_s": None, "mb_per_s": round(bandwidth, 1), "bandwidth_fraction": 1.0,
             "note": "np.copyto of 256 MB, best of 5"}]
    print(f"  {'stage':<16} {'images/s':>10} {'MB/s':>9} {'of copy':>8}  note", flush=True)
    _print_host(rows[0])
    if "feed" in stages:
        for threads in (1, args.feed_threads):  # tlkit reads in the training loop; then with Keras's threads
            rows.append(feed_stage(work, args.host_images, args.image_size, args.batch_size, threads, bandwidth))
            _print_host(rows[-1])
    if "decode" in stages:
        for row in decode_stage(work, min(args.host_images, 1000), args.image_size, args.workers, bandwidth):
            rows.append(row)
            _print_host(row)
    if "transfer" in stages:
        for row in transfer_stage(args.image_size, args.batch_size, bandwidth):
            rows.append(row)
            _print_host(row)
    return rows


def audit_stage(sizes: list[int], dims: int = 512, classes: int = 8, seed: int = 0) -> list[dict]:
    """``tlkit audit``'s similarity searches over ``n`` synthetic feature vectors (non-negative, as VGG16's
    pooled ReLU features are, 1% of them planted near copies), timed, with the peak memory numpy allocated."""
    from tlkit.auditing.files import THUMB, ZOOMS
    from tlkit.auditing.findings import AuditSettings
    from tlkit.auditing.similarity import BLOCK_BYTES, centroid_similarity, near_pairs, unit_rows

    settings, rows = AuditSettings(), []
    for n in sizes:
        rng = np.random.default_rng(seed)
        x = np.abs(rng.normal(size=(n, dims))).astype(np.float32) ** 2
        copies = rng.choice(n, 2 * (n // 100), replace=False).reshape(2, -1)
        x[copies[1]] = x[copies[0]] * rng.uniform(0.9, 1.1, (copies.shape[1], dims)).astype(np.float32)
        x = unit_rows(x)
        labels = rng.integers(0, classes, n)
        thumbs = unit_rows(rng.normal(size=(n, THUMB * THUMB)).astype(np.float32))
        transformed = [thumbs[:, rng.permutation(THUMB * THUMB)] for _ in (None, *ZOOMS)]  # mirrored, each crop
        for name, search, arguments in (("near_pairs", near_pairs, (x, settings.near_duplicate)),
                                        ("thumbnail_pairs", _thumbnail_pairs, (thumbs, transformed,
                                                                               settings.near_pixels)),
                                        ("centroid_similarity", centroid_similarity, (x, labels, classes))):
            tracemalloc.start()
            start = time.perf_counter()
            found = search(*arguments)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            note = {"near_pairs": f"{len(found[0])} pairs, {copies.shape[1]} planted",
                    "thumbnail_pairs": f"{THUMB}x{THUMB} thumbnails, {1 + len(transformed)} searches"}.get(
                        name, f"{classes} classes")
            rows.append({"stage": f"audit_{name}", "vectors": n, "dims": dims, "seconds": round(seconds, 3),
                         "peak_mb": round(peak / 2**20, 1), "block_mb": BLOCK_BYTES // 2**20,
                         "full_matrix_mb": round(4 * n * n / 2**20, 1), "note": note})
            print(f"  {name:<16} n={n:>6}  {seconds:7.2f} s  peak {peak / 2**20:7.1f} MB (a full n x n matrix: "
                  f"{4 * n * n / 2**20:,.0f} MB)  {note}", flush=True)
    return rows


def _thumbnail_pairs(thumbs: np.ndarray, transformed: list[np.ndarray], threshold: float) -> tuple:
    """The audit's thumbnail searches: as they are (the upper triangle), then against each transformed copy."""
    from tlkit.auditing.similarity import near_pairs

    found = [near_pairs(thumbs, threshold)] + [near_pairs(thumbs, threshold, other) for other in transformed]
    return tuple(np.concatenate(part) for part in zip(*found))


def _print_host(row: dict) -> None:
    rate = "" if row["images_per_s"] is None else f"{row['images_per_s']:,.1f}"
    print(f"  {row['stage']:<16} {rate:>10} {row['mb_per_s']:>9,.1f} {row['bandwidth_fraction']:>8.3f}  {row['note']}",
          flush=True)


def _devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


if __name__ == "__main__":
    main()
