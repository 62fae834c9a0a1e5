"""Image folders: ``folder:PATH`` with ``PATH/{train,val,test}/<class>/...`` (val and test optional) or
``PATH/<class>/...``. Classes are the sorted sub-folder names; statistics (channels, common size,
mean/std) are measured on a seeded sample of the training images. Streamed from disk (file Samples).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from classifier.data.images import image_files_under
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources.registry import register_source
from classifier.data.statistics import image_stats
from classifier.errors import ClassifierError

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@register_source("folder", takes_path=True, augment="light")
def load(path, root=None, download=False):
    """A folder of class sub-folders (or train/, val/, test/ folders of them)."""
    return load_folder(path)


def load_folder(path: str | os.PathLike):
    """(DatasetInfo named ``folder:PATH``, {split: Samples}) for an image folder."""
    base = Path(path).expanduser()
    if not base.is_dir():
        raise ClassifierError(f"dataset folder '{path}' does not exist")
    if (base / "train").is_dir():
        classes, train = scan_class_folders(base / "train", root=base)
        splits = {"train": train}
        for split in ("val", "test"):
            folder = next((base / d for d in SPLIT_DIRS[split] if (base / d).is_dir()), None)
            if folder is not None:
                splits[split] = scan_class_folders(folder, classes=classes, root=base)[1]
    else:
        classes, train = scan_class_folders(base)
        splits = {"train": train}
    for split, samples in splits.items():
        samples.source = split
    channels, size, mean, std = image_stats(splits["train"].paths)
    return DatasetInfo(f"folder:{path}", classes, channels, size, mean, std), splits


def scan_class_folders(folder: Path, classes: list[str] | None = None, root: Path | None = None):
    """(classes, Samples) for ``folder/<class>/**/<image>``; hidden entries and non-images ignored.

    With ``classes`` given (a val/test folder) every class found must be one of them; otherwise the
    classes are the sorted sub-folder names and at least two are required.
    """
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise ClassifierError(f"no class sub-folders in '{folder}' (expected {folder}/<class>/<image>)")
    if classes is None:
        if len(found) < 2:
            raise ClassifierError(f"'{folder}' has only one class folder ('{found[0]}'); at least 2 are needed")
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise ClassifierError(f"class folder(s) {', '.join(extra)} in '{folder}' are not training classes")
    paths, labels = [], []
    for name in found:
        files = image_files_under(folder / name)
        if not files:
            raise ClassifierError(f"class folder '{folder / name}' has no images "
                                  f"(extensions: {', '.join(sorted(e[1:] for e in _EXT_HINT))})")
        paths += files
        labels += [classes.index(name)] * len(files)
    return classes, Samples(labels=np.array(labels, np.int64), paths=paths, root=str(root or folder))


_EXT_HINT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".webp")  # the common ones, for the message


def labelled_folder(folder: str, model_classes: list[str]) -> Samples:
    """A new folder's images labelled by class *name* for a model's classes: unknown classes get -1
    (predicted and listed, not counted in accuracy) and are named on the console, as are missing ones."""
    base = Path(folder)
    if not base.is_dir():
        raise ClassifierError(f"evaluation folder '{folder}' does not exist")
    dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in dirs:
        files = image_files_under(d)
        label = model_classes.index(d.name) if d.name in model_classes else -1
        paths += files
        labels += [label] * len(files)
    names = [d.name for d in dirs]
    unknown = [n for n in names if n not in model_classes]
    missing = [c for c in model_classes if c not in names]
    if not paths:
        raise ClassifierError(f"no images in class sub-folders of '{folder}'")
    if len(unknown) == len(names):
        raise ClassifierError(f"'{folder}' shares no class with the model (folder: {', '.join(names[:8])}; "
                              f"model: {', '.join(model_classes[:8])})")
    if unknown:
        n = sum(1 for label in labels if label < 0)
        print(f"classes the model does not know (their {n} images are predicted and listed in predictions.csv, "
              f"not counted in accuracy): {', '.join(unknown)}")
    if missing:
        print(f"model classes with no folder here: {', '.join(missing)}")
    return Samples(labels=np.array(labels), paths=paths, root=str(base))
