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
* ``summary.json``: ``cv_val_<metric>_mean`` and ``_std`` (sample standard deviation over the folds) for
  accuracy, loss (cross-entropy of the out-of-fold probabilities), macro/weighted precision, recall and
  F1, top-5 accuracy and ECE, and ``per_fold``: each fold's figures.
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
from classifier.metrics import compute_metrics

FOLDS_FORMAT = "classifier-folds/1"
DEFAULT_FOLDS = 5
MULTILABEL_REFUSED = "out-of-fold summaries are for single-label data (multi-label: not yet)"
# settings that may differ between calls continuing one cross-validation: hardware, logging, which fold
FREE_KEYS = (RESUMABLE_KEYS - {"epochs"}) | {"fold", "folds", "name", "project", "exist_ok"}
FIXED_COLUMNS = ("file", "given_label", "fold")
METRICS = ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
           "weighted_recall", "weighted_f1", "top5_accuracy", "ece")  # summary.json: cv_val_<metric>_mean/_std


@dataclass(repr=False)
class CrossValResult:
    """A cross-validation: ``dir``, ``summary`` (summary.json; empty until every fold is done), the
    out-of-fold ``files``, ``labels`` (class indices), ``probs`` (N x classes) and ``fold_of`` (1-based)
    of the folds done so far, ``classes``, ``folds`` (K) and ``folds_done``."""

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

    @property
    def complete(self) -> bool:
        return len(self.folds_done) == self.folds

    def __repr__(self) -> str:
        acc = self.summary.get("cv_val_accuracy_mean")
        figure = f", val_accuracy={acc:.4f}±{self.summary['cv_val_accuracy_std']:.4f}" if acc is not None else ""
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
    if cfg.task == "multilabel" or (arrays is not None and arrays[0].multilabel):  # before any fold trains
        raise ClassifierError(MULTILABEL_REFUSED)
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
    if val.multilabel:
        raise ClassifierError(MULTILABEL_REFUSED)
    probs, labels, indices, skipped = run_predictions(predictor, val, progress=False)
    if skipped:
        print(f"fold {config.get('fold')}: {len(skipped)} unreadable validation image(s) left out of oof.csv")
    ids = sample_ids(val)
    rows = [(ids[i], int(y), int(config["fold"]), p) for i, y, p in zip(indices, labels, probs)]
    return write_oof_csv(fold_dir / "oof.csv", rows, found.classes)


def write_oof_csv(path: Path, rows: list, classes: list) -> Path:
    """Rows (file, label index, fold, probabilities) as CSV: file, given_label, fold, a column per class."""
    header = list(FIXED_COLUMNS) + prob_columns(classes)
    lines = [header] + [[f, classes[y], k] + [f"{v:.6g}" for v in p] for f, y, k, p in rows]
    text = csv_text(lines)
    atomic_write_text(path, text, "out-of-fold predictions")
    return path


def prob_columns(classes: list) -> list[str]:
    """A probability column per class, named by the class (prefixed ``prob_`` if a name is a fixed column)."""
    clash = any(c in FIXED_COLUMNS for c in classes)
    return [f"prob_{c}" if clash else str(c) for c in classes]


def csv_text(lines: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue()


def read_oof_csv(path: Path, classes: list) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(files, label indices, folds, probabilities) from an oof.csv."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    if header != list(FIXED_COLUMNS) + prob_columns(classes):
        raise ClassifierError(f"{path} does not hold out-of-fold probabilities for classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    files = [r[0] for r in body]
    labels = np.array([index[r[1]] for r in body], dtype=np.int64)
    fold_of = np.array([int(r[2]) for r in body], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    return files, labels, fold_of, probs


def fold_metrics(labels: np.ndarray, probs: np.ndarray, classes: list) -> dict:
    """A fold's validation figures (METRICS) from its out-of-fold probabilities."""
    m = compute_metrics(labels, probs, classes)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
    top5 = m["topk_accuracy"].get("5", 1.0 if len(classes) <= 5 else None)
    return {"accuracy": m["accuracy"], "loss": loss, "macro_precision": m["macro_precision"],
            "macro_recall": m["macro_recall"], "macro_f1": m["macro_f1"],
            "weighted_precision": m["weighted_precision"], "weighted_recall": m["weighted_recall"],
            "weighted_f1": m["weighted_f1"], "top5_accuracy": top5, "ece": m["ece"]}


def collect(run_dir: Path, folds: int, settings: dict, arrays=None) -> CrossValResult:
    """The folds done so far; with every fold done, RUN/oof.csv and RUN/summary.json written."""
    done = [k for k in range(1, folds + 1) if (run_dir / f"fold-{k}" / "oof.csv").is_file()
            and (run_dir / f"fold-{k}" / "summary.json").is_file()]
    classes = _classes_of(run_dir, done)
    parts = [read_oof_csv(run_dir / f"fold-{k}" / "oof.csv", classes) for k in done]
    files = [f for p in parts for f in p[0]]
    labels, fold_of, probs = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                              for i in (1, 2, 3))
    result = CrossValResult(run_dir, {}, files, labels.astype(np.int64), probs.reshape(len(files), len(classes)),
                            fold_of.astype(np.int64), classes, folds, done, settings, arrays)
    if len(done) < folds:
        print(f"folds done: {', '.join(map(str, done)) or 'none'} of {folds}; the same command without --fold "
              f"runs the others ({run_dir})", flush=True)
        return result
    if len(set(files)) != len(files):
        raise ClassifierError(f"{run_dir}: an image is in the validation split of two folds: the fold "
                              "folders come from different cross-validations")
    write_oof_csv(run_dir / "oof.csv", list(zip(files, labels.tolist(), fold_of.tolist(), probs)), classes)
    result.summary = summarise(run_dir, parts, classes)
    atomic_write_text(run_dir / "summary.json", json.dumps(result.summary, indent=2), "cross-validation summary")
    acc, spread = result.summary["cv_val_accuracy_mean"], result.summary["cv_val_accuracy_std"]
    print(f"cross-validation, {folds} folds: val accuracy {acc:.2%} ± {spread:.2%} (mean ± std over folds); "
          f"out-of-fold predictions of {len(files)} images: {run_dir / 'oof.csv'}", flush=True)
    return result


def summarise(run_dir: Path, parts: list, classes: list) -> dict:
    per_fold = []
    for k, (_, labels, _, probs) in enumerate(parts, 1):
        run = json.loads((run_dir / f"fold-{k}" / "summary.json").read_text())
        per_fold.append({"fold": k, "images": len(labels), "best_epoch": run.get("best_epoch"),
                         **{f"val_{name}": v for name, v in fold_metrics(labels, probs, classes).items()}})
    summary = {"folds": len(parts), "images": sum(len(p[1]) for p in parts), "classes": classes}
    for name in METRICS:
        values = [f[f"val_{name}"] for f in per_fold if f[f"val_{name}"] is not None]
        if values:
            summary[f"cv_val_{name}_mean"] = float(np.mean(values))
            summary[f"cv_val_{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    summary["per_fold"] = per_fold
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def _classes_of(run_dir: Path, done: list) -> list:
    """The classes, from the probability columns of the first finished fold's oof.csv."""
    if not done:
        return []
    with open(run_dir / f"fold-{done[0]}" / "oof.csv", newline="") as f:
        columns = next(csv.reader(f))[len(FIXED_COLUMNS):]
    if all(c.startswith("prob_") for c in columns) and any(c[5:] in FIXED_COLUMNS for c in columns):
        columns = [c[5:] for c in columns]
    return columns
