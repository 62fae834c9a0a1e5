"""The one registry of dataset sources, and ``load_dataset``, the only way data enters the toolkit.

A source is registered under a name with its loader, its statistics and its default augmentation.
A dataset string names a source: ``fashion_mnist`` (a named source), or ``folder:PATH`` (a source
registered with ``takes_path=True``, given what follows the first ``:``). The package docstring
(``classifier.data.sources``) states the contract a loader keeps.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from classifier.data.samples import DatasetInfo, Samples
from classifier.errors import ClassifierError

Loaded = tuple[DatasetInfo, dict[str, Samples]]
DEFAULT_AUGMENT = "light"  # flips and small shifts: right for photos, clothes, objects and satellite tiles


@dataclass(frozen=True)
class DatasetSource:
    name: str  # "fashion_mnist", or the prefix of "folder:PATH"
    load: Callable[[str | None, Path, bool], Loaded] = field(repr=False)  # load(path, root, download)
    takes_path: bool = False  # the dataset string is NAME:PATH
    mean: tuple[float, ...] | None = None  # per-channel statistics on the 0-1 scale when fixed; None:
    std: tuple[float, ...] | None = None  # computed from the data by the loader
    augment: str = DEFAULT_AUGMENT  # the augmentation preset used when a run does not choose one
    description: str = ""
    user: bool = False  # registered by a user (classifier.register_dataset)

    @property
    def spec(self) -> str:
        """How a dataset string names it: ``cifar10`` or ``folder:PATH``."""
        return f"{self.name}:PATH" if self.takes_path else self.name


_SOURCES: dict[str, DatasetSource] = {}


def register_source(name: str, *, takes_path: bool = False, mean=None, std=None, augment: str = DEFAULT_AUGMENT,
                    description: str = "", user: bool = False, replace: bool = False):
    """Decorator: register ``load(path, root, download) -> (DatasetInfo, {split: Samples})`` under ``name``.

    ``replace``: a name registered again replaces the old entry (a user's notebook cell run twice);
    without it a second registration is our bug and raises ValueError.
    """
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"a dataset source name is a word without ':', got {name!r}")

    def decorate(load):
        if name in _SOURCES and not (replace and _SOURCES[name].user):
            raise ValueError(f"dataset source '{name}' is already registered")
        _SOURCES[name] = DatasetSource(
            name=name, load=load, takes_path=takes_path, mean=tuple(mean) if mean else None,
            std=tuple(std) if std else None, augment=augment, user=user,
            description=description or (load.__doc__ or "").strip().split("\n")[0])
        return load

    return decorate


def source_names() -> list[str]:
    """How every registered source is named in a dataset string: ``cifar10``, ..., ``folder:PATH``."""
    return sorted(s.spec for s in _SOURCES.values() if s.name != "arrays")  # arrays: not a thing to type


def resolve(spec: str) -> tuple[DatasetSource, str | None]:
    """(source, path) for a dataset string; a one-line ClassifierError for an unknown one.

    Named sources match case-insensitively with ``-`` read as ``_`` (``Fashion-MNIST``); the prefix of
    ``NAME:PATH`` is matched the same way.
    """
    text = str(spec).strip()
    head, colon, path = text.partition(":")
    if colon:
        source = find_source(head)
        if source is not None and source.takes_path:
            if not path:
                raise ClassifierError(f"dataset '{head}:' needs a path, e.g. {source.name}:data/flowers")
            return source, path
    else:
        source = find_source(text)
        if source is not None and not source.takes_path:
            return source, None
    raise unknown_dataset(text)


def find_source(name: str) -> DatasetSource | None:
    """The source registered under ``name`` (case and ``-``/``_`` forgiven), or None."""
    return _SOURCES.get(name) or _SOURCES.get(name.lower().replace("-", "_"))


def unknown_dataset(spec: str) -> ClassifierError:
    """The error for a dataset string no source answers: close names, every choice, how to add one."""
    names = source_names()
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ClassifierError(f"unknown dataset '{spec}'{hint} (choices: {', '.join(names)}; a dataset of your own: "
                           "@classifier.register_dataset in a module loaded with --import MODULE)")


def check_dataset(spec: str) -> str:
    """``spec`` if a source answers it (nothing is loaded), else the one-line error."""
    resolve(spec)
    return spec


def load_dataset(spec: str, root: str | os.PathLike = "datasets", *, download: bool = True) -> Loaded:
    """(DatasetInfo, {split: Samples}) for the official splits present ('train', maybe 'val' and 'test')."""
    source, path = resolve(spec)
    return source.load(path, Path(root), download)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'fashion-mnist' -> ('fashion_mnist', None); 'folder:x' -> ('folder', 'x')."""
    source, path = resolve(spec)
    return source.name, path


def default_augment(spec: str) -> str:
    """The augmentation preset of the source behind ``spec`` (``light`` for one the registry does not know)."""
    try:
        return resolve(spec)[0].augment
    except ClassifierError:
        return DEFAULT_AUGMENT


def source_stats(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The fixed (mean, std) of the source behind ``spec``, or None when its loader computes them."""
    source = resolve(spec)[0]
    return (source.mean, source.std) if source.mean else None
