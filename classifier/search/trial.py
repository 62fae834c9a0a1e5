"""One trial of a search: an ordinary run (``classifier.train``) under RUN/trials/NNNN with the sampled values.

Both backends call ``run_trial``; what differs is how an epoch's validation accuracy is reported (Optuna's
pruner or Ray Tune's scheduler) and how a trial that should stop is told so. Trials are chosen on
validation, never on test: every trial runs with ``eval_test=False``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from classifier.api import train
from classifier.errors import ClassifierError
from classifier.tracking import parent_run

STUDY_NAME = "tune"  # the study's name inside RUN/study.db


@dataclass
class Study:
    """What every trial of one search shares (picklable: Ray ships it to its workers)."""

    dir: Path  # RUN: study.db, tune.csv, best.yaml, trials/
    settings: dict  # the settings given (dataset: a spec, or the (images, labels) arrays)
    space: dict  # config key -> optuna distribution
    epochs: int
    class_names: list | None = None
    deadline: float | None = None  # time.time() after which a trial stops at its next epoch end
    callbacks: dict = field(default_factory=dict)  # the user's, fired before the search's own
    mlflow_parent: str | None = None  # --mlflow: the search's MLflow run, parent of the trials' runs
    defaults: dict = field(default_factory=dict)  # the first trial's values: the plain run's (space.default_point)

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{(self.dir / 'study.db').resolve()}"

    def trial_dir(self, number: int) -> Path:
        return self.dir / "trials" / f"{number:04d}"


@dataclass
class TrialOutcome:
    value: float | None  # the best validation accuracy over the epochs run
    epochs: int
    stopped: str | None = None  # "pruned" or "time": the trial ended before its last epoch


def trial_settings(study: Study, number: int, params: dict) -> dict:
    """The trial's settings: the study's, the sampled values, its folder, and no test-split evaluation."""
    folder = study.trial_dir(number)
    return {**study.settings, **params, "project": str(folder.parent), "name": folder.name, "exist_ok": True,
            "eval_test": False}


def run_trial(study: Study, number: int, params: dict, report) -> TrialOutcome:
    """Train one trial. ``report(epoch, val_acc)`` is called after every epoch; it returns True when the
    search wants the trial stopped (pruned)."""
    stopped = {}

    def on_epoch_end(run, row):
        if row["val_acc"] is None:
            raise ClassifierError("a search chooses on validation accuracy: the runs need a validation split "
                                  "(--val-fraction above 0, or a val/ folder)")
        last = row["epoch"] >= run.cfg.epochs  # a finished trial is complete, whatever a pruner says
        if report(row["epoch"], row["val_acc"]) and not last:
            stopped["why"] = "pruned"
            run.stop(f"trial {number} pruned by the search at epoch {row['epoch']}")
        elif study.deadline is not None and time.time() > study.deadline and not last:
            stopped["why"] = "time"
            run.stop(f"trial {number} stopped: the search's time is up")

    callbacks = {event: list(fns) if isinstance(fns, (list, tuple)) else [fns]
                 for event, fns in (study.callbacks or {}).items()}
    callbacks.setdefault("on_epoch_end", []).append(on_epoch_end)
    with parent_run(study.mlflow_parent):
        result = train(callbacks=callbacks, class_names=study.class_names, **trial_settings(study, number, params))
    accuracies = [r["val_acc"] for r in result.history if r.get("val_acc") is not None]
    return TrialOutcome(max(accuracies) if accuracies else None, len(result.history), stopped.get("why"))
