"""What the files themselves say: exact duplicates, and images unlike the others in size, shape or colour.

Everything here is read from the file system (sizes, image headers) and from the decoded-image cache that
extraction left: no image is decoded again. Two files are exact duplicates when their images, decoded at
the model's size, are the same pixels: the same bytes, or the same picture re-saved in another format or
without its metadata. Bytes are hashed only for files whose size another file shares.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlkit.auditing.findings import AuditSettings, Finding

#: Rows of decoded images read at a time.
CHUNK = 512
#: Side of the grayscale thumbnails compared for near duplicates (re-encoded, re-exposed, mirrored copies).
THUMB = 16
#: Centred crops (fraction of the side) whose thumbnails are compared with the whole of every other image: a
#: copy cropped by 10-20% and scaled back is found (a 90% crop of a 30-pixel photo keeps 26 pixels, 0.87).
ZOOMS = (0.9, 0.85, 0.8)
#: Thumbnails whose gray levels spread less than this (standard deviation, 0-255) are not compared.
FLAT_THUMB = 2.0


@dataclass(frozen=True)
class FileFacts:
    """Per readable image (rows aligned with the audit's): its header size, the digest of its decoded
    pixels, of its bytes (``""`` when no other file has its size), its pixels' spread and colourfulness, and
    its :data:`THUMB` x :data:`THUMB` grayscale thumbnail, centred and scaled to unit length (``mirrored``: of
    the mirrored image; ``zoomed``: of each centred crop of :data:`ZOOMS`), whose dot products are the
    thumbnails' correlations."""

    width: np.ndarray
    height: np.ndarray
    pixel_digest: list[str]
    byte_digest: list[str]
    spread: np.ndarray
    colour: np.ndarray
    thumbnail: np.ndarray
    mirrored: np.ndarray
    zoomed: tuple[np.ndarray, ...]


def read_facts(paths: list[Path], decoded: Iterable[np.ndarray]) -> FileFacts:
    """The facts of ``paths``, whose decoded images ``decoded`` yields in the same order, a chunk at a time."""
    sizes = np.array([path.stat().st_size for path in paths])
    values, counts = np.unique(sizes, return_counts=True)
    shared = np.isin(sizes, values[counts > 1])
    byte_digest = [_file_digest(path) if is_shared else "" for path, is_shared in zip(paths, shared)]
    width, height = np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int64)
    for i, path in enumerate(paths):
        width[i], height[i] = _header_size(path)
    pixel_digest, spread, colour = [], [], []
    thumbnails: list[list[np.ndarray]] = [[] for _ in (1.0, *ZOOMS)]
    for chunk in decoded:
        for image in chunk:
            pixel_digest.append(hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest())
        sample = np.asarray(chunk[:, ::4, ::4], dtype=np.float32)
        spread.append(sample.std(axis=(1, 2, 3)))
        colour.append((np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])).mean(
            axis=(1, 2)) / 2)
        for scale, found in zip((1.0, *ZOOMS), thumbnails):
            found.append(_thumbnails(chunk, scale))
    whole, *zoomed = (np.concatenate(found) if found else np.zeros((0, THUMB, THUMB), np.float32)
                      for found in thumbnails)
    return FileFacts(width, height, pixel_digest, byte_digest, _joined(spread), _joined(colour),
                     _centred(whole), _centred(whole[:, :, ::-1]), tuple(_centred(crop) for crop in zoomed))


def chunks(images: np.ndarray) -> Iterable[np.ndarray]:
    """A (memory-mapped) array of images, :data:`CHUNK` rows at a time."""
    for start in range(0, len(images), CHUNK):
        yield np.asarray(images[start:start + CHUNK])


def exact_groups(facts: FileFacts) -> list[list[int]]:
    """Groups (rows, sorted) of two or more images with the same decoded pixels."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for row, digest in enumerate(facts.pixel_digest):
        by_digest[digest].append(row)
    return sorted((rows for rows in by_digest.values() if len(rows) > 1), key=lambda rows: rows[0])


def same_bytes(facts: FileFacts, rows: list[int]) -> bool:
    """Whether the files of ``rows`` are byte for byte the same."""
    digests = {facts.byte_digest[row] for row in rows}
    return len(digests) == 1 and "" not in digests


def image_problems(facts: FileFacts, paths: list[str], settings: AuditSettings) -> list[Finding]:
    """Small, far-from-square, uniform and (among colour photos) grayscale images, worst first per kind."""
    short, long = np.minimum(facts.width, facts.height), np.maximum(facts.width, facts.height)
    typical = float(np.median(short)) if len(short) else 0.0
    found: list[Finding] = []
    small = np.flatnonzero(short < settings.small_fraction * typical)
    found += [Finding("small", (paths[i],), float(1 - short[i] / typical),
                      {"width": int(facts.width[i]), "height": int(facts.height[i]), "median_short_side": typical},
                      f"{facts.width[i]}x{facts.height[i]} px where the median shorter side is {typical:g}: check it "
                      "is a real photo, not a thumbnail or icon") for i in small[np.argsort(short[small])]]
    ratio = long / np.maximum(short, 1)
    wide = np.flatnonzero(ratio > settings.aspect_ratio)
    found += [Finding("aspect_ratio", (paths[i],), float(ratio[i]), {"width": int(facts.width[i]),
                      "height": int(facts.height[i])},
                      f"{ratio[i]:.1f}:1, squashed into a square: crop it around the subject")
              for i in wide[np.argsort(-ratio[wide])]]
    flat = np.flatnonzero(facts.spread < settings.uniform_std)
    found += [Finding("uniform", (paths[i],), float(settings.uniform_std - facts.spread[i]),
                      {"pixel_std": float(facts.spread[i])}, "nearly one colour: remove it if it shows nothing")
              for i in flat[np.argsort(facts.spread[flat])]]
    gray = np.flatnonzero((facts.colour < settings.grayscale_difference) & (facts.spread >= settings.uniform_std))
    if len(gray) < 0.5 * len(paths):  # grayscale among colour: odd one out
        found += [Finding("grayscale", (paths[i],), float(settings.grayscale_difference - facts.colour[i]),
                          {"channel_difference": float(facts.colour[i])},
                          "grayscale among colour photos: the model may learn colour as a cue; check it belongs")
                  for i in gray[np.argsort(facts.colour[gray])]]
    return found


def _thumbnails(images: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``(n, THUMB, THUMB)`` grayscale thumbnails of the centred square ``scale`` of each image's side: the mean
    of each block, read on a grid of 4 x 4 points per block placed symmetrically (a mirror image lines up)."""
    side = images.shape[1]
    region = scale * side
    points = THUMB * 4
    at = np.floor((side - region) / 2 + (np.arange(points) + 0.5) * region / points).astype(np.int64)
    gray = images[:, at][:, :, at].sum(axis=3, dtype=np.float32)
    return gray.reshape(len(images), THUMB, 4, THUMB, 4).mean(axis=(2, 4)) / 3


def _centred(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails as vectors less their mean, of unit length; zeros for a (nearly) flat thumbnail, whose
    correlation with anything would be noise."""
    flat = thumbnails.reshape(len(thumbnails), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat_enough = norms > FLAT_THUMB * np.sqrt(flat.shape[1])  # a standard deviation over FLAT_THUMB gray levels
    return np.where(flat_enough, flat / np.maximum(norms, 1e-3), 0).astype(np.float32)


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _header_size(path: Path) -> tuple[int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            return img.size


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
