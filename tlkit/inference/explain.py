"""Grad-CAM: where in an image a run's classifier found the evidence for a class.

The gradient of the class's logit (its score before the sigmoid or softmax, which would flatten
confident gradients) with respect to the last VGG16 conv layer's feature maps, averaged over
each map, weighs the maps; their weighted sum, negatives cut to zero, is the heatmap
(Selvaraju et al., 2017; Chollet, *Deep Learning with Python*, 5.4.3). The heatmap is
stretched back over the whole image, as the image was squeezed into the model's square.

Gradients are taken with the backend's own autodiff (:func:`tlkit.backends.gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import matplotlib
import numpy as np
from keras import ops
from PIL import Image

from tlkit.backbone import BASE_NAME, CAM_LAYER
from tlkit.backends import gradient
from tlkit.config import CAM_OPACITY
from tlkit.data.decode import decode_image, read_rgb
from tlkit.errors import TlkitError
from tlkit.io import atomic_write
from tlkit.model import HEAD_NAME, PREPROCESS_NAME, class_logits, class_probabilities
from tlkit.outputs import check_output
from tlkit.runs import Run, resolve_run
#: Images whose gradients are taken at once (memory: about 27 MB each at image size 150).
CAM_BATCH = 16


@dataclass
class Explanation:
    """A Grad-CAM heatmap of one image.

    Attributes:
        path: The image file.
        class_name: The class whose evidence the heatmap shows.
        probability: The model's probability of that class for this image.
        predicted: The model's top class.
        heatmap: ``(height, width)`` floats in [0, 1], the image's own shape (1 where the evidence is strongest).
        image: The image, as decoded (EXIF orientation applied).
    """

    path: str
    class_name: str
    probability: float
    predicted: str
    heatmap: np.ndarray
    image: Image.Image

    def overlay(self, opacity: float = CAM_OPACITY) -> Image.Image:
        """The image with the heatmap over it in the ``jet`` colours (red: strongest evidence)."""
        return overlay(self.image, self.heatmap, opacity)


class GradCam:
    """Grad-CAM of a tlkit classifier: ``image -> preprocess -> VGG16 base -> head``.

    The model is split at :data:`CAM_LAYER` into the part below it (feature maps) and the part
    above (the last pooling and the head, up to the output layer's logits).
    """

    def __init__(self, model: keras.Model) -> None:
        try:
            base, head = model.get_layer(BASE_NAME), model.get_layer(HEAD_NAME)
            preprocess = model.get_layer(PREPROCESS_NAME)
            conv = base.get_layer(CAM_LAYER)
        except ValueError:
            raise TlkitError("this model is not a tlkit VGG16 classifier; Grad-CAM needs its layers") from None
        inputs = keras.Input(shape=model.input_shape[1:])
        below = keras.Model(base.inputs, conv.output)
        self.maps = keras.Model(inputs, below(preprocess(inputs)))
        self.pool = base.layers[-1]  # block5_pool
        output_layer = head.layers[-1]
        self.hidden = keras.Model(head.inputs, output_layer.input)
        self.kernel, self.bias = output_layer.kernel, output_layer.bias
        self.binary = output_layer.units == 1

    def logits(self, maps, classes: np.ndarray):
        """The logit of ``classes[i]`` for image ``i``, from its feature maps (a sigmoid unit's logit ``z``
        is class 1's; class 0's is ``-z``)."""
        hidden = ops.cast(self.hidden(self.pool(maps), training=False), "float32")
        z = ops.matmul(hidden, ops.cast(self.kernel, "float32")) + ops.cast(self.bias, "float32")
        return class_logits(z, classes, self.binary)

    def __call__(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Coarse heatmaps ``(n, h, w)`` in [0, 1] (``h, w``: the conv layer's grid) of ``classes[i]`` in image ``i``."""
        maps = ops.cast(self.maps(ops.convert_to_tensor(images, "float32"), training=False), "float32")
        grads = ops.convert_to_numpy(gradient(lambda m: self.logits(m, np.asarray(classes)), maps))
        maps = ops.convert_to_numpy(maps)
        weights = grads.mean(axis=(1, 2), keepdims=True)  # one weight per feature map
        cams = np.maximum((weights * maps).sum(axis=-1), 0.0)
        peaks = cams.max(axis=(1, 2), keepdims=True)
        return np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)


def stretch(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """A coarse heatmap resized (bilinear) to ``width`` x ``height``, kept in [0, 1]."""
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = CAM_OPACITY) -> Image.Image:
    """``image`` blended with ``heatmap`` (its shape, values in [0, 1]) coloured by matplotlib's ``jet``."""
    colours = Image.fromarray(matplotlib.colormaps["jet"](heatmap, bytes=True)[..., :3])  # uint8: a large photo fits
    return Image.blend(image.convert("RGB"), colours, opacity)


def explain(image: str | Path, run: Run | str | Path | None = None, class_name: str | None = None) -> Explanation:
    """Grad-CAM of one image file for the run's predicted class (or ``class_name``).

    Args:
        image: An image file.
        run: A loaded run, a run folder, or ``None`` for the latest under ``runs/``.
        class_name: The class to explain; default: the predicted one.

    Raises:
        TlkitError: On a bad run or class name, or a file that is not a readable image.
    """
    run = resolve_run(run)
    if class_name is not None and class_name not in run.class_names:
        raise TlkitError(f"unknown class {class_name!r}; run {run.path} knows {', '.join(run.class_names)}")
    path = Path(image)
    if not path.is_file():
        raise TlkitError(f"no such image file: {path}")
    try:
        pixels = decode_image(path, run.image_size)[None]  # exactly what predict feeds the model
        picture = read_rgb(path)  # the photo at full size, for the overlay
    except OSError as exc:
        raise TlkitError(f"{path} is not a readable image: {type(exc).__name__}: {exc}") from None
    return explain_images(run, [path], pixels, [picture], None if class_name is None else [class_name])[0]


def explain_images(run: Run, paths: list[Path], pixels: np.ndarray, pictures: list[Image.Image],
                   class_names: list[str] | None = None) -> list[Explanation]:
    """Grad-CAM of decoded images: ``pixels`` as the model takes them, ``pictures`` as shown.

    Args:
        run: The run whose classifier is explained.
        paths: The images' files (recorded in each :class:`Explanation`).
        pixels: ``(n, size, size, 3)`` model inputs (:func:`tlkit.data.decode.decode_image`).
        pictures: The same images at the resolution the heatmaps are stretched to.
        class_names: The class to explain per image; default: each image's predicted class.
    """
    probabilities = class_probabilities(run.model, pixels)
    predicted = probabilities.argmax(axis=1)
    chosen = predicted if class_names is None else np.array([run.class_names.index(n) for n in class_names])
    cam = GradCam(run.model)
    cams = np.concatenate([cam(pixels[start:start + CAM_BATCH], chosen[start:start + CAM_BATCH])
                           for start in range(0, len(pixels), CAM_BATCH)])
    return [Explanation(str(path), run.class_names[c], float(probs[c]), run.class_names[p],
                        stretch(cam, *picture.size), picture)
            for path, c, p, probs, cam, picture in zip(paths, chosen, predicted, probabilities, cams, pictures)]


def write_overlay(explanation: Explanation, out: str | Path, opacity: float = CAM_OPACITY) -> None:
    """Write the heatmap over the image as a PNG (atomically)."""
    picture = explanation.overlay(opacity)
    atomic_write(check_output(out), lambda temporary: picture.save(temporary, format="PNG"))
