"""``python train.py``: train a model (scratch, finetune or feature-extract) on a dataset or image folder."""
from __future__ import annotations

import argparse
import shlex
import sys

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
    parser.add_argument("--find-lr", metavar="PNG", nargs="?", const="",
                        help="learning-rate range test on this run's data, model and optimiser: print the "
                             "suggested --lr and the command that uses it, plot loss against lr to PNG (default: "
                             "MODEL-DATASET-lr_find.png) and exit; nothing is trained")
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


def find_lr(given: dict, plot_path: str | None, argv: list[str]) -> float:
    """``--find-lr``: the range test, its suggestion and the train command that uses it."""
    cfg = make_config(given)
    dataset = cfg.dataset.split(":")[-1].strip("/").replace("/", "_")
    result = api.find_lr(plot=plot_path or f"{cfg.model.replace('/', '_')}-{dataset}-lr_find.png", **given)
    lr = float(f"{result.suggestion:.2g}")
    print(f"range test: {len(result.lrs)} steps, lr {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}"
          + (f", diverged at {result.divergence_lr:.2g}" if result.divergence_lr else ", no divergence")
          + "; rules: " + ", ".join(f"{name} {v:.2g}" for name, v in result.suggestions.items()))
    print(f"suggested lr: {lr:g} ({result.rule} rule)")
    print(f"plot: {result.plot_path}")
    print(f"train with it: {train_command_with_lr(argv, lr)}")
    return lr


def train_command_with_lr(argv: list[str], lr: float) -> str:
    """The train.py command of ``argv`` without --find-lr (and its PNG) and with ``--lr lr``."""
    kept, i = [], 0
    while i < len(argv):
        name, has_value = argv[i].split("=", 1)[0], "=" in argv[i]
        if name == "--lr":
            i += 1 if has_value else 2
        elif name == "--find-lr":
            i += 1 if has_value or i + 1 == len(argv) or argv[i + 1].startswith("-") else 2
        else:
            kept.append(argv[i])
            i += 1
    return shlex.join(["python", "train.py", *kept, "--lr", f"{lr:g}"])


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(list_models_text(args.list_models))
        return None
    given = given_values(args)
    if args.find_lr is not None:
        return find_lr(given, args.find_lr or None, argv)
    if args.visualize or args.check_data is not None:
        settings = {k: v for k, v in make_config(given).to_dict().items() if k in given or k == "dataset"}
        dataset = settings.pop("dataset")
        if args.visualize:
            return api.show_dataset(dataset, save=args.save, **settings)
        return api.check_data(dataset, output=args.check_data or None, **settings)
    return api.train(resume=args.resume, **given).dir
