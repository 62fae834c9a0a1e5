"""``classifier.register_dataset``: a user's own data under a name that works wherever a dataset name does.

    import classifier

    @classifier.register_dataset("leaves")
    def leaves():
        return images, labels, ["healthy", "rust", "scab"]   # arrays, as dataset=(images, labels) takes
        # or: return "data/leaves"      (a folder of class sub-folders)
        # or: return "folder:data/leaves", "cifar10", ...   (any dataset string)

    classifier.train(dataset="leaves", model="lenet5")     # python train.py --import my_data --dataset leaves

The function is called each time the dataset is loaded (training, evaluation on the run's split, export
checks), so it must return the same data each time: a run records which samples went where by position
(arrays) or by file path (folders). The run records the dataset as the registered name; commands in a
new process find it again once the module that registers it is imported (``--import MODULE``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from classifier.data.augment import PRESETS
from classifier.data.sources.arrays import arrays_dataset
from classifier.data.sources.registry import (DEFAULT_AUGMENT, find_source, load_dataset, register_source, resolve,
                                             source_names)
from classifier.errors import ClassifierError, unknown_choice


def register_dataset(name: str, *, augment: str = DEFAULT_AUGMENT, description: str = "") -> Callable:
    """Decorator: ``fn()`` returning ``(images, labels, class_names)`` (or ``(images, labels)``) or a path
    (a folder, or a dataset string) becomes the dataset ``name``. ``augment``: its default augmentation
    preset. Registering a name again replaces the earlier function; built-in names cannot be taken."""
    if not isinstance(name, str) or not name.strip() or ":" in name or name != name.strip():
        raise ClassifierError(f"a dataset name is a word without ':' (e.g. 'leaves'), got {name!r}")
    taken = find_source(name)
    if taken is not None and not taken.user:
        raise ClassifierError(f"dataset name '{name}' is built in ({taken.spec}): register yours under another name")
    if augment not in PRESETS:  # checked here rather than when a run first needs it
        raise unknown_choice("augment preset", str(augment), PRESETS)

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise ClassifierError(f"@register_dataset('{name}') decorates a function, got {type(fn).__name__}")

        def load(path, root: Path, download: bool):
            return load_user_dataset(name, fn, root, download)

        load.__doc__ = description or (fn.__doc__ or f"{fn.__module__}.{fn.__qualname__}")
        register_source(name, augment=augment, user=True, replace=True)(load)
        return fn

    return decorate


_LOADING: list[str] = []  # the user datasets being loaded, outermost first: a chain that comes back is a loop


def load_user_dataset(name: str, fn: Callable, root: Path, download: bool):
    """Call the user's function and load what it returned, as the dataset ``name``."""
    if name in _LOADING:
        chain = " -> ".join(_LOADING[_LOADING.index(name):] + [name])
        raise ClassifierError(f"dataset '{name}' leads back to itself ({chain}): one of these functions must return "
                              "images or a folder")
    _LOADING.append(name)
    try:
        return _load_user_dataset(name, fn, root, download)
    finally:
        _LOADING.pop()


def _load_user_dataset(name: str, fn: Callable, root: Path, download: bool):
    result = fn()
    if isinstance(result, (str, os.PathLike)):
        text = os.fspath(result)
        spec = f"folder:{text}" if Path(text).expanduser().is_dir() else text
        try:
            source = resolve(spec)[0]
        except ClassifierError:
            raise ClassifierError(f"dataset '{name}': {fn.__name__}() returned '{text}', which is neither a folder "
                                  f"nor a dataset string ({', '.join(source_names())})") from None
        if source.name == name:
            raise ClassifierError(f"dataset '{name}': {fn.__name__}() returned '{text}', which names itself")
        info, splits = load_dataset(spec, root, download=download)
    elif isinstance(result, tuple) and len(result) in (2, 3):
        info, splits = arrays_dataset(*result)
    else:
        raise ClassifierError(f"dataset '{name}': {fn.__name__}() returned a {type(result).__name__}; expected "
                              "(images, labels, class_names) or a path (a folder or a dataset string)")
    return dataclasses.replace(info, name=name), splits

