"""MLflow logging of a run (``--mlflow [URI]``), as training callbacks next to TensorBoard's.

Logged: the run's settings as parameters, every epoch's metrics (step = epoch), the end-of-run figures
(test accuracy and the report's metrics), and as artefacts best.pt, any exported ONNX model in the run folder,
curves.png, the test report and its figures, config.yaml and history.csv. A search's trials are logged as
child runs of one parent run per search (``parent_run``).

Where: a tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``, ...), or a folder (``--mlflow`` alone:
./mlruns), which is kept as MLflow's SQLite store ``FOLDER/mlflow.db`` with artefacts in ``FOLDER/artifacts``
(MLflow 3 refuses new plain-file stores). Experiment: $MLFLOW_EXPERIMENT_NAME, else "classifier"; created
when missing. The MLflow run id is kept in the run folder's mlflow.json, so a resumed run logs on into it.

A tracker failure (unreachable server, missing package, refused experiment) prints one warning and turns
the logging off for the run: it never stops training.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

from classifier.fileio import atomic_write_text

SUMMARY_METRICS = ("test_accuracy", "val_accuracy", "best_epoch", "train_time_s", "val_loss")
DEFAULT_EXPERIMENT = "classifier"
PARAM_LIMIT = 6000  # MLflow's longest parameter value
_parent = {"run_id": None}  # the search's parent run while its trials train (parent_run)


class TrackingWarning(UserWarning):
    """The experiment tracker failed; training goes on without it."""


def tracking_uri(value: str) -> tuple[str, str | None]:
    """The tracking URI for ``--mlflow VALUE`` and where a new experiment keeps its artefacts (folders only)."""
    if "://" in value or value.startswith(("file:", "databricks")):
        return value, None
    folder = Path(value).expanduser().resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")


@contextlib.contextmanager
def parent_run(run_id: str | None):
    """Runs started inside are logged as children of ``run_id`` (a search's trials under the search)."""
    previous, _parent["run_id"] = _parent["run_id"], run_id
    try:
        yield
    finally:
        _parent["run_id"] = previous


@contextlib.contextmanager
def _fail_fast():
    """No long retry loops against an unreachable server (MLflow's default retries for minutes); a value the
    user set in the environment wins. Restored after each call."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tracker:
    """One MLflow run, through ``MlflowClient`` (no global active run: trials and notebooks stay independent).
    Every call is guarded: the first failure warns once and turns the tracker off."""

    def __init__(self, uri: str, *, experiment: str | None = None):
        self.uri, self.artifact_root = tracking_uri(uri)
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.client, self.run_id, self.off = None, None, False

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.off:
            return None
        try:
            with _fail_fast():
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any tracker failure: warn, keep training
            self.off = True
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"MLflow logging off ({what} failed for {self.uri}): {reason[:300]}", TrackingWarning,
                          stacklevel=3)
            return None

    def start(self, name: str, params: dict, tags: dict, run_id: str | None = None) -> str | None:
        """Create the MLflow run (or continue ``run_id``); returns its id, or None when tracking failed."""
        return self._guard("starting the run", self._start, name, params, tags, run_id)

    def _start(self, name, params, tags, run_id):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.artifact_root:
            Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_root)
        if _parent["run_id"]:
            tags = {**tags, "mlflow.parentRunId": _parent["run_id"]}
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        items = [Param(k, _param_text(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def attach(self, run_id: str) -> None:
        """Log into an existing MLflow run (e.g. a trained run's export) without changing its status."""
        def connect():
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.get_run(run_id)
            self.run_id = run_id

        self._guard("opening the run", connect)

    def metrics(self, values: dict, step: int) -> None:
        def log():
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in values.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
            if items:
                self.client.log_batch(self.run_id, metrics=items)

        if self.run_id:
            self._guard("logging metrics", log)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if self.run_id and Path(path).is_file():
            self._guard(f"uploading {Path(path).name}", self.client.log_artifact, self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._guard("ending the run", self.client.set_terminated, self.run_id, status)


def _param_text(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text[:PARAM_LIMIT]


class MLflowLogger:
    """The training callbacks (engine/callbacks.py adds them when the run's ``mlflow`` setting is given)."""

    def __init__(self, uri: str):
        self.tracker = Tracker(uri)

    def on_train_start(self, run) -> None:
        record = Path(run.dir) / "mlflow.json"
        previous = _read_json(record) if run.resumed else {}
        same_store = previous.get("tracking_uri") == self.tracker.uri
        tags = {"run_dir": str(Path(run.dir).resolve()), "model": run.cfg.model, "mode": run.cfg.mode,
                "dataset": run.cfg.dataset}
        run_id = self.tracker.start(Path(run.dir).name, run.cfg.to_dict(), tags,
                                    run_id=previous.get("run_id") if same_store else None)
        if run_id:
            atomic_write_text(record, json.dumps({"tracking_uri": self.tracker.uri, "run_id": run_id,
                                                  "experiment": self.tracker.experiment}, indent=2), "MLflow record")
            print(f"MLflow: run {run_id} in experiment '{self.tracker.experiment}' at {self.tracker.uri}", flush=True)

    def on_epoch_end(self, run, row: dict) -> None:
        self.tracker.metrics({k: v for k, v in row.items() if k not in ("epoch", "is_best")}, step=row["epoch"])

    def on_train_end(self, run, summary: dict) -> None:
        folder = Path(run.dir)
        metrics = {k: summary.get(k) for k in SUMMARY_METRICS}
        report = _read_json(folder / "eval" / "metrics.json")
        split = summary.get("evaluated_split", "test")
        metrics.update({f"{split}_{k}": v for k, v in report.items() if isinstance(v, (int, float))})
        self.tracker.metrics(metrics, step=run.state.epoch)
        for name in ("best.pt", "curves.png", "config.yaml", "history.csv"):
            self.tracker.artifact(folder / name)
        for onnx in sorted(folder.glob("*.onnx")):
            self.tracker.artifact(onnx, "export")
        for item in ("report.md", "metrics.json"):
            self.tracker.artifact(folder / "eval" / item, "eval")
        for figure in sorted((folder / "eval").glob("**/*.png")):
            self.tracker.artifact(figure, "eval/figures")
        self.tracker.end("KILLED" if run.stop_reason and "pruned" in run.stop_reason else "FINISHED")

    def on_train_interrupt(self, run) -> None:
        """Ctrl-C or a stop signal: the MLflow run ends KILLED (not left RUNNING); a resume reopens it."""
        self.tracker.end("KILLED")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def log_exported(checkpoint, files) -> None:
    """An export of a run that was logged to MLflow (its folder has mlflow.json): the exported files join
    that MLflow run's artefacts under export/."""
    record = _read_json(Path(checkpoint).parent / "mlflow.json")
    if not record.get("run_id"):
        return
    tracker = Tracker(record["tracking_uri"], experiment=record.get("experiment"))
    tracker.attach(record["run_id"])
    for path in files:
        tracker.artifact(Path(path), "export")


def add_tracking_callbacks(run) -> None:
    """Plug MLflow logging into a run's callbacks when its ``mlflow`` setting is given."""
    if getattr(run.cfg, "mlflow", None):
        logger = MLflowLogger(run.cfg.mlflow)
        run.callbacks.add("on_train_start", logger.on_train_start)
        run.callbacks.add("on_epoch_end", logger.on_epoch_end)
        run.callbacks.add("on_train_end", logger.on_train_end)
        run.callbacks.add("on_train_interrupt", logger.on_train_interrupt)
