"""Images and labels from memory (numpy arrays or tensors), the Keras-style ``fit(x, y)`` of notebooks.

``arrays_dataset(images, labels)`` -> (DatasetInfo, {"train": Samples}) like any other source, so an
array run is split, trained and evaluated as a dataset read from disk would be (on the in-memory fast
path). A run cannot point at arrays the way it points at a folder: it records the dataset as
``arrays:<fingerprint>`` (a hash of the pixels and labels), and whatever needs the data again (resume,
evaluation on the run's split, export verification) takes the same arrays again or says it cannot.
"""
from __future__ import annotations

import hashlib

import numpy as np

from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources.registry import register_source
from classifier.errors import ClassifierError

ARRAYS_PREFIX = "arrays:"  # a run trained on in-memory arrays records its dataset as arrays:<fingerprint>


@register_source("arrays", takes_path=True, augment="light")
def load(path, root=None, download=False):
    """In-memory arrays (dataset=(images, labels)): a dataset string can only name them, not bring them."""
    raise arrays_needed(ARRAYS_PREFIX + str(path))


def arrays_needed(spec: str) -> ClassifierError:
    """The error for a command that needs the data of an array run it was not given."""
    return ClassifierError(f"this run was trained on in-memory arrays ({spec}), which a run folder cannot point "
                           "at: pass the same arrays again (dataset=(images, labels) in the Python API)")


def as_uint8_images(images, what: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) from a numpy array or tensor shaped (N, H, W), (N, H, W, C) or (N, C, H, W).

    Channels-first is recognised by a first axis of 1 or 3 with a last axis that is not (C is 1, 3 or 4).
    Float pixels must be on the 0-1 or 0-255 scale.
    """
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ClassifierError(f"{what} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)
    if array.shape[3] not in (1, 3, 4):
        raise ClassifierError(f"{what}: cannot tell the channel axis of shape {array.shape} (1, 3 or 4 channels)")
    return np.ascontiguousarray(pixels_to_uint8(array[..., :3] if array.shape[3] == 4 else array, what))


def pixels_to_uint8(array: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 as is; floats on the 0-1 scale (max <= 1) or 0-255 scale -> rounded uint8; others refused."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ClassifierError(f"{what} must hold numbers (uint8 0-255, or floats 0-1), got {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise ClassifierError(f"{what} hold NaN or infinite values")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ClassifierError(f"{what} pixel values must be within 0-255 (or 0-1 as floats), got {low:g} to {high:g}")
    scale = 255.0 if np.issubdtype(array.dtype, np.floating) and high <= 1.0 else 1.0
    return np.clip(np.round(array.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def arrays_dataset(images, labels, class_names=None) -> tuple[DatasetInfo, dict[str, Samples]]:
    """A dataset from memory: one official ``train`` split (val and test are carved from it)."""
    images = as_uint8_images(images)
    labels = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if labels.ndim == 2 and len(labels) == len(images):  # multi-label: a 0/1 matrix (N, classes)
        return _label_matrix_dataset(images, labels, class_names)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ClassifierError(f"labels must be a 1-d sequence of {len(images)} class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise ClassifierError(f"labels must be integer class indices, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if len(labels) == 0:
        raise ClassifierError("no images given")
    num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ClassifierError(f"labels must be in 0..{num_classes - 1} (one per class name), "
                              f"got {labels.min()} to {labels.max()}")
    return _in_memory(images, labels, _class_names(class_names, num_classes))


def _label_matrix_dataset(images: np.ndarray, labels: np.ndarray, class_names):
    """``arrays_dataset`` for multi-label data: labels an (N, C) matrix of 0/1, a column per class name."""
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ClassifierError("a label matrix (N, classes) must hold only 0 and 1")
    if len(labels) == 0:
        raise ClassifierError("no images given")
    if class_names is not None and len(class_names) != labels.shape[1]:
        raise ClassifierError(f"the label matrix has {labels.shape[1]} columns but {len(class_names)} class names")
    return _in_memory(images, labels.astype(np.uint8), _class_names(class_names, labels.shape[1]), multilabel=True)


def _class_names(class_names, num_classes: int) -> list[str]:
    """The given names as text (``0``, ``1``, ... without them); repeated names are an error."""
    classes = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(set(classes)) != len(classes):
        raise ClassifierError(f"class_names must be unique, got {classes}")
    return classes


def _in_memory(images: np.ndarray, labels: np.ndarray, classes: list[str], multilabel: bool = False):
    """(DatasetInfo named ``arrays:<fingerprint>``, {"train": Samples}), the statistics measured on the pixels."""
    pixels = images.reshape(-1, images.shape[3]).astype(np.float64) / 255.0
    info = DatasetInfo(ARRAYS_PREFIX + fingerprint(images, labels), classes, images.shape[3],
                       tuple(images.shape[1:3]), tuple(pixels.mean(0)), tuple(np.maximum(pixels.std(0), 1e-3)),
                       multilabel=multilabel)
    return info, {"train": Samples(labels=labels, images=images, source="train")}


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """12 hex digits identifying the pixels and labels (and their shapes)."""
    digest = hashlib.sha1(str((images.shape, labels.shape)).encode())
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels.astype(np.int64)).data)
    return digest.hexdigest()[:12]
