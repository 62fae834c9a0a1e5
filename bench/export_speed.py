#!/usr/bin/env python
"""Deployment speed: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 (static QDQ), on CPU.

    python bench/export_speed.py                                  # random weights, stated so
    python bench/export_speed.py --run runs/r18-fmnist runs/mnv2-fmnist runs/vgg-fmnist
    python bench/export_speed.py --models resnet18 mobilenet_v2 --img-size 96   # speed at another input size

For resnet18, mobilenet_v2 and a custom net (vggnet): a run folder whose checkpoint is that model
(trained on Fashion-MNIST, say) supplies weights and data; otherwise the model is randomly
initialised at Fashion-MNIST's shape (1 channel, at least 28x28 or the model minimum) and int8 is
calibrated on Fashion-MNIST training images when they are on disk. Printed per model: file sizes,
batch-1 latency (median, p90), throughput at batch 32, fp32 parity, int8 agreement with fp32 and,
for trained models, the int8 accuracy drop — each against the targets below. Speed figures depend
on the machine and on what else runs on it; nothing here is asserted by the tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {  # what the deployment path should deliver
    "fp32_vs_eager_b1": 1.5,  # ORT fp32 at least 1.5x faster than eager at batch 1
    "int8_vs_fp32": 2.0,  # int8 at least 2x faster than fp32
    "int8_acc_drop_points": 0.5,  # at most 0.5 accuracy points lost
    "int8_size_fraction": 0.30,  # int8 file at most 30% of fp32
}
MODELS = ("resnet18", "mobilenet_v2", "vggnet")
FASHION_MNIST = dict(size=(28, 28), channels=1, mean=(0.2860,), std=(0.3530,))


def find_runs(run_dirs) -> dict:
    """model name -> checkpoint path, from run folders (best.pt, else last.pt)."""
    from classifier.checkpoint import load_checkpoint

    found = {}
    for run in run_dirs or []:
        ckpt = next((Path(run) / n for n in ("best.pt", "last.pt") if (Path(run) / n).is_file()), None)
        if ckpt is None:
            raise SystemExit(f"error: no best.pt or last.pt in {run}")
        found[load_checkpoint(ckpt)["model_name"]] = ckpt
    return found


def random_setup(name: str, data_dir: str, side: int | None = None):
    """A randomly initialised model at Fashion-MNIST's shape (or ``side`` x ``side``), with Fashion-MNIST
    samples if on disk."""
    from classifier.data import RunSplits
    from classifier.data import load_dataset
    from classifier.errors import ClassifierError
    from classifier.models import create_model, model_entry
    from classifier.preprocess import Preprocessing

    side = side or max(28, model_entry(name).min_size)
    prep = Preprocessing(**{**FASHION_MNIST, "size": (side, side)})
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    try:
        info, splits = load_dataset("fashion_mnist", data_dir, download=False)
        data = RunSplits(info, info.classes, splits, None, "Fashion-MNIST official splits")
        classes = info.classes
    except ClassifierError as err:
        classes = [str(i) for i in range(10)]
        data = RunSplits(None, classes, {}, None, f"no data ({err})")
    return model, prep, classes, data


def bench_model(name: str, ckpt_path, args, workdir: Path) -> dict:
    from classifier.checkpoint import load_checkpoint
    from classifier.export.run_data import (calibration_batches, load_run_splits, predictions, sample_images,
                                            seeded_subset)
    from classifier.models import model_from_checkpoint
    from classifier.export import benchmark, compare_with_torch, export_onnx, quantize_int8
    from classifier.inference import Predictor
    from classifier.preprocess import Preprocessing

    if ckpt_path:
        ckpt = load_checkpoint(ckpt_path)
        model, classes = model_from_checkpoint(ckpt), ckpt["classes"]
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
        data, origin = load_run_splits(Path(ckpt_path), ckpt, args.data_dir), f"trained: {ckpt_path}"
    else:
        model, prep, classes, data = random_setup(name, args.data_dir, args.img_size)
        origin = "randomly initialised (no run given): accuracy not meaningful"
    fp32 = export_onnx(model, prep, {"model_name": name, "classes": list(classes)}, workdir / f"{name}.onnx")
    result = {"model": name, "weights": origin, "input": f"{prep.channels}x{prep.size[0]}x{prep.size[1]}",
              "data": data.note, "threads": args.threads}
    test = data.get("test", "val")
    if data.get("train") is None:
        print(f"  {name}: no training images to calibrate int8 on ({data.note})")
        return result
    int8 = quantize_int8(fp32, workdir / f"{name}.int8.onnx", calibration_batches=calibration_batches(
        Predictor.load(fp32), data))
    result["size_mb"] = {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6}
    timed = benchmark(prep, model=model, onnx_models={"ORT fp32": fp32, "ORT int8": int8}, threads=args.threads,
                      batch=args.batch, runs=args.repeats, budget_s=args.budget)
    result["speed"] = {r.name: {"median_ms": r.median_ms, "p90_ms": r.p90_ms, "throughput": r.throughput,
                                "batch": r.batch} for r in timed}
    result["threads"] = timed[0].threads
    if test is not None:
        subset = test.subset(seeded_subset(len(test), args.eval_images)) if args.eval_images else test
        parity = compare_with_torch(fp32, model, sample_images(subset, prep.channels, np.arange(min(256, len(subset)))))
        labels = np.asarray(subset.labels)
        pred = {k: predictions(Predictor.load(p), subset) for k, p in (("fp32", fp32), ("int8", int8))}
        result.update(eval_images=len(subset), fp32_max_abs_diff=parity.max_abs_diff,
                      fp32_top1_agreement=parity.top1_agreement,
                      int8_agreement_with_fp32=float((pred["int8"] == pred["fp32"]).mean()))
        if ckpt_path:
            result["accuracy"] = {k: float((v == labels).mean()) for k, v in pred.items()}
    return result


def report(r: dict) -> str:
    lines = [f"\n== {r['model']} ({r['input']}, {r['weights']})", f"   data: {r['data']}"]
    if "speed" not in r:
        return "\n".join(lines)
    s, size = r["speed"], r["size_mb"]
    lines.append(f"   CPU, {r['threads']} thread(s); latency at batch 1, throughput at batch {s['ORT fp32']['batch']}")
    for name, v in s.items():
        lines.append(f"   {name:<14} median {v['median_ms']:8.3f} ms   p90 {v['p90_ms']:8.3f} ms   "
                     f"{v['throughput']:9.0f} img/s")
    eager, fp32, int8 = s["PyTorch eager"], s["ORT fp32"], s["ORT int8"]
    checks = [
        ("ORT fp32 vs eager, batch 1", eager["median_ms"] / fp32["median_ms"], TARGETS["fp32_vs_eager_b1"], "x", True),
        ("int8 vs fp32, batch 1", fp32["median_ms"] / int8["median_ms"], TARGETS["int8_vs_fp32"], "x", True),
        ("int8 vs fp32, throughput", int8["throughput"] / fp32["throughput"], TARGETS["int8_vs_fp32"], "x", True),
        ("int8 size / fp32 size", size["int8"] / size["fp32"], TARGETS["int8_size_fraction"], "", False),
    ]
    if "accuracy" in r:
        drop = 100 * (r["accuracy"]["fp32"] - r["accuracy"]["int8"])
        checks.append(("int8 accuracy drop (points)", drop, TARGETS["int8_acc_drop_points"], "", False))
    lines.append(f"   size: fp32 {size['fp32']:.2f} MB, int8 {size['int8']:.2f} MB")
    for label, value, target, unit, higher in checks:
        ok = value >= target if higher else value <= target
        lines.append(f"   {label:<30} {value:6.3f}{unit}  (target {'>=' if higher else '<='} {target}{unit}: "
                     f"{'met' if ok else 'MISSED'})")
    if "eval_images" in r:
        lines.append(f"   fp32 vs PyTorch: max |logit diff| {r['fp32_max_abs_diff']:.1e}, top-1 agreement "
                     f"{r['fp32_top1_agreement']:.2%}; int8 agrees with fp32 on {r['int8_agreement_with_fp32']:.2%} "
                     f"of {r['eval_images']} test images")
    if "accuracy" in r:
        lines.append(f"   accuracy: fp32 {r['accuracy']['fp32']:.2%}, int8 {r['accuracy']['int8']:.2%}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="*", default=[], help="run folders with trained checkpoints")
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="models to bench (default: %(default)s)")
    parser.add_argument("--data-dir", default="datasets")
    parser.add_argument("--img-size", type=int, help="input side of the randomly initialised models (default: "
                        "28, or the model's minimum); trained models keep their own")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--repeats", type=int, default=100, help="timed batch-1 calls per engine (at most)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per engine and batch size (at most)")
    parser.add_argument("--eval-images", type=int, default=2000, help="test images for accuracy (0: all)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from classifier._compat import import_torchvision

    import_torchvision()
    runs = find_runs(args.run)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in dict.fromkeys([*args.models, *runs]):  # a run of another model is benched too
            results.append(bench_model(name, runs.get(name), args, Path(tmp)))
            print(report(results[-1]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
