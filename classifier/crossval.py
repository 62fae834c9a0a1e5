"""k-fold cross-validation: one ordinary run per fold, out-of-fold predictions, the spread over folds.

    cv = classifier.cross_validate(model="lenet5", dataset="folder:photos", folds=5, epochs=5)
    cv.summary["cv_val_accuracy_mean"], cv.summary["cv_val_accuracy_std"]
    cv.probs, cv.labels, cv.files                   # out-of-fold probabilities of every train+val image

``train.py --folds K`` is the same call. The folds are stratified over train+val; the test split stays out
(data/folds.py cuts them). Each fold is an ordinary run (``classifier.train`` with ``folds=K, fold=k``: its
config.yaml says so, and ``train.py --resume RUN/fold-k`` or ``eval.py`` work on it as on any run). The
folder RUN (``runs/MODEL-DATASET-cv`` unless ``name`` says otherwise) holds:

* ``folds.json``: K and the settings. A later call with the same settings continues this folder: finished
  folds are kept, an interrupted one resumes from its last.pt, so a call after fold 2 finished starts at 3.
  ``fold=k`` (``--fold k``) runs that fold alone, e.g. one per machine; copy the fold-k folders into one
  RUN and the full call finds them done.
* ``fold-<k>/``: fold k's run, plus ``oof.csv``: the probabilities its best.pt gives its validation
  images, which that model never trained on.
* ``oof.csv``: every train+val image once: file, given_label, fold, one probability column per class.
  Multi-label data: ``given_labels`` (the label set, class names separated by spaces, as in a CSV label
  file) instead of given_label, and per-class sigmoid probabilities.
* ``summary.json``: ``task``, ``cv_val_<metric>_mean`` and ``_std`` (sample standard deviation over the
  folds) for the task's figures (``Task.fold_figure_names`` in tasks.py): single-label accuracy, loss
  (cross-entropy of the out-of-fold probabilities), macro/weighted precision, recall and F1, top-5 accuracy
  and ECE; multi-label mAP, loss (binary cross-entropy), macro/micro F1, macro precision and recall,
  subset accuracy and Hamming loss (decided at 0.5: a fold's fitted thresholds were fitted on the images
  it is scored on); and ``per_fold``: each fold's figures.

Multi-label folds are cut by iterative stratification (data/folds.py), so every label keeps its share in
each fold.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.api import train
from classifier.config import RESUMABLE_KEYS, Config, resolve
from classifier.data import run_splits
from classifier.data.exclude import sample_ids
from classifier.errors import ClassifierError
from classifier.evaluation import run_predictions
from classifier.fileio import atomic_write_text, make_output_dir
from classifier.inference import Predictor
from classifier.inputs import in_memory_dataset
from classifier.tasks import TASKS, Task

FOLDS_FORMAT = "classifier-folds/1"
DEFAULT_FOLDS = 5
# settings that may differ between calls continuing one cross-validation: hardware, logging, which fold
FREE_KEYS = (RESUMABLE_KEYS - {"epochs"}) | {"fold", "folds", "name", "project", "exist_ok"}
LABEL_COLUMNS = {task.label_column: task for task in TASKS.values()}  # oof.csv's 2nd column -> the task
RESERVED = ("file", "fold", *LABEL_COLUMNS)  # a class of one of these names: its column is prob_<name>


@dataclass(repr=False)
class CrossValResult:
    """A cross-validation: ``dir``, ``summary`` (summary.json; empty until every fold is done), the
    out-of-fold ``files``, ``labels`` (class indices; multi-label: a 0/1 matrix), ``probs`` (N x classes)
    and ``fold_of`` (1-based) of the folds done so far, ``classes``, ``folds`` (K), ``folds_done`` and
    ``task`` (tasks.py: "multiclass" or "multilabel")."""

    dir: Path
    summary: dict
    files: list
    labels: np.ndarray
    probs: np.ndarray
    fold_of: np.ndarray
    classes: list
    folds: int
    folds_done: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what each fold was trained with (plus folds/fold)
    arrays: object = field(default=None)  # (DatasetInfo, official splits) of an in-memory dataset
    task: str = "multiclass"

    @property
    def complete(self) -> bool:
        return len(self.folds_done) == self.folds

    def __repr__(self) -> str:
        name = TASKS[self.task].headline
        value = self.summary.get(f"cv_val_{name}_mean")
        figure = f", val_{name}={value:.4f}±{self.summary[f'cv_val_{name}_std']:.4f}" if value is not None else ""
        return f"CrossValResult(dir='{self.dir}', folds={len(self.folds_done)}/{self.folds}{figure})"


def cross_validate(config: str | Path | None = None, *, folds: int | None = None, fold: int | None = None,
                   callbacks: dict | None = None, class_names=None, **settings) -> CrossValResult:
    """Train one run per fold of ``folds`` (default 5) over train+val; see the module docstring.

    ``settings`` are ``classifier.train``'s (``dataset`` may be ``(images, labels)`` arrays with
    ``class_names``); ``fold``: run only fold k (1-based). ``callbacks`` go to every fold's run.
    """
    folds = folds or settings.pop("folds", None) or DEFAULT_FOLDS
    fold = fold if fold is not None else settings.pop("fold", None)
    settings.pop("folds", None)
    dataset = settings.get("dataset")
    arrays = in_memory_dataset(dataset, class_names)
    if arrays is not None:
        settings = {**settings, "dataset": arrays[0].name}
    cfg, given = resolve({**settings, "folds": folds, "fold": 1 if fold is None else fold}, config)
    folds, fold = cfg.folds, None if fold is None else cfg.fold
    if fold is not None and fold > folds:
        raise ClassifierError(f"fold {fold} is out of range: folds are numbered 1 to {folds}")
    fixed = {k: v for k, v in given.items() if k not in FREE_KEYS}
    run_dir = cv_folder(cfg, folds, fixed)
    train_data = {"dataset": dataset, "class_names": class_names} if arrays else {}
    todo = [fold] if fold is not None else list(range(1, folds + 1))
    for k in todo:
        fold_dir = run_dir / f"fold-{k}"
        if (fold_dir / "summary.json").is_file() and (fold_dir / "oof.csv").is_file():
            print(f"fold {k}/{folds}: done, kept ({fold_dir})", flush=True)
            continue
        print(f"fold {k}/{folds}: {fold_dir}", flush=True)
        try:
            _train_fold(fold_dir, given, folds, k, callbacks, train_data)
        except KeyboardInterrupt:
            print(f"cross-validation interrupted in fold {k}: run the same command again to continue "
                  f"(finished folds are kept)", flush=True)
            raise
        write_fold_oof(fold_dir, arrays)
    return collect(run_dir, folds, {**given, "folds": folds}, arrays)


def cv_folder(cfg: Config, folds: int, fixed: dict) -> Path:
    """RUN: the first of NAME, NAME2, ... that is empty or holds a cross-validation with these settings."""
    base = Path(cfg.project) / (cfg.name or f"{cfg.model.replace('/', '_')}-{cfg.dataset.split(':')[0]}-cv")
    plan = {"format": FOLDS_FORMAT, "folds": folds, "settings": json.loads(json.dumps(fixed, default=str))}
    path, n = base, 2
    while path.exists() and any(path.iterdir()):
        try:
            if json.loads((path / "folds.json").read_text()) == plan:
                return path
        except (OSError, ValueError):
            pass
        path, n = base.with_name(f"{base.name}{n}"), n + 1
    make_output_dir(path, "cross-validation folder")
    atomic_write_text(path / "folds.json", json.dumps(plan, indent=1), "cross-validation plan")
    return path


def _train_fold(fold_dir: Path, given: dict, folds: int, k: int, callbacks, train_data: dict) -> None:
    """Fold k's run: continued from its last.pt when one was started, else trained from the beginning."""
    if (fold_dir / "last.pt").is_file():
        resumable = {key: v for key, v in given.items() if key in RESUMABLE_KEYS}
        train(resume=fold_dir, callbacks=callbacks, **resumable, **train_data)
        return
    train(callbacks=callbacks, **{**given, "folds": folds, "fold": k, "project": str(fold_dir.parent),
                                  "name": fold_dir.name, "exist_ok": True, **train_data})


def write_fold_oof(fold_dir: Path, arrays=None) -> Path:
    """fold-k/oof.csv: the probabilities fold k's best.pt gives the images it validated on (and never
    trained on), reloaded through the run's split.json."""
    predictor = Predictor.load(fold_dir / "best.pt")
    predictor.set_trust(None, predictor.ood)  # uncalibrated: the fold's temperature was fitted on these images
    config = predictor.metadata.get("config") or {}
    found = run_splits(config, split_file=fold_dir / "split.json", dataset=arrays, download=False)
    val = found.splits["val"]
    probs, labels, indices, skipped = run_predictions(predictor, val, progress=False)
    if skipped:
        print(f"fold {config.get('fold')}: {len(skipped)} unreadable validation image(s) left out of oof.csv")
    ids = sample_ids(val)
    rows = [(ids[i], y, int(config["fold"]), p) for i, y, p in zip(indices, labels, probs)]
    return write_oof_csv(fold_dir / "oof.csv", rows, found.classes, predictor.task)


def write_oof_csv(path: Path, rows: list, classes: list, task: Task) -> Path:
    """Rows (file, label, fold, probabilities) as CSV: file, the task's label column (the class name, or the
    label set), fold, a probability column per class."""
    header = fixed_columns(task) + prob_columns(classes)
    lines = [header] + [[f, task.label_text(y, classes), k] + [f"{v:.6g}" for v in p] for f, y, k, p in rows]
    atomic_write_text(path, csv_text(lines), "out-of-fold predictions")
    return path


def fixed_columns(task: Task) -> list[str]:
    return ["file", task.label_column, "fold"]


def prob_columns(classes: list) -> list[str]:
    """A probability column per class, named by the class (prefixed ``prob_`` if a name is a fixed column)."""
    clash = any(c in RESERVED for c in classes)
    return [f"prob_{c}" if clash else str(c) for c in classes]


def csv_text(lines: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue()


def read_oof_csv(path: Path, classes: list, task: Task) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(files, labels (indices, or a 0/1 matrix), folds, probabilities) from an oof.csv."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if header != fixed_columns(task) + prob_columns(classes):
        raise ClassifierError(f"{path} does not hold {task.name} out-of-fold probabilities for classes {classes}")
    files = [r[0] for r in body]
    labels = task.parse_labels([r[1] for r in body], classes)
    fold_of = np.array([int(r[2]) for r in body], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    return files, labels, fold_of, probs


def collect(run_dir: Path, folds: int, settings: dict, arrays=None) -> CrossValResult:
    """The folds done so far; with every fold done, RUN/oof.csv and RUN/summary.json written."""
    done = [k for k in range(1, folds + 1) if (run_dir / f"fold-{k}" / "oof.csv").is_file()
            and (run_dir / f"fold-{k}" / "summary.json").is_file()]
    task, classes = _task_and_classes(run_dir, done)
    parts = [read_oof_csv(run_dir / f"fold-{k}" / "oof.csv", classes, task) for k in done]
    files = [f for p in parts for f in p[0]]
    labels, fold_of, probs = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                              for i in (1, 2, 3))
    result = CrossValResult(run_dir, {}, files, labels.astype(np.int64), probs.reshape(len(files), len(classes)),
                            fold_of.astype(np.int64), classes, folds, done, settings, arrays, task.name)
    if len(done) < folds:
        print(f"folds done: {', '.join(map(str, done)) or 'none'} of {folds}; the same command without --fold "
              f"runs the others ({run_dir})", flush=True)
        return result
    if len(set(files)) != len(files):
        raise ClassifierError(f"{run_dir}: an image is in the validation split of two folds: the fold "
                              "folders come from different cross-validations")
    write_oof_csv(run_dir / "oof.csv", list(zip(files, labels, fold_of.tolist(), probs)), classes, task)
    result.summary = summarise(run_dir, parts, classes, task)
    atomic_write_text(run_dir / "summary.json", json.dumps(result.summary, indent=2), "cross-validation summary")
    name = task.headline
    value, spread = result.summary.get(f"cv_val_{name}_mean"), result.summary.get(f"cv_val_{name}_std")
    shown = f"{value:.2%} ± {spread:.2%}" if value is not None else "undefined"
    print(f"cross-validation, {folds} folds: val {name} {shown} (mean ± std over folds); "
          f"out-of-fold predictions of {len(files)} images: {run_dir / 'oof.csv'}", flush=True)
    return result


def summarise(run_dir: Path, parts: list, classes: list, task: Task) -> dict:
    per_fold = []
    for k, (_, labels, _, probs) in enumerate(parts, 1):
        run = json.loads((run_dir / f"fold-{k}" / "summary.json").read_text())
        per_fold.append({"fold": k, "images": len(labels), "best_epoch": run.get("best_epoch"),
                         **{f"val_{name}": v for name, v in task.fold_figures(labels, probs, classes).items()}})
    summary = {"task": task.name, "folds": len(parts), "images": sum(len(p[1]) for p in parts), "classes": classes}
    for name in task.fold_figure_names:
        values = [f[f"val_{name}"] for f in per_fold if f[f"val_{name}"] is not None]
        if values:
            summary[f"cv_val_{name}_mean"] = float(np.mean(values))
            summary[f"cv_val_{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    summary["per_fold"] = per_fold
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def _task_and_classes(run_dir: Path, done: list) -> tuple[Task, list]:
    """The task (by the label column) and the classes (the probability columns) of the first finished
    fold's oof.csv."""
    if not done:
        return TASKS["multiclass"], []
    path = run_dir / f"fold-{done[0]}" / "oof.csv"
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    task = LABEL_COLUMNS.get(header[1] if len(header) > 1 else None)
    if task is None:
        raise ClassifierError(f"{path} is not an out-of-fold file (its second column is none of "
                              f"{', '.join(LABEL_COLUMNS)})")
    columns = header[3:]
    if all(c.startswith("prob_") for c in columns) and any(c[5:] in RESERVED for c in columns):
        columns = [c[5:] for c in columns]
    return task, columns
