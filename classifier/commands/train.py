"""``python train.py``: train a model (scratch, finetune or feature-extract) on a dataset or image folder."""
from __future__ import annotations

import argparse
import shlex
import sys

from classifier import api
from classifier.commands import add_import_argument, cli_entry, import_user_modules
from classifier.config import add_config_arguments, flag_values
from classifier.errors import ClassifierError
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
    search = parser.add_argument_group("hyperparameter search (docs/search.md)")
    search.add_argument("--tune", metavar="N", type=int,
                        help="search hyperparameters over N trials (the total: running the same command again "
                             "continues the study in RUN/study.db), print the command that trains the best; "
                             "the space: the config key search, else per mode")
    search.add_argument("--tune-time", metavar="DURATION", help="bound the search's wall time, e.g. 30m, 2h, 90s")
    search.add_argument("--tune-backend", default="optuna", metavar="NAME",
                        help="optuna (trials one after another here) or ray (Ray Tune: trials in parallel, on a "
                             "local Ray or the cluster at $RAY_ADDRESS)")
    search.add_argument("--tune-resources", metavar="cpu=N,gpu=M",
                        help="ray backend: resources per trial (default cpu=1,gpu=0)")
    search.add_argument("--tune-parallel", metavar="N", type=int,
                        help="ray backend: at most N trials at a time (default: as many as the resources allow)")
    data = parser.add_argument_group("cross-validation and data quality (docs/data-quality.md)")
    data.add_argument("--find-label-issues", action="store_true",
                      help="k-fold out-of-fold probabilities (--folds, default 5) and cleanlab: list the train+val "
                           "images whose label looks wrong in RUN/label_issues.csv (+ .png, .md); changes no file")
    data.add_argument("--label-issue-filter", metavar="RULE",
                      help="with --find-label-issues: how many to flag (default background: cleanlab's ranking cut "
                           "at the background count; or one of cleanlab's filter_by rules; how they compare: "
                           "docs/data-quality.md)")
    add_import_argument(parser)
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


def find_lr(args: argparse.Namespace, argv: list[str]) -> float:
    """``--find-lr``: the range test, its suggestion and the train command that uses it."""
    result = api.find_lr(args.config, plot=args.find_lr or True, **flag_values(args))
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


# what train.py does instead of a plain training run: one per command (a later one would be ignored)
ACTIONS = ("find_lr", "visualize", "check_data", "tune", "find_label_issues", "resume")
# options that mean something with one action only: option -> that action
GOES_WITH = {"label_issue_filter": "find_label_issues", "save": "visualize", "tune_time": "tune",
             "tune_backend": "tune", "tune_resources": "tune", "tune_parallel": "tune"}


def check_actions(parser: argparse.ArgumentParser, args) -> None:
    """Refuse two actions in one command, and an action's option without it: nothing given is ignored."""
    given = [dest for dest in (*ACTIONS, *GOES_WITH) if getattr(args, dest) != parser.get_default(dest)]
    flag = lambda dest: "--" + dest.replace("_", "-")  # noqa: E731
    actions = [dest for dest in ACTIONS if dest in given]
    if len(actions) > 1:
        raise ClassifierError(f"{flag(actions[0])} and {flag(actions[1])} are different commands: give one of them")
    for option in (dest for dest in GOES_WITH if dest in given):
        if GOES_WITH[option] not in given:
            raise ClassifierError(f"{flag(option)} goes with {flag(GOES_WITH[option])}")


@cli_entry
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    import_user_modules(args)  # --import: a user's module (e.g. one registering a dataset), before anything resolves
    if args.list_models:
        print(list_models_text(args.list_models))
        return None
    # the settings are resolved once, in the API (config.resolve): recipe < --config file < flags
    settings = flag_values(args)
    check_actions(parser, args)
    if args.find_lr is not None:
        return find_lr(args, argv)
    if args.visualize:
        return api.show_dataset(config=args.config, save=args.save, **settings)
    if args.check_data is not None:
        return api.check_data(config=args.config, output=args.check_data or None, **settings)
    if args.tune is not None:
        from classifier.search import tune  # imports Optuna: only for a search

        return tune(args.config, trials=args.tune, time_limit=args.tune_time, backend=args.tune_backend,
                    resources=args.tune_resources, parallel=args.tune_parallel, **settings).dir
    if args.find_label_issues:
        from classifier.label_issues import find_label_issues  # imports cleanlab: only for this

        return find_label_issues(args.config, filter_by=args.label_issue_filter, **settings).dir
    if settings.get("folds") and args.resume is None:  # --folds K [--fold k]: k-fold cross-validation
        from classifier.crossval import cross_validate

        return cross_validate(args.config, **settings).dir
    return api.train(args.config, resume=args.resume, **settings).dir
