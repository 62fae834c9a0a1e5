#!/usr/bin/env python
"""Time to accuracy: train (on Fashion-MNIST by default), evaluate the test split after every epoch and
report the wall-clock minutes at which test accuracy first reaches each target (93%, 94%, 95%).

    python bench/time_to_accuracy.py --recipe fast --name tta-fast
    python bench/time_to_accuracy.py --recipe fast-95 --name tta-fast-95

Every train.py flag works (``--recipe``, ``--epochs``, ``--threads``...). ``wall_min`` is wall-clock
time from the call to ``fit`` (data loading, model set-up, training, validation, checkpoints), minus the
test-split evaluations this command adds to measure; ``train_min`` is the time inside training steps
alone. The test split is evaluated as the run's validation is (the weight average with ``--ema``,
``tta_flip``, bf16). Results are printed per epoch and written to RUN_DIR/time_to_accuracy.json and .csv
after every epoch, so an interrupted run keeps its figures.

A recipe has a budget (RECIPE_BUDGETS: test accuracy within minutes of training steps) set on a machine
whose 2-thread bf16 matmul (2048 x 2048) runs at 823 GFLOP/s. The bench measures the same matmul here, in
the dtype the run computes in (bf16 where the CPU has native bf16, else fp32), and scales the budget by
the ratio, so figures from different machines compare. Where the run computes in fp32 the scaled budget
assumes training time follows the matmul rate, which favours this machine (bf16 autocast made the recipe's
net 2.6x faster, not the matmul's 4x): such a figure is printed with that caveat.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier.commands import cli_entry  # noqa: E402
import classifier  # noqa: E402
from classifier.config import add_config_arguments, flag_values  # noqa: E402
from train_speed import REFERENCE_BF16_GFLOPS  # noqa: E402

DEFAULT_TARGETS = (0.93, 0.94, 0.95)
RECIPE_BUDGETS = {"fast": (0.94, 5.0), "fast-95": (0.95, 15.0)}  # recipe -> (test accuracy, minutes at the reference)
FIELDS = ("epoch", "wall_min", "train_min", "val_acc", "test_acc", "test_loss")


class TestSplitTracker:
    """An ``on_epoch_end`` callback: test accuracy against wall-clock time, measurement time excluded."""

    def __init__(self, targets, started: float, command: str, budget: tuple[float, float] | None = None):
        self.targets, self.started, self.command = sorted(targets), started, command
        self.budget = budget  # (test accuracy, minutes at the reference rate) or None
        self.machine = None  # described once training has set the thread count
        self.rate = None  # (dtype name, GFLOP/s of the 2048 matmul here), measured at the first epoch's end
        self.measuring_s = 0.0
        self.rows: list[dict] = []
        self.loader = None

    def on_epoch_end(self, run, row: dict) -> None:
        from classifier.data import build_loader
        from classifier.engine.loop import evaluate

        from train_speed import machine_info, matmul_gflops

        begun = time.perf_counter()
        wall_s = begun - self.started - self.measuring_s
        if self.machine is None:
            self.machine = machine_info()
            dtype = run.amp_dtype or torch.float32
            self.rate = (str(dtype).removeprefix("torch."), matmul_gflops(dtype))
        if self.loader is None:
            self.loader = build_loader(run.data.splits["test"], run.data.prep, train=False,
                                       batch_size=run.cfg.batch_size, rank=run.dist.rank,
                                       world_size=run.dist.world_size)
        test = evaluate(run.eval_model, self.loader, run.device, amp_dtype=run.amp_dtype,
                        channels_last=run.cfg.channels_last, tta_flip=run.cfg.tta_flip)
        self.rows.append({"epoch": row["epoch"], "wall_min": wall_s / 60, "train_min": run.state.train_time_s / 60,
                          "val_acc": row["val_acc"], "test_acc": test["acc"], "test_loss": test["loss"]})
        if run.dist.is_main:
            print(f"  time to accuracy: epoch {row['epoch']} test accuracy {test['acc']:.2%} at "
                  f"{wall_s / 60:.2f} min wall-clock ({run.state.train_time_s / 60:.2f} min in training steps)",
                  flush=True)
            self.write(Path(run.dir), run.cfg)
        self.measuring_s += time.perf_counter() - begun

    def reached(self) -> dict:
        """target -> the first epoch row at or above it (None: not reached)."""
        return {t: next((r for r in self.rows if r["test_acc"] >= t), None) for t in self.targets}

    def write(self, run_dir: Path, cfg) -> None:
        with (run_dir / "time_to_accuracy.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        reached = {f"{t:.2%}": (None if r is None else {"wall_min": r["wall_min"], "train_min": r["train_min"],
                                                         "epoch": r["epoch"]}) for t, r in self.reached().items()}
        (run_dir / "time_to_accuracy.json").write_text(json.dumps(
            {"command": self.command, "machine": self.machine, "config": cfg.to_dict(), "reached": reached,
             "matmul_gflops": self.rate and {"dtype": self.rate[0], "here": self.rate[1],
                                             "reference_bf16": REFERENCE_BF16_GFLOPS},
             "epochs": self.rows}, indent=2))

    def budget_line(self) -> str:
        """The recipe's budget scaled to this machine's matmul rate, and whether the run met it."""
        if self.budget is None or self.rate is None:
            return ""
        acc, minutes = self.budget
        dtype, gflops = self.rate
        scaled = minutes * REFERENCE_BF16_GFLOPS / gflops
        row = next((r for r in self.rows if r["test_acc"] >= acc), None)
        verdict = ("not reached" if row is None else
                   f"reached after {row['train_min']:.2f} min of training: "
                   + ("met" if row["train_min"] <= scaled else f"missed by {row['train_min'] - scaled:.2f} min"))
        line = (f"budget: test accuracy >= {acc:.1%} within {minutes:g} min at {REFERENCE_BF16_GFLOPS:g} GFLOP/s "
                f"(bf16 matmul); here {dtype} at {gflops:.0f} GFLOP/s, so {scaled:.1f} min: {verdict}")
        if dtype != "bfloat16":
            line += ("\n  (this CPU computes in fp32: the scaling assumes training time follows the matmul rate, "
                     "which favours it; bf16 autocast made the recipe 2.6x faster, not 4x)")
        return line

    def summary(self) -> str:
        best = max(self.rows, key=lambda r: r["test_acc"], default=None)
        lines = []
        for t, r in self.reached().items():
            if r is None:
                lines.append(f"test accuracy >= {t:.1%}: not reached"
                             + (f" (best {best['test_acc']:.2%} at epoch {best['epoch']})" if best else ""))
            else:
                lines.append(f"test accuracy >= {t:.1%}: {r['wall_min']:.2f} min wall-clock, epoch {r['epoch']} "
                             f"({r['test_acc']:.2%}; {r['train_min']:.2f} min in training steps)")
        budget = self.budget_line()
        return "\n".join(lines + ([budget] if budget else []))


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                        help="test accuracies to time, as fractions (default: %(default)s)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    command = " ".join(["python", "bench/time_to_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    tracker = TestSplitTracker(args.targets, time.perf_counter(), command, RECIPE_BUDGETS.get(args.recipe))
    run_dir = classifier.train(args.config, callbacks={"on_epoch_end": [tracker.on_epoch_end]},
                               **flag_values(args)).dir
    print(f"\n{command}\nmachine: {tracker.machine}\n{tracker.summary()}\n"
          f"figures: {Path(run_dir) / 'time_to_accuracy.json'}", flush=True)
    return tracker


if __name__ == "__main__":
    main()
