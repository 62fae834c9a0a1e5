"""``python train.py``: train a model (scratch, finetune or feature-extract) on a dataset or image folder."""
from __future__ import annotations

import argparse

from classifier import api
from classifier.commands import cli_entry
from classifier.config import add_config_arguments, given_values, make_config
from classifier.models import list_models, model_entry


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
    lines = []
    for name in list_models(pattern):
        e = model_entry(name)
        lines.append(f"{name:<28} {e.source:<12} {'pretrained' if e.has_pretrained else 'scratch only':<13} "
                     f"min input {e.min_size}")
    if pattern == "*":
        lines.append("timm/<name>                  timm         any timm model, e.g. timm/resnet18 "
                     "(`--list-models 'timm/*vit*'` to search)")
    return "\n".join(lines)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(list_models_text(args.list_models))
        return None
    given = given_values(args)
    if args.visualize or args.check_data is not None:
        settings = {k: v for k, v in make_config(given).to_dict().items() if k in given or k == "dataset"}
        dataset = settings.pop("dataset")
        if args.visualize:
            return api.show_dataset(dataset, save=args.save, **settings)
        return api.check_data(dataset, output=args.check_data or None, **settings)
    return api.train(resume=args.resume, **given).dir
