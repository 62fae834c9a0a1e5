"""``classifier.tune``: a hyperparameter search whose trials are ordinary runs, and what it leaves behind.

RUN (default runs/MODEL-DATASET-tune, never numbered: running the same command again continues the study):

    study.db      the Optuna study (SQLite); N trials is the total, so a re-run only adds what is missing
    tune.yaml     the settings and space of the study (a re-run with other settings is refused)
    trials/NNNN/  one run folder per trial (config.yaml holds the sampled values)
    tune.csv      one row per trial: number, state, sampled values, best validation accuracy, epochs, time
    history.png, importance.png   Optuna's optimisation history and parameter importances (when they can be drawn)
    best.yaml     the settings of the best trial, for ``train.py --config RUN/best.yaml``

Trials are chosen on validation accuracy, never on the test split (trials run with eval_test false).
"""
from __future__ import annotations

import csv
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from classifier.config import RESUMABLE_KEYS, resolve
from classifier.errors import ClassifierError, unknown_choice
from classifier.fileio import atomic_target, atomic_write_text, make_output_dir
from classifier.inputs import in_memory_dataset
from classifier.search.space import build_space, default_point, describe
from classifier.search.trial import STUDY_NAME, Study
from classifier.tracking import Tracker


def _optuna_backend(study, trials, **options):
    from classifier.search.optuna_backend import run

    return run(study, trials, **options)


def _ray_backend(study, trials, **options):
    from classifier.search.ray_backend import run  # imports Ray only when asked for

    return run(study, trials, **options)


BACKENDS = {"optuna": _optuna_backend, "ray": _ray_backend}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class TuneResult:
    """A finished (or stopped) search: ``dir`` (RUN), ``trials`` (tune.csv's rows), ``best`` (the best trial's
    row, or None), ``best_yaml`` (its settings file), ``command`` (what trains the final model)."""

    dir: Path
    trials: list
    best: dict | None
    best_yaml: Path | None
    command: str | None

    def __repr__(self) -> str:
        best = f", best val_acc={self.best['val_acc']:.4f} (trial {self.best['trial']})" if self.best else ""
        return f"TuneResult(dir='{self.dir}', trials={len(self.trials)}{best})"


def parse_duration(value) -> float | None:
    """``30m``, ``2h``, ``1h30m``, ``90s``, or a number of seconds -> seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((\d+(\.\d+)?)[smhd])+|\d+(\.\d+)?", text)
        if not parts:
            raise ClassifierError(f"--tune-time takes a duration such as 30m, 2h, 1h30m or 90s, got '{value}'")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            seconds = sum(float(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text))
    if seconds <= 0:
        raise ClassifierError(f"--tune-time must be positive, got '{value}'")
    return seconds


def tune(config: str | Path | None = None, *, trials: int, time_limit=None, backend: str = "optuna",
         search: dict | None = None, resources=None, parallel: int | None = None, pruner=None,
         callbacks: dict | None = None, class_names=None, **settings) -> TuneResult:
    """Search hyperparameters over ``trials`` runs of ``classifier.train(config, **settings)``.

    ``trials``: the study's total (a re-run of the same search adds only what is missing). ``time_limit``:
    a wall-time bound (seconds, or "30m"); running trials stop at their next epoch end. ``backend``:
    "optuna" (trials one after another here) or "ray" (Ray Tune, trials in parallel on ``resources`` per
    trial, e.g. {"cpu": 2, "gpu": 0.5} or "cpu=2,gpu=0.5"; at most ``parallel`` at a time). ``search``: the
    space (the config key ``search``; default per mode, classifier/search/space.py). ``pruner``: an Optuna
    pruner for the optuna backend (default: median rule). ``callbacks``: added to every trial (as ``train``).
    """
    if backend not in BACKENDS:
        raise unknown_choice("tune backend", str(backend), BACKENDS)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ClassifierError(f"--tune takes a number of trials >= 1, got {trials!r}")
    if settings.get("resume"):
        raise ClassifierError("a search starts its own runs: drop --resume (re-run the search to continue it)")
    if search is not None:
        settings["search"] = search
    seconds = parse_duration(time_limit)
    arrays = in_memory_dataset(settings.get("dataset"), class_names)
    values = {**settings, "dataset": arrays[0].name} if arrays is not None else dict(settings)
    cfg, given = resolve(values, config)
    space = build_space(cfg.search, cfg, given)
    run_dir = Path(cfg.project) / (cfg.name or f"{cfg.model.replace('/', '_')}-{cfg.dataset.split(':')[0]}-tune")
    trial_given = {k: v for k, v in given.items() if k not in ("search", "name", "project", "exist_ok")}
    _check_same_study(run_dir, trial_given, describe(space))
    study = Study(run_dir, {**trial_given, **({"dataset": settings["dataset"]} if arrays is not None else {})},
                  space, cfg.epochs, class_names=class_names,
                  deadline=time.time() + seconds if seconds else None, callbacks=callbacks or {},
                  defaults=default_point(space, cfg))
    print(f"search: {trials} trials of {cfg.model} ({cfg.mode}) on {cfg.dataset}, {cfg.epochs} epochs each, "
          f"backend {backend}; space: {', '.join(space)}; study: {run_dir / 'study.db'}", flush=True)
    tracker = _start_tracking(cfg, study, trial_given)
    status = "FAILED"
    try:
        BACKENDS[backend](study, trials, seed=cfg.seed, resources=resources, parallel=parallel, pruner=pruner)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"search interrupted: run the same command again to continue the study in {run_dir / 'study.db'}",
              flush=True)
        raise
    finally:  # also after Ctrl-C: the results so far, and the study stays resumable
        result = write_results(study, trial_given, plots=cfg.plots)
        if tracker is not None:
            _end_tracking(tracker, result, status)
    return result


def _start_tracking(cfg, study: Study, given: dict):
    """--mlflow: one MLflow run for the search (its settings, space, results), parent of the trials' runs."""
    if not cfg.mlflow:
        return None
    tracker = Tracker(cfg.mlflow)
    params = {**{f"search.{k}": v for k, v in describe(study.space).items()}, **given}
    study.mlflow_parent = tracker.start(study.dir.name, params, {"run_dir": str(study.dir.resolve()),
                                                                 "kind": "search"})
    return tracker


def _end_tracking(tracker, result: "TuneResult", status: str) -> None:
    if result.best:
        tracker.metrics({"best_val_acc": result.best["val_acc"], "best_trial": result.best["trial"]},
                        step=len(result.trials))
    for name in ("tune.csv", "best.yaml", "history.png", "importance.png"):
        tracker.artifact(result.dir / name)
    tracker.end(status)


def _check_same_study(run_dir: Path, given: dict, space: dict) -> None:
    """RUN/tune.yaml: a re-run continues the study only with the same settings and space."""
    # what the trials compute; logging and hardware (a resume's changeable keys, but epochs) may differ
    record = {"settings": _plain({k: v for k, v in given.items() if k == "epochs" or k not in RESUMABLE_KEYS}),
              "space": space}
    path = run_dir / "tune.yaml"
    if path.is_file():
        saved = yaml.safe_load(path.read_text()) or {}
        for part in ("settings", "space"):
            if saved.get(part) != record[part]:
                diff = sorted(set(saved.get(part) or {}) ^ set(record[part]) | {
                    k for k in record[part] if k in (saved.get(part) or {}) and saved[part][k] != record[part][k]})
                raise ClassifierError(f"{run_dir} holds a search with other {part} ({', '.join(diff)}): give "
                                      "the same ones to continue it, or --name for a new search")
        return
    if (run_dir / "trials").is_dir() and any((run_dir / "trials").iterdir()) and not (run_dir / "study.db").is_file():
        raise ClassifierError(f"{run_dir}/trials has runs but no study.db: give --name for a new search")
    make_output_dir(run_dir, "search folder")
    atomic_write_text(path, "# the search's settings and space; a re-run continues it only with the same ones\n"
                      + yaml.safe_dump(record, sort_keys=True), "search record")


def _plain(value):
    """YAML-safe copy (tuples -> lists) for comparing settings across runs of the command."""
    return yaml.safe_load(yaml.safe_dump(value)) if value is not None else None


def study_rows(study: Study) -> list[dict]:
    """One row per trial of the stored study: number, state, sampled values, best validation accuracy,
    epochs reported, seconds, run folder."""
    from classifier.search.optuna_backend import stored_trials

    rows = []
    for t in stored_trials(study):
        reported = list(t.intermediate_values.values())
        value = t.value if t.value is not None else (max(reported) if reported else None)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name, **{k: t.params.get(k) for k in study.space},
                     "val_acc": value, "epochs": len(reported),
                     "time_s": round(seconds, 1) if seconds is not None else None,
                     "run_dir": str(study.trial_dir(t.number))})
    return rows


def write_results(study: Study, given: dict, plots: bool = True) -> TuneResult:
    """tune.csv, the plots, best.yaml, and the command that trains the final model (printed)."""
    rows = study_rows(study)
    fields = ["trial", "state", *study.space, "val_acc", "epochs", "time_s", "run_dir"]
    with atomic_target(study.dir / "tune.csv", "search results") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if plots:
        _plots(study)
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["val_acc"] is not None]
    counts = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
    print(f"search: {len(rows)} trials (" + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
          + f"); results: {study.dir / 'tune.csv'}", flush=True)
    if not complete:
        return TuneResult(study.dir, rows, None, None, None)
    best = max(complete, key=lambda r: (r["val_acc"], -r["trial"]))
    best_values = {**given, **{k: best[k] for k in study.space}, "name": f"{study.dir.name}-best"}
    if "project" not in best_values:
        best_values["project"] = str(study.dir.parent)
    path = study.dir / "best.yaml"
    arrays = str(given.get("dataset", "")).startswith("arrays:")
    command = (f"classifier.train('{path}', dataset=(images, labels))" if arrays
               else f"python train.py --config {path}")
    atomic_write_text(path, f"# the best trial of {study.dir} (trial {best['trial']}, validation accuracy "
                      f"{best['val_acc']:.4f}); train the final model: {command}\n"
                      + yaml.safe_dump(_plain(best_values), sort_keys=False), "best settings")
    print(f"best: trial {best['trial']}, validation accuracy {best['val_acc']:.2%}: "
          + ", ".join(f"{k}={_short(best[k])}" for k in study.space), flush=True)
    print(f"train the final model: {command}", flush=True)
    return TuneResult(study.dir, rows, best, path, command)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _plots(study: Study) -> None:
    """Optuna's history and importance plots (matplotlib); a plot that cannot be drawn is skipped, said so."""
    import optuna

    try:
        ostudy = optuna.load_study(study_name=STUDY_NAME, storage=study.storage_url)
        from optuna.visualization import matplotlib as oplt
    except (KeyError, ImportError) as err:  # no study yet, or matplotlib missing: nothing to draw
        print(f"search plots skipped: {err}")
        return
    import matplotlib.pyplot as plt

    plots = (("history.png", oplt.plot_optimization_history), ("importance.png", oplt.plot_param_importances))
    for name, draw in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw(ostudy)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            figure.savefig(study.dir / name, dpi=100)
            plt.close(figure)
        except Exception as err:  # noqa: BLE001 - e.g. importances need two finished trials
            print(f"search plot {name} skipped: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
