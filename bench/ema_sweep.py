#!/usr/bin/env python
"""Weight averaging for a recipe, measured in one training run: several EMA decays against the trained weights.

    python bench/ema_sweep.py --recipe fast --seed 0 --decays 0.99 0.995 0.999 0.9995

Trains the recipe once (``--ema`` off, so the run itself is the plain recipe) and keeps, beside it, one
exponential moving average of the weights per decay (the toolkit's ``--ema`` rule, engine/ema.py), updated after
every optimiser step. After every epoch each average and the trained weights are evaluated on the run's
validation split (with the recipe's evaluation settings, e.g. test-time flip), so every decay is compared with
the same training trajectory: a paired comparison, free of the seed-to-seed spread. At the end the same on the
test split, printed for information only (choose on validation). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifier  # noqa: E402  (after the path insert: the bench runs from a checkout)
from classifier.data import build_loader  # noqa: E402
from classifier.engine.ema import WeightAverage  # noqa: E402
from classifier.engine.loop import evaluate  # noqa: E402


class Sweep:
    """The averages of one run, updated by an optimiser step hook; one CSV row per epoch."""

    def __init__(self, decays, out: Path):
        self.decays, self.out, self.averages, self.steps = decays, out, {}, 0

    def start(self, run):
        self.averages = {d: WeightAverage(run.raw_model, d) for d in self.decays}
        run.optimizer.register_step_post_hook(self.step)
        self.run = run

    def step(self, optimizer, args, kwargs):
        self.steps += 1
        for avg in self.averages.values():
            avg.update(self.run.raw_model, self.steps)

    def accuracies(self, loader) -> dict:
        run = self.run
        models = {"trained": run.raw_model, **{f"ema {d:g}": a.model for d, a in self.averages.items()}}
        return {name: evaluate(m, loader, run.device, amp_dtype=run.amp_dtype, channels_last=run.channels_last,
                               tta_flip=run.cfg.tta_flip)["acc"] for name, m in models.items()}

    def epoch_end(self, run, row):
        accs = self.accuracies(run.data.loaders["val"])
        first = not self.out.exists()
        with self.out.open("a", newline="") as f:
            writer = csv.DictWriter(f, ["epoch", *accs])
            if first:
                writer.writeheader()
            writer.writerow({"epoch": row["epoch"], **accs})
        print(f"epoch {row['epoch']} validation: " + ", ".join(f"{k} {v:.2%}" for k, v in accs.items()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.995, 0.999, 0.9995])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--name", help="run folder name (default: ema-sweep-RECIPE-sSEED)")
    args = parser.parse_args(argv)
    name = args.name or f"ema-sweep-{args.recipe}-s{args.seed}"
    out = ROOT / "runs" / f"{name}.csv"
    out.unlink(missing_ok=True)
    sweep = Sweep(args.decays, out)
    result = classifier.train(recipe=args.recipe, seed=args.seed, threads=args.threads, name=name, exist_ok=True,
                              progress=False, eval_test=False,
                              callbacks={"on_train_start": [sweep.start], "on_epoch_end": [sweep.epoch_end]})
    run = result.engine_run
    test = build_loader(run.data.splits["test"], run.data.prep, train=False, batch_size=256)
    accs = sweep.accuracies(test)
    print("test (information only; choose on validation): " + ", ".join(f"{k} {v:.2%}" for k, v in accs.items()))
    print(f"per-epoch validation accuracies: {out}")


if __name__ == "__main__":
    main()
