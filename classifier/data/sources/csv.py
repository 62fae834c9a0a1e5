"""CSV label files: ``csv:PATH/labels.csv``, the layout of Kaggle sets and fastai's PASCAL example.

Columns (header names, any case): the file (``filename``; also ``file``, ``image``, ``path``), its labels
(``labels`` or ``label``: class names separated by spaces; an empty cell is an image with no label) and,
optionally, ``split`` (``train`` / ``val`` / ``test``; ``valid``, ``validation`` accepted). Without a split
column the val and test splits are carved from the rows as for a folder. File paths are relative to the
CSV's folder, or absolute.

Every row must be usable: a missing file, a file that is not an image, an unknown split value, a file
listed twice or a row without a file is an error naming the rows (line numbers of the CSV, the header
being line 1) and files, never a traceback and never a silent drop.

Classes are the sorted label names. When every row has exactly one label the labels are class indices
(single-label data, trained exactly as the same images in class folders would be: the rows are ordered by
class, then file, as a folder listing is); otherwise they are a 0/1 matrix (multi-label).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.data.images import image_size
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources.registry import register_source
from classifier.data.statistics import image_stats
from classifier.errors import ClassifierError

PREFIX = "csv:"
FILE_COLUMNS = ("filename", "file", "image", "path")
LABEL_COLUMNS = ("labels", "label")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SHOWN_PROBLEMS = 5  # bad rows named in the error message


@dataclass
class LabelRow:
    line: int  # line number in the CSV (header: 1)
    file: str  # as written in the CSV
    path: str  # absolute, or joined to the CSV's folder
    labels: list[str]
    split: str | None = None


@dataclass
class LabelTable:
    """A parsed CSV: its rows (in file order), the classes (sorted label names) and the bad rows."""

    rows: list[LabelRow]
    classes: list[str]
    root: str
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (line, file, reason)

    @property
    def multilabel(self) -> bool:
        return any(len(r.labels) != 1 for r in self.rows)

    def labels(self, rows: list[LabelRow] | None = None) -> np.ndarray:
        """Class indices (N,) when every row has one label, else a 0/1 matrix (N, C)."""
        rows = self.rows if rows is None else rows
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[r.labels[0]] for r in rows], np.int64)
        out = np.zeros((len(rows), len(self.classes)), np.int64)
        for k, r in enumerate(rows):
            out[k, [index[c] for c in r.labels]] = 1
        return out


def parse_label_csv(path: str | os.PathLike, *, check_files: bool = True) -> LabelTable:
    """Read a label CSV; rows that cannot be used are listed in ``problems`` (see ``load_label_csv``).

    ``check_files``: also check that each file exists and has a readable image header.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClassifierError(f"label file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ClassifierError(f"cannot read label file '{path}' ({err})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise ClassifierError(f"label file '{path}' is empty (expected a header: filename,labels[,split])")
    names = [h.strip().lower() for h in header]
    file_col = _column(names, FILE_COLUMNS, path, "file")
    label_col = _column(names, LABEL_COLUMNS, path, "label")
    split_col = names.index("split") if "split" in names else None
    root = str(path.parent)
    rows, problems, seen = [], [], {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        cell = lambda i: cells[i].strip() if i is not None and i < len(cells) else ""  # noqa: E731
        file = cell(file_col)
        if not file:
            problems.append((line, "", "no file name"))
            continue
        full = file if os.path.isabs(file) else os.path.join(root, file)
        split = None
        if split_col is not None:
            split = SPLIT_VALUES.get(cell(split_col).lower())
            if split is None:
                problems.append((line, file, f"split '{cell(split_col)}' is not train, val or test"))
                continue
        key = os.path.normpath(full)
        if key in seen:
            problems.append((line, file, f"listed twice (also line {seen[key]}): give one row with all its labels"))
            continue
        seen[key] = line
        if check_files:
            reason = _file_problem(full)
            if reason:
                problems.append((line, file, reason))
                continue
        labels = list(dict.fromkeys(cell(label_col).split()))  # order kept, repeats dropped
        rows.append(LabelRow(line, file, full, labels, split))
    classes = sorted({c for r in rows for c in r.labels})
    return LabelTable(rows, classes, root, problems)


def _column(names: list[str], accepted: tuple, path: Path, what: str) -> int:
    for name in accepted:
        if name in names:
            return names.index(name)
    raise ClassifierError(f"label file '{path}' has no {what} column (accepted: {', '.join(accepted)}; "
                          f"found: {', '.join(names)})")


def _file_problem(path: str) -> str | None:
    if not os.path.isfile(path):
        return "file not found"
    if image_size(path) is None:
        return "not a readable image"
    return None


def load_label_csv(path: str | os.PathLike) -> LabelTable:
    """``parse_label_csv``, with bad rows an error naming them (first few, and how many)."""
    table = checked(parse_label_csv(path), path)
    if len(table.classes) < 2 and not table.multilabel:
        raise ClassifierError(f"label file '{path}' has {len(table.classes)} class(es); at least 2 are needed")
    if not table.classes:
        raise ClassifierError(f"label file '{path}' has no labels at all")
    return table


def checked(table: LabelTable, path) -> LabelTable:
    """The table, or the error naming its bad rows (first few, and how many) or saying it lists nothing."""
    if table.problems:
        shown = "; ".join(f"line {line} '{file}': {reason}" for line, file, reason in table.problems[:SHOWN_PROBLEMS])
        more = len(table.problems) - SHOWN_PROBLEMS
        raise ClassifierError(f"{path}: {len(table.problems)} bad row(s): {shown}" + (f"; and {more} more" if more > 0
                                                                                     else ""))
    if not table.rows:
        raise ClassifierError(f"label file '{path}' lists no images")
    return table


def labelled_csv(path: str | os.PathLike, model_classes: list[str], multilabel: bool) -> Samples:
    """Every row of a label CSV (its split column ignored), labelled for a model's classes by name, for
    evaluation. Single-label models: class indices, -1 for a class the model does not know (predicted and
    listed, not counted); multi-label models: a 0/1 matrix over the model's classes (unknown labels
    dropped). Unknown names are printed."""
    table = checked(parse_label_csv(path), path)
    if table.multilabel and not multilabel:
        raise ClassifierError(f"'{path}' gives some images several labels or none, and the model is single-label")
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = sorted({c for r in table.rows for c in r.labels} - set(index))
    if unknown:
        print(f"labels the model does not know (not counted): {', '.join(unknown[:10])}"
              + (" ..." if len(unknown) > 10 else ""))
    if multilabel:
        labels = np.zeros((len(table.rows), len(model_classes)), np.uint8)
        for k, r in enumerate(table.rows):
            labels[k, [index[c] for c in r.labels if c in index]] = 1
    else:
        labels = np.array([index.get(r.labels[0], -1) for r in table.rows], np.int64)
    return Samples(labels=labels, paths=[r.path for r in table.rows], root=table.root, source="test")


def ordered_rows(table: LabelTable, rows: list[LabelRow]) -> list[LabelRow]:
    """Single-label rows ordered as a folder listing is (by class, then file); multi-label rows by file."""
    index = {c: i for i, c in enumerate(table.classes)}
    if table.multilabel:
        return sorted(rows, key=lambda r: r.path)
    return sorted(rows, key=lambda r: (index[r.labels[0]], r.path))


@register_source("csv", takes_path=True, augment="light")
def load(path, root=None, download=False):
    """A CSV of image files and their labels (filename,labels[,split]); single- or multi-label."""
    return load_csv(path)


def load_csv(spec_path: str):
    """(DatasetInfo, {split: Samples}) of a label CSV: the splits its split column names (else one train
    split, the others carved as for a folder)."""
    table = load_label_csv(spec_path)
    splits = {}
    for split in ("train", "val", "test"):
        rows = ordered_rows(table, [r for r in table.rows if (r.split or "train") == split])
        if rows:
            splits[split] = Samples(labels=table.labels(rows), paths=[r.path for r in rows], root=table.root,
                                    source=split)
    if "train" not in splits:
        raise ClassifierError(f"label file '{spec_path}' has no train rows (split column)")
    channels, size, mean, std = image_stats(splits["train"].paths)
    info = DatasetInfo(f"{PREFIX}{spec_path}", table.classes, channels, size, mean, std, multilabel=table.multilabel)
    return info, splits
