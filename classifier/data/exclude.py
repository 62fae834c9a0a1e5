"""``--exclude LIST``: train without some files (e.g. the mislabelled ones ``--find-label-issues`` listed).

LIST is file names, as a list or comma-separated, or a text file of them (one per line, ``#`` comments; a
CSV with a ``file`` column, such as label_issues.csv, gives that column). A name is a sample id as the
data check and label_issues.csv write it: the path relative to the dataset folder (``train/Coat/x.png``
or ``Coat/x.png``), or ``train[12]`` for an image of an in-memory dataset; an absolute path works too.

The exclusion is applied once, after the split (``run_splits``), so every other image stays in the split it
had without it (a run with and without ``--exclude`` is evaluated on the same test images, less any
excluded ones). A name that matches no image is an error: a typo never trains on the file it meant to
exclude. Nothing on disk is touched.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from classifier.errors import ClassifierError


def sample_ids(samples) -> list[str]:
    """A name per sample: its path relative to the dataset folder, or ``source[index]`` in memory."""
    if samples.in_memory:
        return [f"{samples.source}[{i}]" for i in samples.index]
    return samples.relative_paths()


def exclude_list(value) -> list[str]:
    """The names in an ``exclude`` setting: a list, a comma-separated string, or a text/CSV file of them."""
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value if _clean(v)]
    text = str(value)
    if os.path.isfile(text):
        return _read_list(Path(text))
    names = [_clean(v) for v in text.split(",") if _clean(v)]
    if len(names) == 1 and names[0].lower().endswith((".txt", ".csv", ".lst")):
        raise ClassifierError(f"exclude list file '{text}' does not exist")
    return names


def _clean(name) -> str:
    name = str(name).strip().replace("\\", "/")
    return name[2:] if name.startswith("./") else name


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ClassifierError(f"cannot read the exclude list {path}: {err}") from None
    header = next(csv.reader(lines[:1]), [])
    if "file" in header:  # a CSV (label_issues.csv, oof.csv): its file column
        column = header.index("file")
        return [_clean(row[column]) for row in csv.reader(lines[1:]) if len(row) > column and _clean(row[column])]
    return [_clean(line) for line in lines if _clean(line) and not line.lstrip().startswith("#")]


def exclude_samples(splits: dict, official: dict, names: list[str]) -> dict:
    """``splits`` without the samples ``names`` name; every name must name a sample of ``official``."""
    if not names:
        return splits
    wanted = set(names)
    absolute = {os.path.abspath(n) for n in names if os.path.isabs(n) or os.path.exists(n)}
    known = set()
    for samples in official.values():
        ids = sample_ids(samples)
        known.update(ids)
        if not samples.in_memory:
            known.update(os.path.abspath(p) for p in samples.paths)
    missing = [n for n in names if n not in known and os.path.abspath(n) not in known]
    if missing:
        raise ClassifierError(f"exclude: {len(missing)} listed file(s) are not images of the dataset, e.g. "
                              f"'{missing[0]}' (names are paths relative to the dataset folder, as in "
                              "label_issues.csv)")
    out = {}
    for name, samples in splits.items():
        drop = np.array([i in wanted for i in sample_ids(samples)], dtype=bool)
        if absolute and not samples.in_memory:
            drop |= np.array([os.path.abspath(p) in absolute for p in samples.paths], dtype=bool)
        out[name] = samples.subset(np.flatnonzero(~drop)) if drop.any() else samples
    return out
