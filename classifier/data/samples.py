"""What every dataset source returns: ``DatasetInfo`` (classes, native size, statistics) and ``Samples``
(labelled images, in memory or as files).

Labels come in one of two forms, told apart by their shape:

* class indices, shape (N,), int64: one class per image (multi-class). ``-1`` marks an image whose class
  the model does not know (evaluation of a new folder); sources for training never produce it.
* a 0/1 matrix, shape (N, K), uint8, K = number of classes: any number of classes per image (multi-label).
  ``Samples.multilabel`` says which form a Samples holds; ``DatasetInfo.multilabel`` which one a dataset's
  sources produce.

Both forms index the same way (``labels[i]`` is sample i), so ``subset`` and everything that only
moves samples around work for either; code that counts classes uses ``Samples.class_counts``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.preprocess import LUMA, Preprocessing


@dataclass
class DatasetInfo:
    name: str  # the canonical spec: load_dataset(info.name) loads it again
    classes: list[str]
    channels: int  # native: 1 gray, 3 RGB
    size: tuple[int, int]  # native (height, width); for folders the most common size
    mean: tuple[float, ...]  # per channel, 0-1 scale
    std: tuple[float, ...]
    multilabel: bool = False  # labels are a 0/1 matrix (N, classes) instead of class indices

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self, size=None, channels: int | None = None) -> Preprocessing:
        """The Preprocessing for a model fed this dataset, at ``size``/``channels`` (default: native)."""
        channels = channels or self.channels
        mean, std = self.mean, self.std
        if channels != self.channels:
            if channels == 3:  # gray replicated to RGB
                mean, std = mean * 3, std * 3
            else:  # RGB to luma: the luma of the means, std approximated the same way
                mean = (sum(w * m for w, m in zip(LUMA, mean)),)
                std = (sum(w * s for w, s in zip(LUMA, std)),)
        return Preprocessing(size=tuple(size or self.size), channels=channels, mean=mean, std=std)

    def to_dict(self) -> dict:
        out = {"name": self.name, "classes": list(self.classes), "channels": self.channels,
               "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}
        if self.multilabel:  # written only when set: older readers see the same keys as before
            out["multilabel"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(d["name"], list(d["classes"]), int(d["channels"]), tuple(d["size"]),
                   tuple(d["mean"]), tuple(d["std"]), bool(d.get("multilabel", False)))


@dataclass(eq=False)
class Samples:
    """Labelled samples: in-memory ``images`` (N, H, W, C uint8) or image files ``paths``.

    ``labels``: class indices (N,) or a 0/1 matrix (N, K) (see the module docstring). ``source`` and
    ``index`` say where each sample sits in the official split it came from (what a split record
    stores); ``root`` is the folder file paths are recorded relative to.
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    root: str | None = None
    source: str = ""
    index: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.labels = as_labels(self.labels)
        if (self.images is None) == (self.paths is None):
            raise ValueError("Samples needs exactly one of images or paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if n != len(self.labels):
            raise ValueError(f"{n} samples but {len(self.labels)} labels")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4):
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        self.index = np.arange(n, dtype=np.int64) if self.index is None else np.asarray(self.index, np.int64)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def multilabel(self) -> bool:
        """True when the labels are a 0/1 matrix (N, K), False for class indices (N,)."""
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int = 0) -> np.ndarray:
        """Images per class (at least ``num_classes`` entries): a bincount of the indices (``-1`` not
        counted), or the column sums of a label matrix."""
        if self.multilabel:
            counts = self.labels.sum(0, dtype=np.int64)
            return np.pad(counts, (0, max(0, num_classes - len(counts))))
        return np.bincount(self.labels[self.labels >= 0], minlength=num_classes)

    def subset(self, indices) -> "Samples":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Samples(
            labels=self.labels[idx],
            images=self.images[idx] if self.images is not None else None,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            root=self.root, source=self.source, index=self.index[idx],
        )

    def relative_paths(self) -> list[str]:
        """File paths relative to ``root`` with forward slashes (what split records store)."""
        prefix = os.path.join(self.root, "")  # the listing joins root and name: cut the prefix (relpath: 15x slower)
        return [p[len(prefix):].replace(os.sep, "/") if p.startswith(prefix) and ".." not in p
                else Path(os.path.relpath(p, self.root)).as_posix() for p in self.paths]


def as_labels(labels) -> np.ndarray:
    """Class indices as int64 (N,), or a 0/1 label matrix (any 2-d input) as uint8 (N, K)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("a label matrix holds only 0 and 1")
        return labels.astype(np.uint8)
    return labels.astype(np.int64).reshape(-1)
