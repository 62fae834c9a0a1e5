"""K folds over a run's train+val samples: which fold each sample validates in.

Cross-validation (classifier/crossval.py) trains one ordinary run per fold; a fold run is told its fold by
two config keys, ``folds`` (K) and ``fold`` (k, 1-based), and ``run_splits`` (data/splits.py) calls
``fold_splits`` to turn the run's usual split into fold k's: the train and val samples are pooled (the
test split stays out, untouched), cut into K stratified folds, and fold k becomes the validation split,
the other K-1 the training split. The split record (split.json) then lists fold k's samples, so resuming
or evaluating a fold run reloads exactly them.

The cut depends on the pool and the seed only, so every fold of one cross-validation (on one machine or
several) sees the same K folds. How labels are stratified is chosen by their form (``STRATIFIERS``):
class indices are dealt per class round the folds (what scikit-learn's ``StratifiedKFold`` does, without
its 15 s import on a cold start); a 0/1 label matrix (multi-label) uses iterative stratification
(``MultilabelStratifiedKFold`` of the iterative-stratification package).
"""
from __future__ import annotations

import warnings

import numpy as np

from classifier.data.samples import Samples
from classifier.errors import ClassifierError


def _stratified_kfold(labels: np.ndarray, folds: int, seed: int):
    """Per class a seeded shuffle dealt round the folds, each class starting where the previous one stopped:
    every class is spread over the folds within one image, and the folds' sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    fold_of, start = np.empty(len(labels), dtype=np.int64), 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold_of[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]


def _multilabel_kfold(labels: np.ndarray, folds: int, seed: int):
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    except ImportError:
        raise ClassifierError("k-fold over multi-label data needs iterative stratification: "
                              "pip install iterative-stratification (the 'data' extra)") from None
    return MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
        np.zeros(len(labels)), labels)


# label form (labels.ndim) -> (labels, folds, seed) -> iterator of (train positions, val positions)
STRATIFIERS = {1: _stratified_kfold, 2: _multilabel_kfold}


def fold_assignment(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0..K-1) of every sample: stratified by the labels, seeded, the same for the same input."""
    labels = np.asarray(labels)
    if folds < 2:
        raise ClassifierError(f"folds must be at least 2, got {folds}")
    if len(labels) < folds:
        raise ClassifierError(f"{folds} folds need at least {folds} train+val images, the run has {len(labels)}")
    out = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():  # a class with fewer images than folds: some folds validate without it
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(STRATIFIERS[labels.ndim](labels, folds, int(seed) % (1 << 32))):
            out[val] = k
    return out


def check_fold(folds: int | None, fold: int | None) -> None:
    if not folds:
        if fold is not None:
            raise ClassifierError(f"fold={fold} needs folds=K (the number of folds it is one of)")
        return
    if fold is None:
        raise ClassifierError(f"folds={folds} trains one run per fold: classifier.cross_validate(folds={folds}) "
                              f"(train.py --folds {folds}) runs them all, fold=k one of them")
    if not 1 <= fold <= folds:
        raise ClassifierError(f"fold {fold} is out of range: folds are numbered 1 to {folds}")


def train_val_pool(splits: dict, official: dict) -> Samples:
    """The train and val samples together, in a fixed order (their official split, then position)."""
    train, val = splits["train"], splits.get("val")
    if val is None or not len(val):
        return train
    if train.source == val.source:
        return official[train.source].subset(np.sort(np.concatenate([train.index, val.index])))
    return join_samples([train, val])


def join_samples(parts: list[Samples]) -> Samples:
    """File samples of several official splits as one (source "train+val"): paths identify them."""
    if any(p.in_memory for p in parts):
        raise ClassifierError("k-fold cannot pool in-memory train and val splits of different sources")
    return Samples(labels=np.concatenate([p.labels for p in parts]), paths=[f for p in parts for f in p.paths],
                   root=parts[0].root, source="+".join(p.source for p in parts),
                   index=np.arange(sum(len(p) for p in parts)))


def official_split(official: dict, source: str) -> Samples | None:
    """An official split by name; "train+val" (a fold's pool) joins the named ones."""
    if source in official or "+" not in str(source):
        return official.get(source)
    parts = [official.get(name) for name in source.split("+")]
    return None if any(p is None for p in parts) else join_samples(parts)


def fold_splits(splits: dict, official: dict, folds: int, fold: int, seed: int) -> dict:
    """``splits`` with train and val replaced by fold ``fold`` (1-based) of ``folds`` over train+val."""
    check_fold(folds, fold)
    pool = train_val_pool(splits, official)
    assignment = fold_assignment(pool.labels, folds, seed)
    return {**splits, "train": pool.subset(np.flatnonzero(assignment != fold - 1)),
            "val": pool.subset(np.flatnonzero(assignment == fold - 1))}
