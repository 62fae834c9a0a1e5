"""Every training default in one place: a recipe (``--recipe NAME``, shipped in classifier/recipes/) and
a YAML file (``--config``) set them, command-line flags override.

The resolved config is saved as ``config.yaml`` in each run folder and inside every checkpoint, so
``python train.py --config runs/NAME/config.yaml`` re-runs a run exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from classifier.errors import ClassifierError, unknown_choice
from classifier.preprocess import RESIZE_POLICIES

MODES = ("scratch", "finetune", "feature-extract")
MODE_ALIASES = {"transfer": "feature-extract", "feature_extract": "feature-extract", "fine-tune": "finetune"}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "onecycle", "step", "none")
SAMPLERS = ("shuffle", "balanced")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# what a resume may change (a longer run, the hardware, logging); every other key stays the run's own
RESUMABLE_KEYS = frozenset({"epochs", "device", "threads", "progress", "workers", "save_every", "early_stopping",
                            "tensorboard", "eval_test"})


@dataclass
class Config:
    # --- what to train
    recipe: str | None = None  # named defaults from classifier/recipes/NAME.yaml (e.g. fast); keys and flags override
    model: str = "resnet"  # registry name; `python train.py --list-models`
    mode: str = "scratch"  # scratch | finetune | feature-extract (alias: transfer)
    weights: str | None = None  # "imagenet" or a checkpoint/state-dict path (.pt/.pth/.safetensors)
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | eurosat | folder:PATH
    data_dir: str = "datasets"
    download: bool = True  # fetch missing data when online
    # --- data
    img_size: int | None = None  # model input side; default: dataset native size (raised to the model minimum)
    resize: str | None = None  # squash | crop | pad (classifier/preprocess.py); default: squash for datasets of
    # one image size, crop (ImageNet's centre crop) for folders of mixed sizes; resumed older runs: squash
    val_fraction: float = 0.1  # of the training set, stratified and seeded
    test_fraction: float | None = None  # carved from train without an official test split; default 0.2 when
    # there is no val split either, none with train/ + val/ (val is then the evaluation set)
    augment: typing.Any = None  # none | light | strong | list of albumentations steps; default per dataset
    workers: int | None = None  # data-loading processes for streamed folders (default: usable CPUs, at most 8)
    classes: typing.Any = None  # keep only these classes (names or indices), relabelled in the given order
    max_per_class: int = 0  # cap training images per class, seeded (0: all); e.g. few-shot transfer
    sampler: str = "shuffle"  # shuffle | balanced: training draws every class equally often (with replacement)
    # --- optimisation
    epochs: int = 10
    batch_size: int = 128  # global: torchrun splits it evenly over the processes (lr is for this batch)
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float | None = None  # peak learning rate of the head; default per optimizer (sgd 0.05, adam(w) 1e-3)
    momentum: float = 0.9  # sgd only (Nesterov)
    weight_decay: float = 5e-4  # not applied to biases and norm parameters
    scheduler: str = "cosine"  # cosine | onecycle | step | none (per optimiser step)
    warmup_epochs: float = 0.0  # linear learning-rate warm-up
    step_epochs: int = 0  # `step` schedule: x0.1 every N epochs (0: at 1/2 and 3/4 of training)
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | auto: training loss weights inversely proportional to class counts
    feature_cache: str = "auto"  # auto | off: feature-extract trains the head on cached backbone features
    head_warmup_epochs: int = 0  # finetune: train only the head for N epochs, then everything
    backbone_lr_mult: float = 1.0  # finetune: backbone learning rate = lr * this (e.g. 0.1)
    freeze_bn: bool = False  # finetune: the backbone's BatchNorm keeps its pretrained statistics (scale/shift learn)
    early_stopping: int = 0  # stop after N epochs without a lower validation loss (0: off)
    grad_clip: float = 0.0  # max gradient norm (0: off)
    # --- hardware
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto | on | off: bf16 autocast on CPUs with native bf16, fp16/bf16 on CUDA
    channels_last: bool = True
    in_memory: bool = True  # data that fits in memory: one uint8 tensor, batched augmentation (off: stream)
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    sync_bn: bool = False  # torchrun on GPUs: synchronise BatchNorm statistics across processes
    deterministic: bool = False  # deterministic algorithms (exact resume on CPU is exact anyway)
    # --- run bookkeeping
    seed: int = 0
    name: str | None = None  # run folder name under `project` (default: MODEL-DATASET, numbered)
    project: str = "runs"
    exist_ok: bool = False  # reuse runs/NAME instead of numbering a new folder
    save_every: int = 0  # also save progress every N optimiser steps within an epoch (0: end of epoch only)
    tensorboard: bool = True
    progress: bool = True  # progress bar per epoch
    eval_test: bool = True  # evaluate the best checkpoint on the test split at the end
    tta_flip: bool = False  # evaluation (val, test) averages the logits of each image and its mirror image
    extra: dict = field(default_factory=dict)  # free-form model kwargs, e.g. {dropout: 0.2, width: 64}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


FIELDS = {f.name: f for f in fields(Config)}


def _coerce(name: str, value):
    """Check and convert one value to its field's type; one-line error on a bad value."""
    kind = FIELDS[name].type
    if name == "classes" and isinstance(value, str):  # the flag: --classes 5,6,7 or --classes Sandal,Bag
        return [c.strip() for c in value.strip("[]").split(",") if c.strip()]
    if value is None or kind in ("typing.Any", typing.Any):
        return value
    base = str(kind).replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        if base == "str":
            return str(value)
        if base == "dict":
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ClassifierError(f"config value {name}={value!r} is not a valid {base}")


def _check(cfg: Config) -> Config:
    cfg.mode = MODE_ALIASES.get(cfg.mode, cfg.mode)
    for name, allowed in (("mode", MODES), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS),
                          ("device", ("auto", "cpu", "cuda")), ("amp", ("auto", "on", "off")),
                          ("sampler", SAMPLERS), ("class_weights", ("none", "auto")),
                          ("resize", (None, *RESIZE_POLICIES)), ("feature_cache", ("auto", "off"))):
        if getattr(cfg, name) not in allowed:
            choices = ", ".join(a for a in allowed if a)
            raise ClassifierError(f"invalid {name} '{getattr(cfg, name)}' (choices: {choices})")
    if cfg.mode != "scratch" and not cfg.weights:
        raise ClassifierError(f"--mode {cfg.mode} needs pretrained weights: --weights imagenet or --weights PATH")
    if cfg.mode == "scratch" and cfg.weights:
        raise ClassifierError("--mode scratch starts from random weights: drop --weights, or use --mode finetune "
                              "or feature-extract")
    if cfg.freeze_bn and cfg.mode != "finetune":
        raise ClassifierError("--freeze-bn keeps pretrained BatchNorm statistics while fine-tuning: it needs "
                              "--mode finetune (feature-extract freezes them anyway)")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ClassifierError("epochs and batch_size must be at least 1")
    if not 0.0 <= cfg.val_fraction < 1.0 or not 0.0 <= (cfg.test_fraction or 0.0) < 1.0:
        raise ClassifierError("val_fraction and test_fraction must be in [0, 1)")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ClassifierError(f"lr must be positive, got {cfg.lr}")
    return cfg


def make_config(values: dict) -> Config:
    """Build a checked Config from a plain dict (unknown keys are an error, with close matches)."""
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ClassifierError(f"unknown config key '{key}'{hint}")
    return _check(Config(**{k: _coerce(k, v) for k, v in values.items()}))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ClassifierError(f"invalid YAML in {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClassifierError(f"{path} must hold a mapping of config keys")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size`` for ``batch_size``); unset flags keep YAML/defaults."""
    parser.add_argument("--config", help="YAML file of config keys (flags override it)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).replace(" | None", "")
        help_text = f"default: {f.default!r}" if f.default is not dataclasses.MISSING else None
        if base == "bool":
            parser.add_argument(flag, type=lambda v, n=f.name: _coerce(n, v), nargs="?", const=True,
                                default=argparse.SUPPRESS, help=help_text)
        elif base == "dict":
            parser.add_argument(flag, type=yaml.safe_load, default=argparse.SUPPRESS,
                                help="YAML mapping, e.g. '{dropout: 0.2}'")
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text)


def given_values(args: argparse.Namespace) -> dict:
    """The settings a user gave on the command line: recipe < YAML file < flags (defaults not included)."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS})
    return with_recipe(values)


def resolve_config(args: argparse.Namespace) -> Config:
    """Defaults < recipe < YAML file < command-line flags."""
    return make_config(given_values(args))


RECIPES_DIR = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> dict:
    """The config keys of a shipped recipe; a recipe may build on another with its own ``recipe:`` key."""
    if name not in recipe_names():
        raise unknown_choice("recipe", str(name), recipe_names())
    values = load_yaml(RECIPES_DIR / f"{name}.yaml")
    base = values.pop("recipe", None)
    return {**load_recipe(base), **values} if base else values


def with_recipe(values: dict) -> dict:
    """``values`` over the defaults of the recipe they name (if any); the recipe's name is kept."""
    if not values.get("recipe"):
        return values
    return {**load_recipe(values["recipe"]), **values}
