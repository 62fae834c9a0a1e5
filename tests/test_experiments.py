"""bench/experiments.py on a tiny matrix: real train.py subprocesses on a tiny folder dataset, the results
table from the runs' own summaries, skipping finished runs, resuming an interrupted one, missing data,
--dry-run; and the shipped matrices resolve to valid train.py commands."""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from classifier.checkpoint import load_checkpoint
from tests.conftest import write_class_images

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("experiments", ROOT / "bench" / "experiments.py")
experiments = sys.modules["experiments"] = importlib.util.module_from_spec(_spec)  # dataclasses need it there
_spec.loader.exec_module(experiments)

COLOURS4 = {"blue": (30, 30, 200), "green": (30, 200, 30), "red": (200, 30, 30), "yellow": (220, 220, 30)}
FAST = {"batch-size": 8, "epochs": 1, "workers": 0, "amp": "off", "progress": False, "tensorboard": False}


def tiny_transfer_spec(data: Path) -> dict:
    """Pretrain on classes 0-1, then classes 2-3 from 4 images per class: scratch (2 epochs) vs finetune;
    plus a run whose data is missing."""
    return {
        "title": "Tiny transfer",
        "train": {"dataset": f"folder:{data}", "model": "resnet", "extra": {"width": 4}, **FAST},
        "groups": [
            {"name": "pre-{model}", "best": False, "vary": {"model": ["resnet"]}, "train": {"classes": "0,1"}},
            {"name": "{model}-{mode}", "curves": True, "vary": {"model": ["resnet"], "mode": ["scratch", "finetune"]},
             "train": {"classes": "2,3", "max-per-class": 4},
             "per": {"finetune": {"weights": "run:pre-{model}"}, "scratch": {"published": 0.5, "epochs": 2}}},
            {"name": "absent", "train": {"dataset": f"folder:{data.parent / 'no_such_folder'}"}},
        ],
    }


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def no_training(*args, **kwargs):
    raise AssertionError(f"train.py was called: {args}")


class Interrupt(Exception):
    pass


def interrupt_after_first_epoch(run, matrix) -> list[dict]:
    """Start a run exactly as the runner would, and stop it after its first epoch (like Ctrl-C would)."""
    from classifier.commands.train import build_parser
    from classifier.config import resolve_config
    from classifier.engine.trainer import fit

    def stop(run, row):
        raise Interrupt

    argv = experiments.train_args(run, matrix)
    with pytest.raises(Interrupt):
        fit(resolve_config(build_parser().parse_args(argv)), callbacks={"on_epoch_end": [stop]})
    assert not (run.dir / "summary.json").exists()
    return load_checkpoint(run.dir / "last.pt")["state"]["history"]


@pytest.fixture(scope="module")
def tiny_matrix(tmp_path_factory):
    """The tiny matrix, run once for every test below, its scratch run interrupted after epoch 1 of 2 first:
    (spec path, out folder, exit code, printed output, history of the interrupted run)."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("xp")
    data = write_class_images(base / "colours", per_class=20, classes=COLOURS4)
    spec = write_spec(base / "tiny.yaml", tiny_transfer_spec(data))
    out, printed = base / "results", io.StringIO()
    matrix = experiments.load_matrix(str(spec), out, {})
    first_epoch = interrupt_after_first_epoch(matrix.runs[1], matrix)
    with contextlib.redirect_stdout(printed):
        code = experiments.main([str(spec), "--out", str(out), "--markdown", str(base / "md" / "results.md")])
    return spec, out, code, printed.getvalue(), first_epoch


def test_table_rows_and_values_come_from_the_runs(tiny_matrix):
    spec, out, code, printed, _ = tiny_matrix
    assert code == 0, printed
    rows = json.loads((out / "tiny" / "results.json").read_text())
    assert [r["run"] for r in rows] == ["pre-resnet", "resnet-scratch", "resnet-finetune", "absent"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "not run"]
    for row in rows[:3]:
        run = out / "tiny" / row["run"]
        summary = json.loads((run / "summary.json").read_text())
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert row["test_accuracy"] == metrics["accuracy"] and row["macro_f1"] == metrics["macro_f1"]
        assert row["per_class_f1"] == {name: c["f1"] for name, c in metrics["per_class"].items()}
        assert row["params"] == summary["params"] and row["epochs"] == summary["epochs"]
        assert row["size_mb"] == summary["size_bytes"] / 2**20 and row["train_time_s"] == summary["train_time_s"]
        assert row["mode"] == summary["mode"] and row["report"] == str(run / "eval" / "report.md")
    for row in (rows[0], rows[2]):
        assert f"running  {row['run']}: {row['command']}" in printed  # the command recorded is the one that ran
    assert [r.get("epochs") for r in rows] == [1, 2, 1, None]
    # --classes picks the classes by index; the pretrained checkpoint is the finetune run's weights
    assert list(rows[0]["per_class_f1"]) == ["blue", "green"]
    assert list(rows[1]["per_class_f1"]) == list(rows[2]["per_class_f1"]) == ["red", "yellow"]
    assert load_checkpoint(out / "tiny" / "resnet-scratch" / "best.pt")["classes"] == ["red", "yellow"]
    assert "--classes 2,3 --max-per-class 4" in rows[2]["command"]
    assert f"--mode finetune --weights {out / 'tiny' / 'pre-resnet' / 'best.pt'}" in rows[2]["command"]
    assert rows[1]["published"] == 0.5 and rows[0]["published"] is None
    with open(out / "tiny" / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r["run"] for r in rows]
    assert float(table[1]["f1 red"]) == rows[1]["per_class_f1"]["red"] and table[0]["f1 red"] == ""


def test_markdown_has_the_table_figures_and_commands(tiny_matrix):
    spec, out, code, printed, _ = tiny_matrix
    md_path = out.parent / "md" / "results.md"
    md = md_path.read_text()
    rows = json.loads((out / "tiny" / "results.json").read_text())
    assert md.startswith("## Results") and "### Tiny transfer" in md
    scratch = rows[1]
    assert "| resnet-scratch | resnet | scratch |" in md and f"{scratch['test_accuracy']:.2%} | 50.00% |" in md
    assert "Not run (absent): data missing: dataset folder" in md
    assert all(r["command"] in md for r in rows)
    images = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(images) == 2  # learning curves of the scratch/finetune group, confusion matrix of the best run
    assert all((md_path.parent / image).is_file() for image in images)
    best = max(rows[1:3], key=lambda r: r["test_accuracy"])  # the pretraining run is not a candidate
    assert f"confusion-{best['run']}.png" in images[1]
    assert (out / "tiny" / "results.md").is_file()


def test_missing_data_is_one_message_not_a_crash(tiny_matrix):
    spec, out, code, printed, _ = tiny_matrix
    lines = [line for line in printed.splitlines() if "absent" in line]
    assert len(lines) == 1 and lines[0].startswith("skip     absent: data missing: dataset folder")
    assert not (out / "tiny" / "absent").exists()


def test_rerun_skips_finished_runs(tiny_matrix, monkeypatch, capsys):
    spec, out, code, printed, _ = tiny_matrix
    summaries = {p: p.stat().st_mtime_ns for p in (out / "tiny").glob("*/summary.json")}
    assert len(summaries) == 3
    monkeypatch.setattr(experiments.subprocess, "run", no_training)
    assert experiments.main([str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "done     pre-resnet" in printed and "done     resnet-finetune" in printed and "running" not in printed
    assert summaries == {p: p.stat().st_mtime_ns for p in (out / "tiny").glob("*/summary.json")}


def test_runs_made_with_other_settings_are_not_reported(tiny_matrix, tmp_path, monkeypatch, capsys):
    """Editing the matrix after its runs finished: the changed run and the run fine-tuned from a retrained
    checkpoint are skipped with the reason (not reported, not deleted); the others still count."""
    import os
    import shutil

    spec, out, *_ = tiny_matrix
    shutil.copytree(out / "tiny", tmp_path / "tiny")  # another folder: same runs, other paths
    changed = yaml.safe_load(spec.read_text())
    changed["groups"][1]["per"]["scratch"]["epochs"] = 3
    spec = write_spec(tmp_path / "tiny.yaml", changed)
    later = (tmp_path / "tiny" / "resnet-finetune" / "config.yaml").stat().st_mtime + 10
    os.utime(tmp_path / "tiny" / "pre-resnet" / "best.pt", (later, later))  # as if pre-resnet was trained again
    monkeypatch.setattr(experiments.subprocess, "run", no_training)
    assert experiments.main([str(spec), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "done     pre-resnet" in printed
    assert "skip     resnet-scratch: its folder is out of date (epochs 2 -> 3); move or delete" in printed
    assert "skip     resnet-finetune: its folder is out of date (pre-resnet was trained again after it)" in printed
    rows = json.loads((tmp_path / "tiny" / "results.json").read_text())
    assert [r["status"] for r in rows] == ["done", "not run", "not run", "not run"]
    assert "epochs 2 -> 3" in rows[1]["reason"] and "test_accuracy" not in rows[1]
    assert all((tmp_path / "tiny" / r / "summary.json").is_file() for r in ("resnet-scratch", "resnet-finetune"))


def test_an_interrupted_run_resumes_where_it_stopped(tiny_matrix):
    spec, out, code, printed, first_epoch = tiny_matrix
    run_dir = out / "tiny" / "resnet-scratch"
    script = experiments.os.path.relpath(ROOT / "train.py")
    assert f"running  resnet-scratch: python {script} --resume {run_dir}" in printed
    history = load_checkpoint(run_dir / "last.pt")["state"]["history"]
    assert len(first_epoch) == 1 and len(history) == 2
    assert history[0] == first_epoch[0]  # continued after epoch 1, not restarted
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


def test_per_settings_for_one_value_or_a_combination(tmp_path):
    spec = write_spec(tmp_path / "per.yaml", {"groups": [{
        "name": "{model}-{mode}", "vary": {"model": ["a", "b"], "mode": ["scratch", "finetune"]},
        "per": {"finetune": {"epochs": 3, "lr": 0.1}, "b+finetune": {"lr": 0.01}, "b": {"seed": 7}}}]})
    runs = {r.name: r.flags for r in experiments.load_matrix(str(spec), tmp_path, {}).runs}
    assert runs["a-scratch"] == {"model": "a", "mode": "scratch"}
    assert runs["a-finetune"] == {"model": "a", "mode": "finetune", "epochs": 3, "lr": 0.1}
    assert runs["b-finetune"] == {"model": "b", "mode": "finetune", "epochs": 3, "lr": 0.01, "seed": 7}
    assert runs["b-scratch"] == {"model": "b", "mode": "scratch", "seed": 7}


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, monkeypatch, capsys):
    data = write_class_images(tmp_path / "colours", per_class=2, classes=COLOURS4)
    spec = write_spec(tmp_path / "tiny.yaml", tiny_transfer_spec(data))
    monkeypatch.setattr(experiments.subprocess, "run", no_training)
    out = tmp_path / "results"
    assert experiments.main([str(spec), "--out", str(out), "--dry-run", "--only", "*resnet*"]) == 0
    printed = capsys.readouterr().out
    matrix = experiments.load_matrix(str(spec), out, {})
    for run in matrix.runs[:3]:  # the finetune run would run after its pretraining run
        assert f"would run {run.name}: {experiments.command_text(experiments.train_args(run, matrix))}" in printed
    assert "skip     absent: not selected (--only)" in printed
    assert not out.exists()


def test_shipped_matrices_are_valid_train_py_commands(tmp_path):
    names = sorted(p.stem for p in experiments.SPEC_DIR.glob("*.yaml"))
    assert names == ["cifar10", "eurosat", "fmnist", "transfer", "transfer-defaults"]
    for name in names:
        matrix = experiments.load_matrix(name, tmp_path, {})
        for run in matrix.runs:
            cfg, problem = experiments.check_args(experiments.train_args(run, matrix))
            assert problem is None, (name, run.name, problem)
    transfer = experiments.load_matrix("transfer", tmp_path, {})
    few_shot = [experiments.check_args(experiments.train_args(r, transfer))[0] for r in transfer.runs[3:]]
    assert [r.name for r in transfer.runs[:3]] == ["pretrain-resnet", "pretrain-resnet18", "pretrain-mobilenet_v2"]
    assert sorted((c.model, c.mode, c.seed) for c in few_shot) == sorted(
        (m, mode, seed) for m in ("resnet", "resnet18", "mobilenet_v2")
        for mode in ("scratch", "finetune", "feature-extract") for seed in (0, 1, 2))
    for cfg in few_shot:
        assert cfg.classes == ["5", "6", "7", "8", "9"] and cfg.max_per_class == 100
        assert cfg.weights in (None, str(tmp_path / "transfer" / f"pretrain-{cfg.model}" / "best.pt"))


def test_the_defaults_matrix_resolves_to_the_settings_the_transfer_matrix_pins(tmp_path):
    """Issue 18: a fine-tune given none of the tuning settings gets what the hand-tuned runs pin."""
    from classifier.config import resolve_for_model

    matrix = experiments.load_matrix("transfer-defaults", tmp_path, {})
    tuned = {r.name: resolve_for_model(experiments.check_args(experiments.train_args(r, matrix))[0])
             for r in matrix.runs}
    defaults = [name for name in tuned if "-defaults-" in name]
    assert len(defaults) == 9
    for name in defaults:
        cfg, pinned = tuned[name], tuned[name.replace("-defaults-", "-pinned-")]
        assert "head_warmup_epochs" not in matrix.runs[list(tuned).index(name)].flags
        assert (cfg.head_warmup_epochs, cfg.backbone_lr_mult, cfg.freeze_bn) == \
            (pinned.head_warmup_epochs, pinned.backbone_lr_mult, pinned.freeze_bn)


def test_weights_from_a_checkpoint_get_a_new_head(tiny_matrix, tmp_path):
    """Fine-tuning from the 2-class pretraining run to 2 other classes: the body is loaded, the head is new."""
    from classifier.config import make_config
    from classifier.engine.runtime import Dist
    from classifier.engine.build import build_data, build_model

    spec, out, code, printed, _ = tiny_matrix
    source = out / "tiny" / "pre-resnet" / "best.pt"
    cfg = make_config({"model": "resnet", "extra": {"width": 4}, "mode": "finetune", "weights": str(source),
                       "dataset": yaml.safe_load(spec.read_text())["train"]["dataset"], "classes": "2,3",
                       "workers": 0})
    model, note = build_model(cfg, build_data(cfg, tmp_path, Dist()))
    before = load_checkpoint(source)["model"]
    assert note.endswith("new head") and model.head.weight.shape == before["head.weight"].shape
    assert not torch.equal(model.head.weight, before["head.weight"])
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, before[key]), key


def test_seed_repeats_are_summarised_and_averaged_in_the_curves(tmp_path):
    """Runs that differ only in --seed: one row each in the table, plus mean / spread per setting."""
    spec = write_spec(tmp_path / "seeds.yaml", {"title": "Seeds", "train": {"dataset": "fashion_mnist"}, "groups": [
        {"name": "{model}-{mode}-seed{seed}", "curves": True,
         "vary": {"model": ["lenet5"], "mode": ["scratch", "finetune"], "seed": [0, 1, 2]}}]})
    matrix = experiments.load_matrix(str(spec), tmp_path / "out", {})
    assert [r.flags["seed"] for r in matrix.runs] == [0, 1, 2, 0, 1, 2]
    accuracies = [0.80, 0.82, 0.84, 0.90, 0.90, 0.93]
    full_rows = [{**experiments.result_row(run, matrix), "test_accuracy": acc, "status": "done"}
                 for run, acc in zip(matrix.runs, accuracies)]  # table rows as a finished matrix has them
    rows = []
    for run, acc in zip(matrix.runs, accuracies):
        run.status = "done"
        run.dir.mkdir(parents=True)
        (run.dir / "history.csv").write_text("epoch,val_acc\n1,%.2f\n2,%.2f\n" % (acc - 0.1, acc))
        rows.append({"run": run.name, "test_accuracy": acc})
    groups = experiments.repeat_groups(matrix, rows)
    assert groups == [({"model": "lenet5", "mode": "scratch"}, [0.80, 0.82, 0.84]),
                      ({"model": "lenet5", "mode": "finetune"}, [0.90, 0.90, 0.93])]
    md = experiments.markdown_section(matrix, full_rows, [], tmp_path)
    assert "| lenet5 | scratch | 3 | 82.00% | 2.00 pt | 80.00% | 84.00% |" in md
    assert "| lenet5 | finetune | 3 | 91.00% | 1.73 pt | 90.00% | 93.00% |" in md
    figure = experiments.curves_figure(matrix, 0, tmp_path / "curves.png")
    assert figure.is_file() and figure.stat().st_size > 0
