"""``python eval.py``: evaluate a checkpoint or ONNX model on its test split, another split, or a new
image folder; or compare runs in one table."""
from __future__ import annotations

import argparse
from pathlib import Path

from classifier import api
from classifier.commands import add_import_argument, cli_entry, import_user_modules
from classifier.errors import ClassifierError
from classifier.fileio import atomic_write_text
from classifier.flags import FlagParser, add_bool_flag
from classifier.metrics import worst_classes
from classifier.report.compare import compare_runs


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
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
                                     "cifar10, eurosat, folder:PATH, a registered name)")
    add_import_argument(p)
    p.add_argument("--split", default=None, help="train | val | test (default: test; val for a run without test "
                                                  "images, e.g. a train/ + val/ folder)")
    p.add_argument("--data-dir", default=None, help="data root (default: the run's, else datasets/)")
    p.add_argument("--output", help="output folder (default: next to the model, eval-<target>/)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: this decision threshold for every class (default: the fitted ones)")
    p.add_argument("--ood", metavar="FOLDER", help="images of none of the classes: AUROC, FPR at 95%% TPR and the "
                                                  "share rejected by the model's 'unknown' threshold")
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="write one results table for these runs")
    add_bool_flag(p, "progress", default=True, help="progress bar (default: true; --progress false, or the older "
                                                     "--no-progress, turns it off)", old={"--no-progress": False})
    return p


def print_summary(metrics: dict, out: Path) -> None:
    worst = worst_classes(metrics.get("per_class", {}))
    print(f"accuracy {metrics['accuracy']:.2%} on {metrics['n_samples']} images"
          + (f" (+{metrics['unknown_class_samples']} of unknown classes)" if metrics.get("unknown_class_samples") else ""))
    if metrics.get("task") == "multilabel":
        print(f"mAP {metrics['mAP'] or 0:.4f}, macro F1 {metrics['macro_f1'] or 0:.4f}, "
              f"micro F1 {metrics['micro_f1'] or 0:.4f}, Hamming loss {metrics['hamming_loss']:.4f}")
    if worst:
        print("worst classes (F1): " + ", ".join(f"{name} {f1:.3f}" for name, f1 in worst))
    if metrics.get("no_samples"):
        print(f"no samples: {', '.join(metrics['no_samples'])} (not in the evaluated data)")
    if metrics.get("skipped_files"):
        print(f"skipped {len(metrics['skipped_files'])} unreadable files (listed in metrics.json)")
    print(f"report: {out / 'report.md'}")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    import_user_modules(args)  # --import: e.g. the module registering the run's dataset
    if args.compare:
        table, _ = compare_runs(args.compare)
        if args.output:
            atomic_write_text(args.output, table + "\n", "comparison")
            print(f"table written to {args.output}")
        print(table)
        return None
    if not args.checkpoint:
        raise ClassifierError("--checkpoint is required (or --compare RUN_DIR ...)")
    if args.folder and args.dataset:
        raise ClassifierError("give a FOLDER or --dataset, not both")
    report = api.load(args.checkpoint).evaluate(args.folder or args.dataset, split=args.split, output=args.output,
                                                 data_dir=args.data_dir, batch_size=args.batch_size,
                                                 progress=args.progress, threshold=args.threshold, ood=args.ood)
    print_summary(report.metrics, report.dir)
    return report.dir
