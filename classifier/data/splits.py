"""Train/val/test splits: seeded, stratified, and recorded so a later evaluation uses the same test set.

Official splits are kept: an official test set is the test set, an official val folder the val set.
What is missing is carved from the official train split, per class, so every split keeps the class
proportions. A dataset with train and val but no test (the ImageNet layout: ``train/`` and ``val/``
folders) trains on all of train and has no test split: val picks ``best.pt`` and is the reported
evaluation (``evaluation_split``); a test split is carved from train only when ``test_fraction`` is given.
The record lists which sample went where (positions in the official split for in-memory
datasets, file paths relative to the dataset folder for file datasets).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources import load_dataset
from classifier.data.exclude import exclude_list, exclude_samples
from classifier.data.folds import fold_splits, official_split
from classifier.data.labelsets import apply_task, multilabel_partition
from classifier.fileio import atomic_target
from classifier.errors import ClassifierError, unknown_choice

SPLIT_FORMAT = "classifier-split/1"
SPLITS = ("train", "val", "test")
DEFAULT_TEST_FRACTION = 0.2  # carved from train when a dataset has neither a val nor a test split


def split_dataset(info: DatasetInfo, official: dict[str, Samples], *, val_fraction: float = 0.1,
                  test_fraction: float | None = None, seed: int = 0) -> tuple[dict[str, Samples], dict]:
    """{'train', 'val', 'test'} Samples and a JSON-able record of the split.

    ``test_fraction`` is used only without an official test split, ``val_fraction`` only without an
    official val split; both are fractions of the official train split. ``test_fraction=None`` (the
    default) carves ``DEFAULT_TEST_FRACTION`` when the dataset has no val split either, and nothing when
    it has one (train/val layout: the test split is then empty). Every class keeps at least one
    training sample.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if f is not None and not 0.0 <= f < 1.0:
            raise ClassifierError(f"{name} must be in [0, 1), got {f}")
    if "train" not in official:
        raise ClassifierError(f"dataset {info.name} has no train split")
    train = official["train"]
    carve_test = 0.0 if "test" in official else _test_fraction(test_fraction, official)
    carve_val = 0.0 if "val" in official else val_fraction
    if carve_test + carve_val >= 1.0:
        raise ClassifierError(f"val_fraction + test_fraction must be below 1, got {carve_test + carve_val}")

    # multi-label: iterative stratification, every label kept in train (data/labelsets.py)
    partition = multilabel_partition if train.multilabel else stratified_partition
    test_pos, val_pos, train_pos = partition(train.labels, carve_test, carve_val, seed)
    splits = {
        "train": train.subset(train_pos),
        "val": official["val"] if "val" in official else train.subset(val_pos),
        "test": official["test"] if "test" in official else train.subset(test_pos),
    }
    if len(splits["train"]) == 0:
        raise ClassifierError(f"dataset {info.name}: nothing left to train on after the split")
    record = {
        "format": SPLIT_FORMAT,
        "dataset": info.name,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": None if test_fraction is None else float(test_fraction),
        "classes": list(info.classes),
        "splits": {name: describe(s, len(info.classes)) for name, s in splits.items()},
    }
    return splits, record


def _test_fraction(test_fraction: float | None, official: dict) -> float:
    if test_fraction is not None:
        return test_fraction
    return 0.0 if "val" in official else DEFAULT_TEST_FRACTION


def evaluation_split(record: dict) -> str:
    """The split a run reports at its end (and ``eval.py`` evaluates by default): test, or val when the
    run has no test images (train/val layout)."""
    test = record.get("splits", {}).get("test", {})
    return "test" if test.get("size", 0) else "val"


def split_note(record: dict) -> str | None:
    """One line for the run header about where the evaluation images come from, or None when the
    dataset's own test split is used."""
    splits = record.get("splits", {})
    train, val, test = (splits.get(k, {}) for k in SPLITS)
    if not test.get("size") and val.get("source") == "val":
        return (f"train/val layout: training on all {train.get('size', 0)} images of train/; val/ "
                f"({val.get('size', 0)} images) picks best.pt and is the reported evaluation (labelled val); "
                "no test split (--test-fraction F carves one from train/)")
    if test.get("size") and test.get("source") == "train":
        return (f"no test split in the dataset: {test['size']} images carved from train as the test split "
                f"(test_fraction {record.get('test_fraction') or DEFAULT_TEST_FRACTION:g})")
    return None


def stratified_partition(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int):
    """Sorted positions (test, val, train): per class, a seeded shuffle cut at the allotted counts.

    Totals are round(N * fraction); each class gets its proportional share, the remainders going to
    the classes with the largest fractional parts (seeded tie-break), as in largest-remainder voting.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(_seed_key(seed))
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    n_test = _allocate(counts, test_fraction, counts - 1, rng)
    n_val = _allocate(counts, val_fraction, counts - 1 - n_test, rng)
    parts = ([], [], [])
    for c, nt, nv in zip(classes, n_test, n_val):
        pos = rng.permutation(np.flatnonzero(labels == c))
        parts[0].append(pos[:nt])
        parts[1].append(pos[nt:nt + nv])
        parts[2].append(pos[nt + nv:])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def _allocate(counts: np.ndarray, fraction: float, capacity: np.ndarray, rng) -> np.ndarray:
    capacity = np.maximum(capacity, 0)
    ideal = counts * fraction
    base = np.minimum(np.floor(ideal).astype(np.int64), capacity)
    need = min(int(round(counts.sum() * fraction)), int(capacity.sum())) - int(base.sum())
    order = np.lexsort((rng.random(len(counts)), -(ideal - base)))  # largest remainder first
    while need > 0:
        progressed = False
        for c in order:
            if need > 0 and base[c] < capacity[c]:
                base[c] += 1
                need -= 1
                progressed = True
        if not progressed:
            break
    return base


def describe(samples: Samples, num_classes: int) -> dict:
    """The record entry of one split: its source split and which samples of it, by index or path."""
    entry = {
        "source": samples.source,
        "size": len(samples),
        "class_counts": samples.class_counts(num_classes).tolist(),
    }
    if samples.in_memory:
        entry["indices"] = samples.index.tolist()
    else:
        entry["paths"] = samples.relative_paths()
    return entry


def save_split(record: dict, path: str | os.PathLike) -> Path:
    """Write the record as JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(record))
    return path


def load_split(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClassifierError(f"split file '{path}' does not exist") from None
    except (OSError, ValueError) as err:
        raise ClassifierError(f"split file '{path}' is not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise ClassifierError(f"'{path}' is not a split record (expected format {SPLIT_FORMAT})")
    return record


def samples_from_record(spec: str | None, root: str | os.PathLike, record: dict, split_name: str,
                        *, download: bool = True) -> tuple[DatasetInfo, Samples]:
    """Reload one recorded split (e.g. the test set of a training run). ``spec=None``: the recorded one."""
    info, official = load_dataset(spec or record["dataset"], root, download=download)
    return info, recorded_samples(info, official, record, split_name)


def recorded_samples(info: DatasetInfo, official: dict[str, Samples], record: dict, split_name: str) -> Samples:
    """The samples of one split of ``record`` out of the dataset's official splits, checked against it."""
    if list(record.get("classes", info.classes)) != list(info.classes):
        raise ClassifierError(f"dataset {info.name} has classes {info.classes}, the split record "
                              f"{record.get('classes')}")
    entries = record.get("splits", {})
    if split_name not in entries:
        raise unknown_choice("split", split_name, entries)
    entry = entries[split_name]
    source = official_split(official, entry.get("source"))  # "train+val": a k-fold run's pooled splits
    if source is None:
        raise ClassifierError(f"dataset {info.name} has no '{entry.get('source')}' split, which the record uses")
    if "indices" in entry:
        idx = np.asarray(entry["indices"], dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(source)):
            raise ClassifierError(f"split record indices exceed the {len(source)} samples of "
                                  f"{info.name} {entry['source']}: a different version of the dataset?")
    else:
        where = {p: i for i, p in enumerate(source.relative_paths())}
        missing = [p for p in entry["paths"] if p not in where]
        if missing:
            raise ClassifierError(f"{len(missing)} file(s) of the recorded {split_name} split are missing from "
                                  f"{source.root}, e.g. {missing[0]}")
        idx = [where[p] for p in entry["paths"]]
    samples = source.subset(idx)
    counts = samples.class_counts(len(info.classes)).tolist()
    if "class_counts" in entry and counts != entry["class_counts"]:
        raise ClassifierError(f"the labels of the recorded {split_name} split differ from {info.name} now "
                              f"(class counts {counts} vs {entry['class_counts']}): "
                              "a different version of the dataset?")
    return samples


def select_classes(info: DatasetInfo, splits: dict, wanted) -> tuple[list, dict]:
    """Keep only the ``wanted`` classes (names or indices), relabelled 0..k-1 in the given order."""
    if not wanted:
        return list(info.classes), splits
    index = []
    for w in wanted:
        if isinstance(w, int) or (isinstance(w, str) and w.isdigit()):
            i = int(w)
        elif w in info.classes:
            i = info.classes.index(w)
        else:
            raise ClassifierError(f"class '{w}' not in dataset {info.name} (classes: {', '.join(info.classes)})")
        if not 0 <= i < len(info.classes):
            raise ClassifierError(f"class index {i} out of range 0..{len(info.classes) - 1}")
        index.append(i)
    remap = np.full(len(info.classes), -1, dtype=np.int64)
    remap[index] = np.arange(len(index))
    out = {}
    for name, samples in splits.items():
        if samples.multilabel:  # the chosen columns; an image left with no label stays (an empty label set)
            sub = samples.subset(np.arange(len(samples)))
            sub.labels = samples.labels[:, index]
        else:
            sub = samples.subset(np.flatnonzero(np.isin(samples.labels, index)))
            sub.labels = remap[sub.labels]
        out[name] = sub
    return [info.classes[i] for i in index], out


def cap_per_class(samples: Samples, max_per_class: int, seed: int) -> Samples:
    """At most ``max_per_class`` samples per class, chosen by a seeded shuffle (0: all)."""
    if not max_per_class:
        return samples
    if samples.multilabel:
        raise ClassifierError("--max-per-class caps single-label classes; multi-label images have several "
                              "classes each: leave it at 0")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(samples.labels == c))[:max_per_class] for c in np.unique(samples.labels)]
    return samples.subset(np.sort(np.concatenate(keep)))


@dataclass
class RunSplits:
    """A run's samples per split (after its class selection), its classes, the split record, and a note
    saying where the splits came from (or why there are none)."""

    info: DatasetInfo | None
    classes: list[str]
    splits: dict[str, Samples]
    record: dict | None
    note: str

    def get(self, *names: str) -> Samples | None:
        """The first of ``names`` that this run has (and that holds samples)."""
        return next((self.splits[n] for n in names if n in self.splits and len(self.splits[n])), None)


def run_splits(config: dict, *, split_file: str | os.PathLike | None = None, data_dir: str | None = None,
               dataset=None, download: bool = True) -> RunSplits:
    """The one way a run's train/val/test samples are (re)built, for training, evaluation and export.

    ``config``: the run's config (a dict: dataset, data_dir, fractions, seed, classes). With a
    ``split_file`` that exists, the recorded split is reloaded exactly (missing files or changed labels are
    an error); otherwise the dataset is split with the run's fractions and seed. ``dataset``: another
    spec, or ``(DatasetInfo, official splits)`` already loaded (in-memory arrays), split the same way.
    """
    root = data_dir or config.get("data_dir") or "datasets"
    if isinstance(dataset, tuple):
        info, official = dataset
    else:
        info, official = load_dataset(dataset or config["dataset"], root, download=download)
    info, official = apply_task(info, official, config.get("task"))
    split_file = Path(split_file) if split_file else None
    if split_file is not None and split_file.exists() and not isinstance(dataset, str):
        record = load_split(split_file)
        splits = {name: recorded_samples(info, official, record, name) for name in record.get("splits", {})}
        note = f"the split recorded in {split_file}"
    else:
        splits, record = split_dataset(info, official, val_fraction=config.get("val_fraction", 0.1),
                                       test_fraction=config.get("test_fraction", 0.2), seed=config.get("seed", 0))
        note = f"{info.name} split with the run's fractions and seed"
        splits, record = refine_split(info, official, splits, record, config)
    classes, splits = select_classes(info, splits, config.get("classes"))
    return RunSplits(info, classes, splits, record, note)


def refine_split(info: DatasetInfo, official: dict, splits: dict, record: dict, config: dict) -> tuple[dict, dict]:
    """A k-fold run's fold (``folds``, ``fold``: data/folds.py) and ``exclude`` (data/exclude.py) applied to
    a fresh split, and the record re-described to list exactly the samples left."""
    folds, excluded = config.get("folds"), exclude_list(config.get("exclude"))
    if not folds and config.get("fold") is None and not excluded:
        return splits, record
    if folds or config.get("fold") is not None:
        splits = fold_splits(splits, official, folds, config.get("fold"), config.get("seed", 0))
        record["folds"] = {"folds": int(folds), "fold": int(config["fold"])}
    if excluded:
        before = sum(len(s) for s in splits.values())
        splits = exclude_samples(splits, official, excluded)
        record["excluded"] = before - sum(len(s) for s in splits.values())
    record["splits"] = {name: describe(s, len(info.classes)) for name, s in splits.items()}
    return splits, record


def _seed_key(seed: int) -> int:
    return int(seed) % (1 << 64)  # numpy seeds must be non-negative
