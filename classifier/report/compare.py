"""Compare training runs in one table, like the results tables of papers and model zoos.

Each run folder holds ``summary.json`` (written at the end of training) with keys model, mode, dataset,
params, size_bytes (size of best.pt), train_time_s, epochs, test_accuracy (optional), val_loss, and
optionally ``eval/metrics.json``, whose accuracy replaces test_accuracy when present (it comes from a
full evaluation). Accuracies are fractions in 0..1; sizes are reported in MB of 2**20 bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from classifier.errors import ClassifierError
from classifier.fileio import atomic_write_text

COLUMNS = [  # (row key, header, alignment)
    ("run", "Run", "l"),
    ("model", "Model", "l"),
    ("mode", "Mode", "l"),
    ("dataset", "Dataset", "l"),
    ("test_accuracy", "Test acc.", "r"),
    ("params", "Params", "r"),
    ("size_mb", "Size (MB)", "r"),
    ("train_time_s", "Train time", "r"),
    ("epochs", "Epochs", "r"),
]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ClassifierError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClassifierError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise ClassifierError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_run(run_dir: str | os.PathLike) -> dict:
    """One comparison row from a run folder (missing summary keys become None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ClassifierError(f"run folder not found: {run_dir}")
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ClassifierError(f"{run_dir}: no summary.json (not a finished training run?)")
    summary = _read_json(summary_path)
    accuracy = summary.get("test_accuracy")
    source = None if accuracy is None else "summary.json"
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        metrics = _read_json(metrics_path)
        if metrics.get("accuracy") is not None:
            accuracy, source = metrics["accuracy"], "eval/metrics.json"
    size = summary.get("size_bytes")
    return {
        "run": run_dir.name,
        "model": summary.get("model"),
        "mode": summary.get("mode"),
        "dataset": summary.get("dataset"),
        "test_accuracy": accuracy,
        "accuracy_source": source,
        "params": summary.get("params"),
        "size_mb": None if size is None else size / 2**20,  # MB as torchvision's weight tables count them
        "train_time_s": summary.get("train_time_s"),
        "epochs": summary.get("epochs"),
        "val_loss": summary.get("val_loss"),
    }


def format_params(n) -> str:
    if n is None:
        return "—"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_duration(seconds) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _format(key: str, value) -> str:
    if value is None:
        return "—"
    if key == "test_accuracy":
        return f"{value:.2%}"
    if key == "params":
        return format_params(value)
    if key == "size_mb":
        return f"{value:.1f}"
    if key == "train_time_s":
        return format_duration(value)
    return str(value).replace("|", "\\|")


def compare_runs(run_dirs) -> tuple[str, list[dict]]:
    """A Markdown table with one row per run (in the order given), and the rows as plain dicts."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ClassifierError("no run folders to compare")
    rows = [read_run(d) for d in run_dirs]
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "| " + " | ".join("---:" if a == "r" else ":---" for _, _, a in COLUMNS) + " |"]
    lines += ["| " + " | ".join(_format(k, row[k]) for k, _, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n", rows


def write_comparison(out_path_md: str | os.PathLike, run_dirs) -> Path:
    """Write the comparison table as a Markdown file and return its path."""
    table, rows = compare_runs(run_dirs)
    notes = ["", "Test accuracy: from `eval/metrics.json` when the run was evaluated, else from `summary.json`. "
             "Size: best checkpoint on disk. — = not recorded."]
    return atomic_write_text(out_path_md, "# Run comparison\n\n" + table + "\n".join(notes) + "\n", "comparison")
