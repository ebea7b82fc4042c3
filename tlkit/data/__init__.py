"""From a dataset folder to batches, top to bottom.

1. :mod:`~tlkit.data.scan` indexes the class folders (the folder's own split, or one drawn by
   :mod:`~tlkit.data.split`: stratified and seeded).
2. :mod:`~tlkit.data.decode` decodes image files to uint8 RGB at the model's size, in threads.
3. :mod:`~tlkit.data.image_cache` keeps each split's decoded images in a memory-mapped array.
4. :mod:`~tlkit.data.batches` reads them in a new order each epoch, drawn from (seed, epoch).
"""

from tlkit.data.decode import ImageTooLarge, decode_image, decode_images, read_rgb
from tlkit.data.index import SPLIT_NAMES, DatasetIndex
from tlkit.data.scan import list_images, require_classes, scan

__all__ = ["SPLIT_NAMES", "DatasetIndex", "ImageTooLarge", "decode_image", "decode_images", "list_images", "read_rgb",
           "require_classes", "scan"]
