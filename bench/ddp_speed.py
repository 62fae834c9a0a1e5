#!/usr/bin/env python
"""Training throughput of 1 vs N torchrun processes on the same data, global batch and machine.

    python bench/ddp_speed.py                      # Fashion-MNIST, 5,000 training images, vggnet width 16
    python bench/ddp_speed.py --model lenet5 --per-class 1000 --processes 1 2 4

Each configuration is one ``torchrun --standalone --nproc-per-node N train.py`` run on CPU (gloo) with
the cores split evenly between the processes (--threads cores/N). Reported: training images/second of
the last epoch (the first one warms up) from the run's history.csv, which counts the images of all
processes, its ratio to the first configuration, and the wall time of the whole command (start-up,
data, validation included). Figures depend on the machine and on what else runs on it; the load
average before each run is printed for that reason.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(processes: int, args, project: Path) -> dict:
    threads = max(1, args.cores // processes)
    name = f"p{processes}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           str(REPO / "train.py"), "--dataset", "fashion_mnist", "--data-dir", args.data_dir,
           "--max-per-class", str(args.per_class), "--val-fraction", "0.02", "--model", args.model, "--extra", args.extra,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(threads),
           "--device", "cpu", "--amp", "off", "--progress", "false", "--eval-test", "false",
           "--tensorboard", "false", "--project", str(project), "--name", name]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"error: {processes} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    last = list(csv.DictReader((project / name / "history.csv").open()))[-1]
    return {"processes": processes, "threads": threads, "images_per_s": float(last["images_per_s"]),
            "wall_s": wall, "load": load}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="vggnet")
    parser.add_argument("--extra", default="{width: 16}", help="model options (YAML mapping)")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class (10 classes)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over the processes")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores shared by the processes")
    parser.add_argument("--data-dir", default=str(REPO / "datasets"))
    args = parser.parse_args(argv)

    print(f"{args.model} {args.extra} on Fashion-MNIST, {10 * args.per_class} training images, {args.epochs} "
          f"epochs, global batch {args.batch_size}, {args.cores} cores, CPU (gloo)")
    print(f"{'processes':>9} {'threads each':>12} {'img/s (last epoch)':>18} {'ratio':>6} {'wall s':>7} "
          f"{'load before':>11}")
    base = None
    with tempfile.TemporaryDirectory(prefix="ddp_speed-") as project:
        for n in args.processes:
            r = run(n, args, Path(project))
            base = base or r["images_per_s"]
            print(f"{r['processes']:>9} {r['threads']:>12} {r['images_per_s']:>18.0f} "
                  f"{r['images_per_s'] / base:>6.2f} {r['wall_s']:>7.1f} {r['load']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
