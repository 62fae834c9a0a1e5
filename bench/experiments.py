#!/usr/bin/env python
"""Run a named matrix of experiments (datasets x models x modes) and write one results table.

    python bench/experiments.py fmnist                       # train what is not finished, write the tables
    python bench/experiments.py transfer --dry-run           # print the train.py commands, run nothing
    python bench/experiments.py fmnist --only 'res*'         # a subset of the runs (glob on run names)
    python bench/experiments.py fmnist transfer cifar10 eurosat --report-only \\
        --markdown docs/results-matrix.md --figures docs/figures    # README-ready Markdown from finished runs
    python bench/experiments.py eurosat --set dataset=folder:photos --out bench/results-photos

A matrix is a YAML file in bench/experiments/ (or any path): shared train.py flags, then groups of runs
whose ``vary`` axes are crossed (see bench/experiments/transfer.yaml). Every run is ``python train.py``
in a subprocess, so the command printed and recorded is exactly what ran; its run folder is
OUT/MATRIX/RUN. A run with summary.json is finished and skipped, one with last.pt is continued with
``train.py --resume``, so an interrupted matrix resumes where it stopped. A run folder made with other
settings than the matrix now gives (or fine-tuned from a run trained again since) is skipped and reported
as out of date, never silently counted nor deleted. Runs whose data is missing are skipped with a one-line
message; a failed run does not stop the others.

Written per matrix: OUT/MATRIX/results.{md,csv,json} (test accuracy, macro and per-class F1, parameters,
size on disk, training time, epochs, command, report path) and OUT/MATRIX/figures/ (learning curves of
groups with ``curves: true``, confusion matrix of the best run copied from its report). ``--markdown``
also writes all the given matrices as one Markdown file, figures copied to ``--figures``.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.errors import ClassifierError  # noqa: E402
from classifier.report.compare import format_duration, format_params, read_run  # noqa: E402

SPEC_DIR = Path(__file__).with_name("experiments")
RUN_REF = "run:"  # weights: run:NAME -> the best.pt of run NAME of the same matrix
REPEAT_AXIS = "seed"  # runs differing only in this axis are repeats: summarised as mean and spread


@dataclass
class Run:
    name: str
    group: int  # index of its group in the matrix
    flags: dict  # train.py flags (key without dashes -> value), weights still as run:NAME
    axes: dict  # the group's axis values for this run, e.g. {model: resnet, mode: finetune}
    dir: Path
    published: float | None = None  # the figure to compare with, if any
    candidate: bool = True  # may be the matrix's best run (pretraining runs are not)
    status: str = ""  # done | resume | new | skip
    reason: str = ""  # why skipped / not finished

    @property
    def needs(self) -> str | None:
        weights = str(self.flags.get("weights") or "")
        return weights[len(RUN_REF):] if weights.startswith(RUN_REF) else None


@dataclass
class Matrix:
    name: str
    title: str
    about: str
    dir: Path
    runs: list[Run] = field(default_factory=list)
    curve_groups: list[int] = field(default_factory=list)


# --- spec -> runs ---------------------------------------------------------------------------------

def _flag_key(key: str) -> str:
    return str(key).replace("-", "_")


def _fill(value, axes: dict):
    """Put the axis values into ``{axis}`` placeholders of a string flag value."""
    if isinstance(value, str):
        for axis, v in axes.items():
            value = value.replace("{" + axis + "}", str(v))
    return value


def load_matrix(name: str, out: Path, overrides: dict) -> Matrix:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SPEC_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
        raise ClassifierError(f"no experiment matrix '{name}' (known: {known}; or give a .yaml path)")
    spec = yaml.safe_load(path.read_text()) or {}
    matrix = Matrix(path.stem, spec.get("title", path.stem), spec.get("about", ""), out / path.stem)
    shared = {_flag_key(k): v for k, v in (spec.get("train") or {}).items()}
    for g, group in enumerate(spec.get("groups") or []):
        axes = group.get("vary") or {}
        if group.get("curves"):
            matrix.curve_groups.append(g)
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            flags = {**shared, **{_flag_key(k): v for k, v in (group.get("train") or {}).items()}, **values}
            # per-value settings, in the order written: "finetune" applies to every run whose axes include
            # that value, "resnet+finetune" to the runs with both values
            named = {str(v) for v in combo}
            for key, settings in (group.get("per") or {}).items():
                if set(str(key).split("+")) <= named:
                    flags.update({_flag_key(k): x for k, x in (settings or {}).items()})
            flags = {k: _fill(v, values) for k, v in {**flags, **overrides}.items()}
            published = flags.pop("published", None)
            name = _fill(group.get("name", "run"), values)
            if any(r.name == name for r in matrix.runs):
                raise ClassifierError(f"{path}: two runs are named '{name}'")
            matrix.runs.append(Run(name, g, flags, values, matrix.dir / name, published, group.get("best", True)))
    return matrix


def train_args(run: Run, matrix: Matrix) -> list[str]:
    """The train.py arguments of a run from scratch (its run folder: OUT/MATRIX/RUN)."""
    argv = []
    for key, value in run.flags.items():
        if value is None:
            continue
        if key == "weights" and run.needs:
            value = matrix.dir / run.needs / "best.pt"
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (dict, list)):
            value = yaml.safe_dump(value, default_flow_style=True).strip()
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv + ["--project", str(matrix.dir), "--name", run.name]


def command_text(argv: list[str]) -> str:
    """How the command reads for a person: ``python train.py ...`` (run from the repository root)."""
    script = os.path.relpath(ROOT / "train.py")
    return shlex.join(["python", script, *argv])


def check_args(argv: list[str]):
    """The config train.py would resolve from these arguments, or a one-line problem."""
    from classifier.commands.train import build_parser
    from classifier.config import resolve_config

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        return None, f"train.py does not know {' '.join(a for a in unknown if a.startswith('--'))}"
    try:
        return resolve_config(args), None
    except ClassifierError as err:
        return None, str(err)


def data_problem(cfg, allow_download: bool, checked: dict) -> str | None:
    """None when the run's dataset loads (downloading it when allowed), else the loader's message;
    ``checked`` remembers the answer per dataset."""
    from classifier.data import load_dataset

    key = (cfg.dataset, cfg.data_dir, allow_download and cfg.download)
    if key not in checked:
        try:
            load_dataset(cfg.dataset, cfg.data_dir, download=key[2])
            checked[key] = None
        except ClassifierError as err:
            checked[key] = f"data missing: {err}"
    return checked[key]


# --- running --------------------------------------------------------------------------------------

def run_state(run: Run) -> str:
    if (run.dir / "summary.json").is_file():
        return "done"
    return "resume" if (run.dir / "last.pt").is_file() else "new"


# settings that say where the run folder and data are or how fast a run goes, not what it learns
NOT_RESULT_KEYS = {"name", "project", "data_dir", "download", "workers", "threads", "device", "compile",
                   "progress", "tensorboard", "exist_ok", "save_every", "in_memory", "plots"}
# settings whose default (None, or "auto") a run resolves per case from its data and saves resolved (resize:
# squash or crop; task: multiclass or multilabel)
RESOLVED_BY_THE_RUN = {"resize", "task"}


def stale_settings(run: Run, cfg, matrix: Matrix) -> str | None:
    """Why a started run's folder is not what the matrix now asks for, or None: settings changed since
    (e.g. ``epochs 6 -> 15``), or the run it starts from was trained again after it. A run made with other
    settings must not be reported as this matrix's result."""
    from classifier.config import load_yaml, resolve_for_model

    path = run.dir / "config.yaml"
    if cfg is None or not path.is_file():
        return None
    saved, wanted = load_yaml(path), resolve_for_model(cfg).to_dict()  # per-mode defaults as the run saved them
    if run.needs and saved.get("weights") and Path(saved["weights"]).parent.name == run.needs:
        saved["weights"] = wanted["weights"]  # the same run's checkpoint, whichever folder it was run from
    changed = [f"{k} {saved[k]} -> {wanted[k]}" for k in wanted
               if k in saved and k not in NOT_RESULT_KEYS and saved[k] != wanted[k]
               and not (k in RESOLVED_BY_THE_RUN and wanted[k] in (None, "auto"))]
    dep = matrix.dir / run.needs / "best.pt" if run.needs else None
    if dep and dep.is_file() and dep.stat().st_mtime > path.stat().st_mtime:
        changed.append(f"{run.needs} was trained again after it")
    return ", ".join(changed) or None


def execute(matrix: Matrix, only: list[str], *, dry_run: bool, report_only: bool) -> None:
    """Bring every selected run of the matrix to 'done' (or say why not), in spec order."""
    print(f"== {matrix.name}: {matrix.title} ({len(matrix.runs)} runs, folder {matrix.dir})")
    said, checked = set(), {}  # a reason shared by several runs (e.g. missing data) is printed once
    for run in matrix.runs:
        run.status = run_state(run)
        argv = train_args(run, matrix)
        cfg, problem = check_args(argv)
        stale = run.status != "new" and stale_settings(run, cfg, matrix)
        if stale:  # never continue or report a run made with other settings; never delete it either
            run.status, run.reason = "skip", f"its folder is out of date ({stale})"
            print(f"skip     {run.name}: {run.reason}; move or delete {run.dir} to train it again")
            continue
        if run.status == "done":
            print(f"done     {run.name}")
            continue
        if only and not any(fnmatch.fnmatch(run.name, p) for p in only):
            problem = "not selected (--only)"
        elif problem is None:
            problem = data_problem(cfg, not (dry_run or report_only), checked)
        if problem is None and report_only:
            problem = "not trained yet (--report-only)"
        if problem is None and run.needs:
            dep = next((r for r in matrix.runs if r.name == run.needs), None)
            if dep is None:
                problem = f"weights: {RUN_REF}{run.needs} names no run of this matrix"
            elif dep.status != "done" and not (dry_run and dep.status != "skip"):
                problem = f"needs run {run.needs}, which is not finished"
        if problem:
            run.status, run.reason = "skip", problem
            print(f"skip     {run.name}: {'(same reason)' if problem in said else problem}")
            said.add(problem)
            continue
        if run.status == "resume":
            argv = ["--resume", str(run.dir)]
        elif run.dir.exists():  # started but interrupted before its first checkpoint: start again
            print(f"{'would remove' if dry_run else 'removing'} {run.dir} (no checkpoint to resume from)")
            if not dry_run:
                shutil.rmtree(run.dir)
        print(f"{'would run' if dry_run else 'running':<8} {run.name}: {command_text(argv)}", flush=True)
        if dry_run:
            continue
        code = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv]).returncode
        run.status = run_state(run)
        if run.status != "done":
            run.status, run.reason = "skip", f"train.py failed (exit code {code}; its error is printed above)"
            print(f"failed   {run.name}: {run.reason}", flush=True)


# --- results ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def result_row(run: Run, matrix: Matrix) -> dict:
    """One table row: the run's summary.json and eval/metrics.json, its command, or why it did not run."""
    row = {"matrix": matrix.name, "run": run.name, **{k: run.flags.get(k) for k in ("model", "mode", "dataset")},
           "classes": run.flags.get("classes"), "max_per_class": run.flags.get("max_per_class"),
           "status": "done" if run.status == "done" else "not run", "reason": run.reason,
           "published": run.published, "command": command_text(train_args(run, matrix)),
           "report": str(run.dir / "eval" / "report.md"), "per_class_f1": {}}
    if run.status == "done":
        row.update({k: v for k, v in read_run(run.dir).items() if k != "run" and v is not None})
        summary = _read_json(run.dir / "summary.json")
        metrics = _read_json(run.dir / "eval" / "metrics.json")
        row.update(best_epoch=summary.get("best_epoch"), trainable_params=summary.get("trainable_params"),
                   macro_f1=metrics.get("macro_f1"),
                   per_class_f1={name: c.get("f1") for name, c in (metrics.get("per_class") or {}).items()})
    return row


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def curves_figure(matrix: Matrix, group: int, path: Path) -> Path | None:
    """Validation accuracy per epoch: one panel per value of the group's first axis, one line per value
    of its last axis (e.g. panels = models, lines = modes). Repeats (a ``seed`` axis) are drawn as their
    mean, with the band from the lowest to the highest seed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from classifier.report.plots import save_figure

    runs = [r for r in matrix.runs if r.group == group and r.status == "done"]
    if not runs:
        return None
    axes_names = [a for a in runs[0].axes if a != REPEAT_AXIS]
    panel_key = axes_names[0] if len(axes_names) > 1 else None
    panels = list(dict.fromkeys(r.axes[panel_key] for r in runs)) if panel_key else [None]
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        lines = {}  # line label -> the histories of its runs (one per seed)
        for run in (r for r in runs if panel_key is None or r.axes[panel_key] == panel):
            label = run.axes[axes_names[-1]] if axes_names else run.name
            lines.setdefault(str(label), []).append(read_history(run.dir))
        for label, histories in lines.items():
            by_epoch = [{h["epoch"]: h["val_acc"] for h in hist if "val_acc" in h} for hist in histories]
            epochs = sorted(set.intersection(*(set(d) for d in by_epoch)))  # epochs every seed has
            acc = np.array([[d[e] for e in epochs] for d in by_epoch])
            if len(histories) > 1:
                label += f" (mean of {len(histories)})"
                ax.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.2)
            ax.plot(epochs, acc.mean(0), marker="o", markersize=2.5, label=label)
        ax.set_title(str(panel) if panel is not None else matrix.title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def repeat_groups(matrix: Matrix, rows: list[dict]) -> list[tuple[dict, list[float]]]:
    """Runs that differ only in their ``seed``: (their other axis values, their test accuracies), in spec order."""
    groups = {}
    for run, row in zip(matrix.runs, rows):
        if REPEAT_AXIS in run.axes and row.get("test_accuracy") is not None:
            key = (run.group, tuple((k, v) for k, v in run.axes.items() if k != REPEAT_AXIS))
            groups.setdefault(key, []).append(row["test_accuracy"])
    return [(dict(key[1]), accs) for key, accs in groups.items()]


def best_run(matrix: Matrix, rows: list[dict]) -> Run | None:
    done = [(row["test_accuracy"], run) for run, row in zip(matrix.runs, rows)
            if run.candidate and row.get("test_accuracy") is not None]
    return max(done, key=lambda pair: pair[0])[1] if done else None


def make_figures(matrix: Matrix, rows: list[dict]) -> list[tuple[str, Path]]:
    """(caption, png) of the learning curves of the curve groups and the best run's confusion matrix."""
    fig_dir = matrix.dir / "figures"
    figures = []
    for g in matrix.curve_groups:
        path = curves_figure(matrix, g, fig_dir / f"{matrix.name}-curves-{g + 1}.png")
        if path:
            models = sorted({r.axes.get("model", "") for r in matrix.runs if r.group == g} - {""})
            figures.append((f"Validation accuracy per epoch ({', '.join(models) or matrix.name})", path))
    best = best_run(matrix, rows)
    source = best.dir / "eval" / "figures" / "confusion_matrix.png" if best else None
    if source and source.is_file():
        target = fig_dir / f"{matrix.name}-confusion-{best.name}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        acc = next(r["test_accuracy"] for r in rows if r["run"] == best.name)
        figures.append((f"Confusion matrix of the best run, {best.name} ({acc:.2%} test accuracy)", target))
    return figures


CSV_COLUMNS = ["matrix", "run", "model", "mode", "dataset", "classes", "max_per_class", "status", "reason",
               "test_accuracy", "published", "macro_f1", "params", "trainable_params", "size_mb", "train_time_s",
               "epochs", "best_epoch", "command", "report"]  # then one "f1 CLASS" column per class


def write_tables(matrix: Matrix, rows: list[dict]) -> None:
    matrix.dir.mkdir(parents=True, exist_ok=True)
    (matrix.dir / "results.json").write_text(json.dumps(rows, indent=2))
    classes = list(dict.fromkeys(c for row in rows for c in row["per_class_f1"]))
    columns = CSV_COLUMNS + [f"f1 {c}" for c in classes]
    with open(matrix.dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{f"f1 {c}": v for c, v in row["per_class_f1"].items()}})


def _pct(v) -> str:
    return "—" if v is None else f"{v:.2%}"


def _data(row: dict) -> str:
    text = str(row.get("dataset") or "")
    if row.get("classes") is not None:
        text += f" classes {row['classes']}"
    if row.get("max_per_class"):
        text += f", {row['max_per_class']}/class"
    return text


def _table(header: list[str], rows: list[list], left: int = 1) -> list[str]:
    """Markdown table; the first ``left`` columns are left-aligned, the others (numbers) right-aligned."""
    rule = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def markdown_section(matrix: Matrix, rows: list[dict], figures: list[tuple[str, Path]], md_dir: Path,
                     level: int = 2) -> str:
    """The matrix as Markdown: results table, what did not run and why, per-class F1, figures, commands."""
    published = any(r["published"] is not None for r in rows)
    header = ["Run", "Model", "Mode", "Training data", "Test acc."] + (["Published"] if published else []) + \
             ["Macro F1", "Params", "Size (MB)", "Train time", "Epochs"]
    body = []
    for r in rows:
        size = r.get("size_mb")
        body.append([r["run"], r["model"] or "—", r.get("mode") or "scratch", _data(r), _pct(r.get("test_accuracy"))]
                    + ([_pct(r["published"])] if published else [])
                    + ["—" if r.get("macro_f1") is None else f"{r['macro_f1']:.3f}", format_params(r.get("params")),
                       "—" if size is None else f"{size:.1f}", format_duration(r.get("train_time_s")),
                       r.get("epochs") or "—"])
    lines = ["#" * level + f" {matrix.title}", ""] + ([matrix.about.strip(), ""] if matrix.about else [])
    lines += _table(header, body, left=4) + [""]
    repeats = repeat_groups(matrix, rows)
    if repeats:
        names = list(repeats[0][0])
        lines += ["Over seeds (test accuracy):", ""]
        lines += _table([n.capitalize() for n in names] + ["Seeds", "Mean", "Std. dev.", "Lowest", "Highest"],
                        [[*axes.values(), len(accs), _pct(np.mean(accs)), f"{100 * np.std(accs, ddof=1):.2f} pt"
                          if len(accs) > 1 else "—", _pct(min(accs)), _pct(max(accs))] for axes, accs in repeats],
                        left=len(names)) + [""]
    reasons = {}
    for r in rows:
        if r["status"] != "done":
            reasons.setdefault(r["reason"], []).append(r["run"])
    lines += [f"Not run ({'all runs' if len(names) == len(rows) else ', '.join(names)}): {reason}  "
              for reason, names in reasons.items()]
    lines += [""] if reasons else []
    by_classes = {}
    for r in rows:
        if r["per_class_f1"]:
            by_classes.setdefault(tuple(r["per_class_f1"]), []).append(r)
    for classes, group in by_classes.items():
        lines += [f"Per-class F1 ({', '.join(classes)}):", ""]
        lines += _table(["Run", *classes], [[r["run"]] + [("—" if v is None else f"{v:.3f}")
                                                         for v in r["per_class_f1"].values()] for r in group])
        lines += [""]
    for caption, path in figures:
        lines += [f"![{caption}]({Path(os.path.relpath(path, md_dir)).as_posix()})", "", f"*{caption}*", ""]
    lines += ["Commands (from the repository root; each run's test report is RUN_FOLDER/eval/report.md):", "",
              "```bash"] + [r["command"] for r in rows] + ["```", ""]
    return "\n".join(lines)


def write_results(matrix: Matrix) -> tuple[list[dict], list[tuple[str, Path]]]:
    rows = [result_row(run, matrix) for run in matrix.runs]
    figures = make_figures(matrix, rows)
    write_tables(matrix, rows)
    (matrix.dir / "results.md").write_text(markdown_section(matrix, rows, figures, matrix.dir, level=1))
    done = sum(r["status"] == "done" for r in rows)
    print(f"{matrix.name}: {done}/{len(rows)} runs finished; table: {matrix.dir / 'results.md'} (+ .csv, .json)")
    return rows, figures


def write_markdown(path: Path, fig_dir: Path, sections: list, command: str) -> None:
    """All matrices in one Markdown file, their figures copied to fig_dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    texts = []
    for matrix, rows, figures in sections:
        copied = []
        for caption, source in figures:
            target = fig_dir / source.name
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            copied.append((caption, target))
        texts.append(markdown_section(matrix, rows, copied, path.parent, level=3))
    path.write_text(f"## Results\n\nGenerated by `{command}` from the runs' summaries and test reports.\n\n"
                    + "\n".join(texts))
    print(f"Markdown: {path} (figures in {fig_dir})")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClassifierError(f"--set takes KEY=VALUE, got '{item}'")
        out[_flag_key(key.strip().lstrip("-"))] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="matrices: " + ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))))
    parser.add_argument("matrices", nargs="+", help="matrix names (bench/experiments/NAME.yaml) or YAML paths")
    parser.add_argument("--out", default="bench/results", help="results folder (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated glob patterns of run names to run, e.g. 'resnet*,lenet5'")
    parser.add_argument("--dry-run", action="store_true", help="print the train.py commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the tables from finished runs, train nothing")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a train.py flag in every run, e.g. --set dataset=folder:photos")
    parser.add_argument("--markdown", help="also write all the given matrices as one README-ready Markdown file")
    parser.add_argument("--figures", help="where --markdown's figures go (default: figures/ next to it)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        matrices = [load_matrix(name, Path(args.out), overrides) for name in args.matrices]
        only = [p.strip() for p in (args.only or "").split(",") if p.strip()]
        sections = []
        for matrix in matrices:
            execute(matrix, only, dry_run=args.dry_run, report_only=args.report_only)
            if not args.dry_run:
                sections.append((matrix, *write_results(matrix)))
        if args.markdown and sections:
            md = Path(args.markdown)
            command = shlex.join(["python", "bench/experiments.py", *(sys.argv[1:] if argv is None else argv)])
            write_markdown(md, Path(args.figures) if args.figures else md.parent / "figures", sections, command)
    except ClassifierError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the same command resumes where this stopped", file=sys.stderr)
        return 130
    failed = [r.name for m in matrices for r in m.runs if r.reason.startswith("train.py failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
