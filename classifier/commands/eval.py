"""``python eval.py``: evaluate a checkpoint or ONNX model on its test split, another split, or a new
image folder; or compare runs in one table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from classifier.commands import cli_entry
from classifier.errors import ClassifierError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a model: accuracy, per-class precision/recall/specificity/F1, confusion "
                    "matrix, calibration, figures and report.md.",
        epilog="examples:\n"
               "  python eval.py --checkpoint runs/vggnet-fashion_mnist/best.pt\n"
               "  python eval.py --checkpoint runs/NAME/model.onnx photos/new_batch\n"
               "  python eval.py --checkpoint runs/NAME/best.pt --dataset fashion_mnist --split val\n"
               "  python eval.py --compare runs/A runs/B --output results.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="a new folder of images in class sub-folders")
    p.add_argument("--checkpoint", help="best.pt / last.pt of a run, or an exported .onnx / .ort model")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the run's own (fashion_mnist, "
                                     "cifar10, eurosat, folder:PATH)")
    p.add_argument("--split", default="test", help="train | val | test (default: test)")
    p.add_argument("--data-dir", default=None, help="data root (default: the run's, else datasets/)")
    p.add_argument("--output", help="output folder (default: next to the model, eval-<target>/)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="write one results table for these runs")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_split_samples(model_path: Path, meta: dict, args):
    """The samples to evaluate: a recorded split of the model's run, or a split of --dataset."""
    from classifier.data import load_split, samples_from_record, split_dataset, load_dataset
    from classifier.engine.setup import select_classes

    cfg = meta.get("config") or {}
    root = args.data_dir or cfg.get("data_dir", "datasets")
    record_file = model_path.parent / "split.json"
    if not args.dataset and record_file.exists():
        record = load_split(record_file)
        info, samples = samples_from_record(None, root, record, args.split)
        source = f"{record['dataset']} {args.split} split recorded in {record_file}"
    else:
        spec = args.dataset or meta.get("dataset")
        if not spec:
            raise ClassifierError(f"no split.json next to {model_path}: say what to evaluate on "
                                  "(a FOLDER argument or --dataset)")
        info, official = load_dataset(spec, root)
        splits, _ = split_dataset(info, official, val_fraction=cfg.get("val_fraction", 0.1),
                                  test_fraction=cfg.get("test_fraction", 0.2), seed=cfg.get("seed", 0))
        if args.split not in splits:
            raise ClassifierError(f"unknown split '{args.split}' (choices: {', '.join(splits)})")
        samples, source = splits[args.split], f"{spec} {args.split} split"
    _, selected = select_classes(info, {"x": samples}, cfg.get("classes"))
    return selected["x"], info.channels, source


def folder_samples(folder: str, model_classes: list[str]):
    """A new folder's images labelled by class *name*: unknown classes get -1 and are listed."""
    from classifier.data import Samples, is_image_file

    base = Path(folder)
    if not base.is_dir():
        raise ClassifierError(f"evaluation folder '{folder}' does not exist")
    dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in dirs:
        files = sorted(str(f) for f in d.rglob("*") if f.is_file() and is_image_file(f))
        label = model_classes.index(d.name) if d.name in model_classes else -1
        paths += files
        labels += [label] * len(files)
    names = [d.name for d in dirs]
    unknown = [n for n in names if n not in model_classes]
    missing = [c for c in model_classes if c not in names]
    if not paths:
        raise ClassifierError(f"no images in class sub-folders of '{folder}'")
    if len(unknown) == len(names):
        raise ClassifierError(f"'{folder}' shares no class with the model (folder: {', '.join(names[:8])}; "
                              f"model: {', '.join(model_classes[:8])})")
    if unknown:
        n = sum(1 for l in labels if l < 0)
        print(f"classes the model does not know (their {n} images are predicted and listed in predictions.csv, "
              f"not counted in accuracy): {', '.join(unknown)}")
    if missing:
        print(f"model classes with no folder here: {', '.join(missing)}")
    channels = 3
    return Samples(labels=np.array(labels), paths=paths, root=str(base)), channels


def evaluate_model(args) -> Path:
    from classifier.evaluation import evaluate_and_report
    from classifier.inference import Predictor

    model_path = Path(args.checkpoint)
    predictor = Predictor.load(model_path)
    meta = predictor.metadata
    if args.folder:
        samples, _ = folder_samples(args.folder, predictor.classes)
        channels, source, target = predictor.prep.channels, f"folder {args.folder}", Path(args.folder).name
    else:
        samples, _, source = run_split_samples(model_path, meta, args)
        channels, target = predictor.prep.channels, args.split  # decoded as for training and test.py
    out = Path(args.output) if args.output else model_path.parent / f"eval-{target}-{model_path.stem}"
    metrics = evaluate_and_report(predictor.predict, samples, predictor.classes, channels, out,
                                  title=f"{model_path.name} on {source}", source=str(model_path),
                                  batch_size=args.batch_size, progress=not args.no_progress)
    print_summary(metrics, out)
    return out


def print_summary(metrics: dict, out: Path) -> None:
    per_class = metrics.get("per_class", {})
    worst = sorted(per_class.items(), key=lambda kv: (kv[1].get("f1") or 0.0))[:3]
    print(f"accuracy {metrics['accuracy']:.2%} on {metrics['n_samples']} images"
          + (f" (+{metrics['unknown_class_samples']} of unknown classes)" if metrics.get("unknown_class_samples") else ""))
    if worst:
        print("worst classes (F1): " + ", ".join(f"{k} {(v.get('f1') or 0):.3f}" for k, v in worst))
    if metrics.get("skipped_files"):
        print(f"skipped {len(metrics['skipped_files'])} unreadable files (listed in metrics.json)")
    print(f"report: {out / 'report.md'}")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.compare:
        from classifier.report.compare import compare_runs

        table, _ = compare_runs(args.compare)
        if args.output:
            Path(args.output).write_text(table + "\n")
            print(f"table written to {args.output}")
        print(table)
        return None
    if not args.checkpoint:
        raise ClassifierError("--checkpoint is required (or --compare RUN_DIR ...)")
    return evaluate_model(args)
