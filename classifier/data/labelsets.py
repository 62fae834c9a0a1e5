"""Multi-label data: carving splits that keep every label, and label sets from class folders.

* ``multilabel_partition``: the multi-label counterpart of ``splits.stratified_partition``: iterative
  stratification (Sechidis et al. 2011, the ``iterative-stratification`` package) keeps each label's share
  in every split; a label whose only images were all carved out gets one back into train, so every
  label has training images.
* ``merge_same_images``: with ``--task multilabel`` a folder dataset where the same image (same content)
  sits in several class folders (how users fake multi-label with single-label tools) becomes one image
  with those labels.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from classifier.tasks import resolve_task, to_multilabel


def multilabel_partition(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int):
    """Sorted positions (test, val, train) of a 0/1 label matrix, carved by iterative stratification."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    positions = np.arange(n)
    test = _carve(labels, positions, test_fraction, seed)
    rest = np.setdiff1d(positions, test)
    val = _carve(labels, rest, val_fraction * n / max(len(rest), 1), seed + 1) if len(rest) else rest[:0]
    train = np.setdiff1d(rest, val)
    test, val, train = _keep_labels_in_train(labels, test, val, train)
    return np.sort(test), np.sort(val), np.sort(train)


def _carve(labels: np.ndarray, positions: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """round(len(positions) * fraction) of ``positions``, stratified over the label matrix."""
    k = int(round(len(positions) * fraction))
    if k <= 0:
        return positions[:0]
    if k >= len(positions):
        return positions.copy()
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # optional extra: [data]

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=k, random_state=seed % (2 ** 32))
    _, picked = next(splitter.split(np.zeros((len(positions), 1)), labels[positions]))
    return positions[np.sort(picked)]


def _keep_labels_in_train(labels, test, val, train):
    """Move one image back to train for every label that has images but none in train (val first)."""
    test, val, train = list(test), list(val), list(train)
    for c in range(labels.shape[1]):
        if train and labels[train, c].sum():
            continue
        for pool in (val, test):
            having = [p for p in pool if labels[p, c]]
            if having:
                pool.remove(having[0])
                train.append(having[0])
                break
    as_array = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return as_array(test), as_array(val), as_array(train)


def content_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def merge_same_images(paths: list[str], labels: np.ndarray, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Files with identical content -> one file (the first listed) with the union of their labels.

    ``labels``: class indices or a 0/1 matrix; returns (paths, 0/1 matrix) in first-seen order.
    """
    matrix = to_multilabel(labels, num_classes)
    first: dict[str, int] = {}
    out_paths, rows = [], []
    for path, row in zip(paths, matrix):
        digest = content_digest(path)
        if digest in first:
            rows[first[digest]] = np.maximum(rows[first[digest]], row)
        else:
            first[digest] = len(out_paths)
            out_paths.append(path)
            rows.append(row.astype(np.int64))
    return out_paths, np.stack(rows) if rows else np.zeros((0, num_classes), np.int64)


def apply_task(info, official: dict, task: str | None):
    """The official splits as the run's task reads them (``--task``): ``multilabel`` turns class indices into a
    0/1 matrix, merging files with the same content (one image in several class folders) into one image
    with all their labels; ``multiclass`` refuses label matrices; ``auto`` keeps what the source gave."""
    train = official.get("train")
    if train is None or resolve_task(task, train.labels) != "multilabel" or train.multilabel:
        return info, official
    out = {}
    for name, samples in official.items():
        if samples.in_memory:
            merged = samples.subset(np.arange(len(samples)))
            merged.labels = to_multilabel(samples.labels, len(info.classes)).astype(np.uint8)
        else:
            paths, labels = merge_same_images(samples.paths, samples.labels, len(info.classes))
            merged = type(samples)(labels=labels, paths=paths, root=samples.root, source=samples.source)
        out[name] = merged
    return replace(info, multilabel=True), out
