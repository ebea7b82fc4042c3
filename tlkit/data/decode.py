"""Decoding image files into uint8 RGB arrays at the model's size, in parallel threads.

Any image Pillow opens works: EXIF orientation applied, any mode converted to 8-bit RGB, resized to the
square. Files that cannot be decoded, or are above Pillow's decompression-bomb limit, are skipped and named.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("tlkit")

#: Pillow modes of 16-bit samples (16-bit PNG and TIFF open as ``I;16``, 16-bit PGM as ``I``): 0-65535.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


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

