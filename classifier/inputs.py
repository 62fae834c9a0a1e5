"""What the Python API takes as images, turned into what the toolkit works with.

``load_inputs``: the inputs of ``Model.predict`` (image files, folders searched recursively, PIL images,
numpy arrays or tensors, one or a list) as uint8 HWC images; ``in_memory_dataset``: ``train``'s
``dataset=(images, labels)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.data import BadImageError, load_image
from classifier.data.sources.arrays import arrays_dataset, as_uint8_images
from classifier.data.images import image_files_under, pil_to_array
from classifier.errors import ClassifierError


def load_inputs(inputs, channels: int) -> tuple[list, list, list]:
    """uint8 HWC images in ``channels``, their paths (None for in-memory ones), and the skipped files
    [(path, reason)] that could not be read."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    images, paths, skipped = [], [], []
    for item in items:
        if isinstance(item, (str, Path)):
            for file in image_files(item):
                try:
                    images.append(load_image(file, channels))
                    paths.append(str(file))
                except BadImageError as err:
                    skipped.append((str(file), str(err)))
        elif isinstance(item, Image.Image):
            images.append(pil_to_array(item, channels))
            paths.append(None)
        elif isinstance(item, np.ndarray) or torch.is_tensor(item):
            batch = array_images(item)
            images += list(batch)
            paths += [None] * len(batch)
        else:
            raise ClassifierError(f"cannot predict on a {type(item).__name__}: give image paths, folders, "
                                  "PIL images or numpy arrays")
    return images, paths, skipped


def image_files(path: str | Path) -> list[Path]:
    """A file, or the image files of a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = [Path(f) for f in image_files_under(path)]
        if not files:
            raise ClassifierError(f"no images found in {path}")
        return files
    if not path.is_file():
        raise ClassifierError(f"no such image or folder: {path}")
    return [path]


def array_images(array) -> np.ndarray:
    """(H,W) or (H,W,C) one image, (N,H,W[,C]) or (N,C,H,W) a batch; uint8 or float 0-1 -> uint8 (N,H,W,C)."""
    a = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        a = a[None]
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ClassifierError(f"an image array must be (H,W), (H,W,C) or a batch (N,H,W[,C]), got shape {a.shape}")
    return as_uint8_images(a, "image array")


def in_memory_dataset(dataset, class_names=None):
    """``train``'s ``dataset=(images, labels)`` as (DatasetInfo, official splits) (classifier.data.sources.arrays),
    whose ``info.name`` (``arrays:<fingerprint>``) is the run's dataset setting; None for a dataset name."""
    if isinstance(dataset, (tuple, list)):
        if len(dataset) != 2:
            raise ClassifierError("dataset=(images, labels) takes two arrays")
        return arrays_dataset(*dataset, class_names=class_names)
    if class_names is not None:
        raise ClassifierError("class_names names the classes of in-memory arrays: use it with "
                              "dataset=(images, labels) (to keep a subset of a dataset's classes, use classes=)")
    return None
