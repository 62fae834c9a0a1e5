"""``python train.py``: train a model (scratch, finetune or feature-extract) on a dataset or image folder."""
from __future__ import annotations

import argparse

from classifier.commands import cli_entry
from classifier.config import add_config_arguments, resolve_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an image classifier. Every config key is a flag (--batch-size for batch_size); "
                    "--config FILE.yaml sets defaults that flags override.",
        epilog="examples:\n"
               "  python train.py --model vggnet --dataset fashion_mnist --epochs 15\n"
               "  python train.py --recipe fast        # a shipped recipe (classifier/recipes/); flags override it\n"
               "  python train.py --model resnet18 --mode finetune --weights imagenet --dataset folder:photos\n"
               "  python train.py --resume runs/vggnet-fashion_mnist --epochs 30",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-models", nargs="?", const="*", metavar="PATTERN",
                        help="list registered models (optionally matching a pattern, e.g. 'timm/resnet*') and exit")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--visualize", action="store_true",
                        help="save a grid of sample training images per class of --dataset and exit")
    parser.add_argument("--save", metavar="PNG", help="where --visualize writes its grid (default: DATASET-samples.png)")
    parser.add_argument("--check-data", metavar="JSON", nargs="?", const="",
                        help="check --dataset (class counts, image modes and sizes, unreadable files, duplicates "
                             "across train/val/test; optionally write the full report to JSON) and exit")
    add_config_arguments(parser)
    return parser


def list_models_text(pattern: str) -> str:
    from classifier.models import list_models, model_entry

    lines = []
    for name in list_models(pattern):
        e = model_entry(name)
        lines.append(f"{name:<28} {e.source:<12} {'pretrained' if e.has_pretrained else 'scratch only':<13} "
                     f"min input {e.min_size}")
    if pattern == "*":
        lines.append("timm/<name>                  timm         any timm model, e.g. timm/resnet18 "
                     "(`--list-models 'timm/*vit*'` to search)")
    return "\n".join(lines)


def visualize(cfg, save: str | None, per_class: int = 8):
    """Dataset viewer: the first ``per_class`` training images of every class, one row per class."""
    import numpy as np

    from classifier.data import load_dataset
    from classifier.evaluation import images_to_uint8_batch, iter_image_batches
    from classifier.report.plots import plot_dataset_grid

    info, official = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    samples = official["train"]
    labels = np.asarray(samples.labels)
    picked = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(info.classes))])
    images, shown_labels, skipped = [], [], []
    for _, batch, batch_labels in iter_image_batches(samples.subset(picked), info.channels, 256, skipped):
        images += batch
        shown_labels += list(batch_labels)
    side = min(max(max(im.shape[:2]) for im in images), 96)
    path = save or f"{cfg.dataset.split(':')[-1].strip('/').replace('/', '_')}-samples.png"
    plot_dataset_grid(path, images_to_uint8_batch(images, side), np.array(shown_labels), info.classes, per_class)
    print(f"{len(info.classes)} classes, {len(samples)} training images; sample grid written to {path}")
    return path


def check_data(cfg, path: str | None) -> dict:
    """The dataset check on the splits training would use (same fractions and seed)."""
    from classifier.data import load_dataset, split_dataset
    from classifier.data.check import run_check

    info, official = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    splits, _ = split_dataset(info, official, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                              seed=cfg.seed)
    return run_check(info.classes, splits, path)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(list_models_text(args.list_models))
        return None
    cfg = resolve_config(args)
    if args.visualize:
        return visualize(cfg, args.save)
    if args.check_data is not None:
        return check_data(cfg, args.check_data or None)
    from classifier.engine.trainer import fit

    return fit(cfg, resume=args.resume)
