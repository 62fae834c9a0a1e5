#!/usr/bin/env python
"""How good is the learning-rate finder's suggestion? Each rule's pick against a small sweep.

    python bench/lr_finder.py                        # both tasks, run folders in runs/bench-lr_finder/
    python bench/lr_finder.py --tasks fmnist --out /tmp/lrf

Per task: the range test (``find_lr_for_config``, as ``train.py --find-lr`` runs it) gives each rule's
learning rate; then the same training runs for a fixed number of epochs at every sweep value and at every
rule's suggestion, and the table gives each run's validation accuracy after its last epoch (accuracy
figures, not timings; one seed, so differences under about a point are noise).

Tasks (small, to stay within minutes on two CPU cores):
  fmnist    the custom resnet (width 8: 176k parameters) from scratch on Fashion-MNIST, 300 training
            images per class, 3 epochs.
  fmnist-lenet5  the same with LeNet-5 (no BatchNorm).
  transfer  like bench/experiments/transfer.yaml, smaller: the custom resnet pretrained on classes 0-4
            (600 images per class, 3 epochs), then fine-tuned on classes 5-9 from 100 images per class
            (new head, backbone at 0.1x the learning rate, 6 epochs, batch 32).
One thread: the machine is shared. Validation: 1,000 images of the official training set (100 per class
of the task's classes; never the test split).
Finished runs (summary.json in OUT) are reused, so an interrupted bench continues.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifier  # noqa: E402
from classifier.config import resolve  # noqa: E402
from classifier.engine.lr_finder import find_lr_for_config  # noqa: E402
from classifier.errors import ClassifierError  # noqa: E402

SWEEP = (0.003, 0.01, 0.03, 0.1, 0.3)  # SGD learning rates of the head; default 0.05
COMMON = dict(dataset="fashion_mnist", optimizer="sgd", val_fraction=1 / 60, progress=False,
              tensorboard=False, eval_test=False, exist_ok=True, seed=0, threads=1)
SMALL_RESNET = dict(model="resnet", extra={"width": 8})  # 176k parameters
TASKS = {
    "fmnist": dict(**SMALL_RESNET, max_per_class=300, epochs=3, batch_size=64),
    "fmnist-lenet5": dict(model="lenet5", max_per_class=300, epochs=3, batch_size=64),
    "transfer": dict(**SMALL_RESNET, classes="5,6,7,8,9", max_per_class=100, epochs=6, batch_size=32,
                     mode="finetune", backbone_lr_mult=0.1),
}
PRETRAIN = dict(**SMALL_RESNET, classes="0,1,2,3,4", max_per_class=600, epochs=3, batch_size=64, lr=0.05)


def train(out: Path, name: str, settings: dict) -> float:
    """Validation accuracy after the last epoch of the run ``name`` (trained now unless already finished)."""
    run = out / name
    if not (run / "summary.json").is_file():
        try:
            classifier.train(**COMMON, **settings, project=str(out), name=name)
        except ClassifierError as err:  # e.g. the loss became NaN: that learning rate is too high
            print(f"{name}: {err}", flush=True)
            return float("nan")
    rows = list(csv.DictReader((run / "history.csv").open()))
    return float(rows[-1]["val_acc"])


def task_settings(task: str, out: Path) -> dict:
    settings = dict(TASKS[task])
    if task == "transfer":
        train(out, "pretrain-0-4", PRETRAIN)
        settings["weights"] = str(out / "pretrain-0-4" / "best.pt")
    return settings


def measure(task: str, out: Path) -> dict:
    settings = task_settings(task, out)
    result = find_lr_for_config(resolve({**COMMON, **settings})[0], plot_path=out / f"{task}-lr_find.png")
    picks = {rule: float(f"{lr:.2g}") for rule, lr in result.suggestions.items()}
    print(f"{task}: range test {len(result.lrs)} steps, diverged at {result.divergence_lr}; picks {picks}",
          flush=True)
    lrs = sorted({*SWEEP, *picks.values()})
    accuracy = {lr: train(out, f"{task}-lr{lr:g}", {**settings, "lr": lr}) for lr in lrs}
    return {"picks": picks, "accuracy": accuracy, "divergence_lr": result.divergence_lr}


def percent(accuracy: float) -> str:
    return "NaN loss" if math.isnan(accuracy) else f"{accuracy:.1%}"


def table(results: dict) -> str:
    lines = ["| task | sweep: lr -> val acc | best of sweep | " + " | ".join(
        f"{rule} (val acc)" for rule in next(iter(results.values()))["picks"]) + " |"]
    lines.append("|" + "---|" * (3 + len(next(iter(results.values()))["picks"])))
    for task, r in results.items():
        acc = r["accuracy"]
        sweep = ", ".join(f"{lr:g}: {percent(acc[lr])}" for lr in SWEEP)
        best = max(SWEEP, key=lambda lr: -1 if math.isnan(acc[lr]) else acc[lr])
        picks = " | ".join(f"{lr:g} ({percent(acc[lr])})" for lr in r["picks"].values())
        lines.append(f"| {task} | {sweep} | {best:g} ({percent(acc[best])}) | {picks} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-lr_finder")
    args = parser.parse_args(argv)
    results = {task: measure(task, args.out) for task in args.tasks}
    print(table(results))


if __name__ == "__main__":
    main()
