"""CIFAR-10: 60,000 RGB 32x32 images of 10 object classes, read from the official python batches.

Looked for in ROOT/cifar10/cifar-10-batches-py and ROOT/cifar-10-batches-py; downloaded to ROOT/cifar10
when missing. The batches are pickles: they are read by an unpickler that only rebuilds arrays, so a
crafted file cannot run code. In memory (uint8 arrays).
"""
from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path

import numpy as np

import classifier.data.sources.downloads as downloads
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources.registry import register_source
from classifier.errors import ClassifierError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
FILES = [*TRAIN_FILES, "test_batch", "batches.meta"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the commonly published train-set figures


@register_source("cifar10", mean=MEAN, std=STD, augment="light")
def load(path, root: Path, download: bool):
    """Krizhevsky's CIFAR-10 (official train 50k / test 10k)."""
    def find():
        for folder in (root / "cifar10" / FOLDER, root / FOLDER):
            if all((folder / n).is_file() for n in FILES):
                return folder
        return None

    folder = find()
    if folder is None:
        target = root / "cifar10"
        downloads.fetch_or_explain(
            "CIFAR-10", target / FOLDER, FILES, download,
            lambda: downloads.download_file(URL, target, "cifar-10-python.tar.gz", MD5, extract=True))
        folder = find()
        if folder is None:
            raise ClassifierError(f"CIFAR-10 archive did not contain {', '.join(FILES)}")
    meta = read_cifar_pickle(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise ClassifierError(f"{folder / 'batches.meta'}: no label_names")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    splits = {}
    for split, batch_files in (("train", TRAIN_FILES), ("test", ["test_batch"])):
        parts = [_batch(folder / n, len(classes)) for n in batch_files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = Samples(labels=labels, images=images, source=split)
    return DatasetInfo("cifar10", classes, 3, (32, 32), MEAN, STD), splits


def _batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_pickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ClassifierError(f"{path}: b'data' is not a uint8 (N, 3072) array")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ClassifierError(f"{path}: {len(data)} images but {labels.size} labels")
    downloads.check_labels(labels, num_classes, str(path))
    # rows are the R, G, B planes of a 32x32 image, each row-major
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused.

    A pickle can name any importable callable; allowing only array reconstruction makes a crafted
    file unable to run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): None,
        ("_codecs", "encode"): None,  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module == "numpy":
            return getattr(np, name)
        sub, attr = self._ALLOWED[(module, name)]
        try:
            mod = importlib.import_module(f"numpy._core.{sub}")
        except ImportError:  # numpy < 2
            mod = importlib.import_module(f"numpy.core.{sub}")
        return getattr(mod, attr)


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """One CIFAR python batch (a dict with bytes keys), read without executing anything."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise ClassifierError(f"{path}: not a CIFAR batch file ({err})") from None
    if not isinstance(obj, dict):
        raise ClassifierError(f"{path}: not a CIFAR batch file (no dict inside)")
    return obj
