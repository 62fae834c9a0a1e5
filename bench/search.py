#!/usr/bin/env python
"""Does the search beat the defaults, and what does Ray's parallelism buy? (classifier.tune, docs/search.md)

    python bench/search.py                         # defaults vs 6 trials, then Ray vs Optuna on 2 trials
    python bench/search.py --trials 8 --epochs 3 --per-class 200 --out /tmp/bench-search
    python bench/search.py --skip-ray

On a Fashion-MNIST subset (``--per-class`` training images per class, 1,000 validation images of the
official training set; never the test split), with ``--model`` from scratch:

1. defaults: one run with no tuned setting at ``--epochs`` epochs, and one at trials x epochs (the search's
   whole epoch budget in one run);
2. the search: ``--trials`` trials of ``--epochs`` epochs each (Optuna backend, TPE + median pruning);
   best validation accuracy of the best trial, and wall time; then the best trial's settings (best.yaml)
   trained for trials x epochs, against the defaults at that length;
3. the same number of trials (``--ray-trials``) on both backends: Optuna (one after another in this process)
   and Ray Tune with 2 trials in parallel at 1 CPU each (wall time, Ray's start included).

Prints a table of validation accuracies (accuracy figures) and wall times. The wall times depend on how busy
the machine is: say so where you quote them. Each search gets a fresh folder under OUT (deleted first).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifier  # noqa: E402


def best_val(run) -> float:
    return max(r["val_acc"] for r in run.history)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--ray-trials", type=int, default=2)
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-search")
    args = p.parse_args(argv)
    out = Path(args.out)
    common = dict(model=args.model, dataset="fashion_mnist", max_per_class=args.per_class, val_fraction=1 / 60,
                  batch_size=64, progress=False, tensorboard=False, plots=False, eval_test=False, workers=0,
                  seed=args.seed, threads=1)
    rows = []

    for epochs in (args.epochs, args.epochs * args.trials):
        shutil.rmtree(out / f"defaults-{epochs}", ignore_errors=True)
        run, wall = timed(classifier.train, epochs=epochs, project=str(out), name=f"defaults-{epochs}", **common)
        rows.append((f"defaults, {epochs} epochs", 1, epochs, best_val(run), wall))

    shutil.rmtree(out / "search", ignore_errors=True)
    result, wall = timed(classifier.tune, trials=args.trials, epochs=args.epochs, project=str(out), name="search",
                         **common)
    epochs_run = sum(int(r["epochs"]) for r in result.trials)
    rows.append((f"search, {args.trials} trials (optuna)", len(result.trials), epochs_run,
                 result.best["val_acc"] if result.best else float("nan"), wall))
    best = result.best
    if best:  # do the searched settings keep their lead when trained for the whole budget?
        long = args.epochs * args.trials
        shutil.rmtree(out / f"best-{long}", ignore_errors=True)
        run, wall = timed(classifier.train, result.best_yaml, epochs=long, project=str(out), name=f"best-{long}",
                          eval_test=False)
        rows.append((f"best trial's settings, {long} epochs", 1, long, best_val(run), wall))

    if not args.skip_ray:
        for backend in ("optuna", "ray"):
            name = f"backend-{backend}"
            shutil.rmtree(out / name, ignore_errors=True)
            extra = dict(resources={"cpu": 1}, parallel=2) if backend == "ray" else {}
            result, wall = timed(classifier.tune, trials=args.ray_trials, backend=backend, epochs=args.epochs,
                                 project=str(out), name=name, **common, **extra)
            rows.append((f"{args.ray_trials} trials, {backend}" + (" (2 in parallel)" if backend == "ray" else ""),
                         len(result.trials), sum(int(r["epochs"] or 0) for r in result.trials),
                         result.best["val_acc"] if result.best else float("nan"), wall))

    print(f"\n{args.model} from scratch, Fashion-MNIST {args.per_class} images/class, 1,000 validation images, "
          f"seed {args.seed}, 1 thread per run")
    print(f"{'what':<38} {'runs':>4} {'epochs':>6} {'best val acc':>12} {'wall s':>8}")
    for what, runs, epochs, acc, wall in rows:
        print(f"{what:<38} {runs:>4} {epochs:>6} {acc:>12.2%} {wall:>8.1f}")
    if best:
        print("best trial: " + ", ".join(f"{k}={v}" for k, v in best.items()
                                        if k not in ("trial", "state", "val_acc", "epochs", "time_s", "run_dir")))


if __name__ == "__main__":
    main()
