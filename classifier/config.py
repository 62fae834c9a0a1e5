"""Every training default in one place: a recipe (``--recipe NAME``, shipped in classifier/recipes/) and
a YAML file (``--config``) set them, command-line flags (or the API's arguments) override.

``resolve`` is the one resolution every entry point calls: recipe < config file < given values, the resume
rules, the per-model defaults; it returns the finished Config (the engine takes it as it is) and the
settings given. The resolved config is saved as ``config.yaml`` in each run folder and inside every
checkpoint, so ``python train.py --config runs/NAME/config.yaml`` re-runs a run exactly. docs/settings.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from classifier.errors import ClassifierError, unknown_choice
from classifier.fileio import atomic_write_text
from classifier.flags import FALSE_WORDS, TRUE_WORDS, add_dataclass_arguments, declared_types, flag_spec
from classifier.preprocess import RESIZE_POLICIES

MODES = ("scratch", "finetune", "feature-extract")
MODE_ALIASES = {"transfer": "feature-extract", "feature_extract": "feature-extract", "fine-tune": "finetune"}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "linear", "onecycle", "step", "none")
SAMPLERS = ("shuffle", "balanced")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# Defaults per mode, chosen on validation accuracy of the transfer experiment (bench/experiments/transfer.yaml:
# 100 images per class, 30 epochs, seeds 0-2; validation accuracy over the last 5 epochs):
# - finetune, head warm-up of 2 epochs (backbone frozen): resnet18 seeds 1-2 91.4/91.7% vs 89.6/90.6% without;
#   never every epoch: at most a third of them (a 1- or 2-epoch fine-tune trains the backbone from the start);
# - finetune, backbone at 0.1x the head's learning rate: the setting all of the measured fine-tunes used;
# - finetune, BatchNorm statistics kept from pretraining (freeze_bn) for pretrained families (torchvision,
#   timm): mobilenet_v2 91.8/93.5/93.7% vs 90.4/92.3/85.8% moving, resnet18 92.6/94.0/92.1% vs 91.3/91.8/91.8%;
#   the custom nets keep them moving (custom resnet 87.6/94.1/92.3% frozen vs 95.0/95.0/95.3% moving);
# - scratch and feature-extract: nothing to warm up or freeze, one learning rate.
MODE_DEFAULTS = {
    "scratch": {"head_warmup_epochs": 0, "backbone_lr_mult": 1.0, "freeze_bn": False},
    "feature-extract": {"head_warmup_epochs": 0, "backbone_lr_mult": 1.0, "freeze_bn": False},
    # finetune's warm-up is capped at a third of the epochs and freeze_bn is for pretrained families only:
    # resolve_for_model applies both rules
    "finetune": {"head_warmup_epochs": 2, "backbone_lr_mult": 0.1, "freeze_bn": True},
}
# what a resume may change (a longer run, the hardware, logging); every other key stays the run's own
RESUMABLE_KEYS = frozenset({"epochs", "device", "threads", "progress", "workers", "save_every", "early_stopping",
                            "tensorboard", "eval_test", "plots", "mlflow"})


@dataclass(frozen=True)
class Accepts:
    """The values a config key accepts beyond its type: an interval, or names (a tuple, or a function
    returning them when they are only known at run time). ``None`` is always accepted where the type allows it."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | typing.Callable[[], typing.Iterable[str]] | None = None
    aliases: dict | None = None  # other names for a choice, e.g. transfer -> feature-extract

    def names(self) -> list[str] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def admits(self, value) -> bool:
        if value is None:
            return True
        names = self.names()
        if names is not None:
            return not isinstance(value, str) or value in names  # lists (augment pipelines) are checked later
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """What is accepted, e.g. "must be in [0, 1)", "must be >= 1"."""
        low = (self.ge, "[") if self.ge is not None else (self.gt, "(") if self.gt is not None else None
        high = (self.le, "]") if self.le is not None else (self.lt, ")") if self.lt is not None else None
        if low and high:
            return f"must be in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        if low:
            return f"must be {'>=' if low[1] == '[' else '>'} {low[0]:g}"
        return f"must be {'<=' if high[1] == ']' else '<'} {high[0]:g}"


def key(default=None, *, factory=None, ge=None, gt=None, le=None, lt=None, choices=None, aliases=None):
    """A Config field with its default and what it accepts (read back by ``validate``)."""
    accepts = Accepts(ge=ge, gt=gt, le=le, lt=lt, choices=choices, aliases=aliases)
    if factory is not None:
        return field(default_factory=factory, metadata={"accepts": accepts})
    return field(default=default, metadata={"accepts": accepts})


RECIPES_DIR = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def task_names() -> list[str]:
    from classifier.tasks import TASK_CHOICES  # imports torch: only when a task name is checked

    return list(TASK_CHOICES)


def ood_score_names() -> list[str]:
    from classifier.trust.ood import SCORES  # the scores' registry; imported when a name is checked

    return list(SCORES)


def augment_presets() -> list[str]:
    from classifier.data.augment import PRESETS  # imports torch: only when an augment name is checked

    return list(PRESETS)


@dataclass
class Config:
    # --- what to train
    recipe: str | None = key(choices=recipe_names)  # named defaults from classifier/recipes/NAME.yaml (e.g. fast)
    model: str = "resnet"  # registry name; `python train.py --list-models`
    mode: str = key("scratch", choices=MODES, aliases=MODE_ALIASES)  # alias: transfer = feature-extract
    weights: str | None = None  # "imagenet" or a checkpoint/state-dict path (.pt/.pth/.safetensors)
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | eurosat | folder:PATH | a registered name (data/sources)
    data_dir: str = "datasets"
    download: bool = True  # fetch missing data when online
    # --- data
    img_size: int | None = key(ge=1)  # model input side; default: dataset native size (raised to the model minimum)
    resize: str | None = key(choices=RESIZE_POLICIES)  # squash | crop | pad (classifier/preprocess.py); default:
    # squash for datasets of one image size, crop (ImageNet's centre crop) for folders of mixed sizes
    val_fraction: float = key(0.1, ge=0, lt=1)  # of the training set, stratified and seeded
    test_fraction: float | None = key(ge=0, lt=1)  # carved from train without an official test split; default
    # 0.2 when there is no val split either, none with train/ + val/ (val is then the evaluation set)
    augment: str | list | None = key(choices=augment_presets)  # preset or albumentations steps; default per dataset
    workers: int | None = key(ge=0)  # data-loading processes for streamed folders (default: usable CPUs, at most 8)
    classes: list | None = None  # keep only these classes (names or indices), relabelled in the given order
    max_per_class: int = key(0, ge=0)  # cap training images per class, seeded (0: all); e.g. few-shot transfer
    sampler: str = key("shuffle", choices=SAMPLERS)  # balanced: training draws every class equally often
    exclude: str | list | None = field(default=None, metadata=flag_spec(  # classifier/data/exclude.py
        metavar="LIST", help="train without these files: names relative to the dataset folder, comma-separated, "
                             "or a text/CSV file of them (e.g. RUN/label_issues.csv); applied after the split"))
    folds: int | None = key(ge=2)  # k-fold cross-validation over train+val (classifier/crossval.py)
    fold: int | None = key(ge=1)  # with folds: this run is fold k (1..folds), validating on it
    # --- optimisation
    epochs: int = key(10, ge=1)
    batch_size: int = key(128, ge=1)  # global: torchrun splits it evenly over the processes (lr is for this batch)
    optimizer: str = key("sgd", choices=OPTIMIZERS)
    lr: float | None = key(gt=0)  # peak learning rate of the head; default per optimizer (sgd 0.05, adam(w) 1e-3)
    momentum: float = key(0.9, ge=0, lt=1)  # sgd only (Nesterov)
    weight_decay: float = key(5e-4, ge=0)  # not applied to biases and norm parameters
    scheduler: str = key("cosine", choices=SCHEDULERS)  # per optimiser step
    warmup_epochs: float = key(0.0, ge=0)  # linear learning-rate warm-up
    step_epochs: int = key(0, ge=0)  # `step` schedule: x0.1 every N epochs (0: at 1/2 and 3/4 of training)
    label_smoothing: float = key(0.0, ge=0, lt=1)
    progressive_resize: float = key(0.0, ge=0, lt=1)  # first epochs train on images this fraction of the
    # input side (0: off), growing to the full side over the first 2/3 of the epochs; evaluation at full size
    ema: float = key(0.0, ge=0, lt=1)  # decay of an exponential moving average of the weights, which validation,
    # best.pt and the export use (0: off; e.g. 0.999); engine/ema.py
    class_weights: str = key("none", choices=("none", "auto"))  # auto: loss weights inversely prop. to class counts
    # (multi-label: per-class positive weights, negatives / positives)
    task: str = key("auto", choices=task_names)  # multiclass | multilabel (sigmoid + BCE, fitted thresholds);
    # auto: multilabel when the labels are sets (some image has none or several); classifier/tasks.py
    threshold: float | None = key(ge=0, le=1)  # multi-label: this decision threshold for every class instead of
    # those fitted on the validation split
    feature_cache: str = key("auto", choices=("auto", "off"))  # feature-extract: head trains on cached features
    feature_views: int | None = key(ge=1)  # feature cache: augmented views per image (default: engine/features.py)
    # the three below default per mode (and model), as MODE_DEFAULTS says; the run's config.yaml holds the values
    head_warmup_epochs: int | None = key(ge=0)  # finetune: train only the head for N epochs, then everything
    backbone_lr_mult: float | None = key(ge=0)  # finetune: backbone learning rate = lr * this
    freeze_bn: bool | None = None  # finetune: the backbone's BatchNorm keeps its pretrained statistics
    early_stopping: int = key(0, ge=0)  # stop after N epochs without a lower validation loss (0: off)
    grad_clip: float = key(0.0, ge=0)  # max gradient norm (0: off)
    # --- hardware
    device: str = key("auto", choices=("auto", "cpu", "cuda"))
    amp: str = key("auto", choices=("auto", "bf16", "fp16", "off"), aliases={"on": "auto"})  # auto: bf16 on CPUs
    # with native bf16 (else fp32), bf16 on CUDA where supported, else fp16 with a gradient scaler (runtime.py)
    channels_last: bool = True
    in_memory: bool = True  # data that fits in memory: one uint8 tensor, batched augmentation (off: stream)
    compile: bool = False  # torch.compile the model
    threads: int | None = key(ge=1)  # torch intra-op threads (default: torch's choice)
    sync_bn: bool = False  # torchrun on GPUs: synchronise BatchNorm statistics across processes
    deterministic: bool = False  # deterministic algorithms (exact resume on CPU is exact anyway)
    # --- run bookkeeping
    seed: int = key(0, ge=0)
    name: str | None = None  # run folder name under `project` (default: MODEL-DATASET, numbered)
    project: str = "runs"
    exist_ok: bool = False  # reuse runs/NAME instead of numbering a new folder
    save_every: int = key(0, ge=0)  # also save progress every N optimiser steps within an epoch (0: end of epoch)
    tensorboard: bool = True
    mlflow: str | None = field(default=None, metadata=flag_spec(  # classifier/tracking.py
        nargs="?", const="mlruns", metavar="URI", help="log the run to MLflow: a tracking URI (http://..., "
        "sqlite:///...) or a folder (alone: ./mlruns); a tracker failure warns and training goes on"))
    progress: bool = True  # progress bar per epoch
    eval_test: bool = True  # evaluate the best checkpoint on the test split at the end
    plots: bool = True  # PNG figures: curves.png and the test report's (off: its numbers and tables only, 4-5 s less)
    tta_flip: bool = False  # evaluation (val, test) averages the logits of each image and its mirror image
    # --- trust (classifier/trust/): fitted on the validation split after training, stored in best.pt
    calibrate: bool = True  # temperature scaling of the probabilities (false: the raw softmax)
    ood_score: str = key("mahalanobis", choices=ood_score_names)  # the "unknown" score (docs/trust.md)
    reject_keep: float = key(0.95, gt=0, le=1)  # share of validation images the "unknown" threshold keeps
    extra: dict = key(factory=dict)  # free-form model kwargs, e.g. {dropout: 0.2, width: 64}
    search: dict = key(factory=dict)  # train.py --tune: the space to sample, {key: {low, high[, log]} or [values]}
    # (classifier/search/space.py); empty: the mode's default space

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


FIELDS = {f.name: f for f in fields(Config)}


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ValueError


def _to_int(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    value = float(value)
    if not math.isfinite(value):
        raise ValueError
    return value


def _to_str(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError
    return str(value)


def _of_type(kind):
    def check(value):
        if not isinstance(value, kind):
            raise ValueError
        return list(value) if kind is not dict else value

    return check


CONVERTERS = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str,
              "list": _of_type((list, tuple)), "dict": _of_type(dict)}


def key_types(name: str) -> tuple[list[str], bool]:
    """The declared types of a key, in order (e.g. ["str", "list"]), and whether it may be None."""
    return declared_types(FIELDS[name])


def convert_value(value, kinds: list[str], what: str):
    """``value`` as the first of the declared ``kinds`` it converts to; else a one-line error naming ``what``."""
    for kind in kinds:
        try:
            return CONVERTERS[kind](value)
        except (TypeError, ValueError, OverflowError):
            continue
    raise ClassifierError(f"{what}={value!r} is not a valid {' or '.join(kinds)}")


def _coerce(name: str, value):
    """Check and convert one value to its key's type; one-line error on a bad value."""
    kinds, optional = key_types(name)
    if name == "classes" and isinstance(value, str):  # the flag: --classes 5,6,7 or --classes Sandal,Bag
        return [c.strip() for c in value.strip("[]").split(",") if c.strip()]
    if value is None and optional:
        return value
    return convert_value(value, kinds, f"config value {name}")


def _accepted(name: str, value):
    """``value`` (an alias replaced by its name) if the key's declaration accepts it, else a one-line error."""
    accepts = FIELDS[name].metadata.get("accepts")
    if accepts is None:
        return value
    if accepts.aliases and isinstance(value, str):
        value = accepts.aliases.get(value, value)
    if accepts.admits(value):
        return value
    names = accepts.names()
    if names is not None:
        raise ClassifierError(f"invalid {name} '{value}' (choices: {', '.join(names)})")
    raise ClassifierError(f"{name}={value!r} is out of range: {accepts.describe()}")


def validate(cfg: Config) -> Config:
    """Check every key against its declaration, then the rules that join keys; returns ``cfg``, converted.

    The one check for flags, YAML files, recipes and the Python API (all reach it through ``make_config``).
    """
    for name in FIELDS:
        setattr(cfg, name, _accepted(name, _coerce(name, getattr(cfg, name))))
    _check_rules(cfg)
    return cfg


def _check_rules(cfg: Config) -> None:
    """Rules across keys."""
    from classifier.data.sources import check_dataset  # the dataset registry (users' sources too); imports torch

    check_dataset(cfg.dataset)
    if cfg.mode != "scratch" and not cfg.weights:
        raise ClassifierError(f"--mode {cfg.mode} needs pretrained weights: --weights imagenet or --weights PATH")
    if cfg.mode == "scratch" and cfg.weights:
        raise ClassifierError("--mode scratch starts from random weights: drop --weights, or use --mode finetune "
                              "or feature-extract")
    if cfg.freeze_bn and cfg.mode != "finetune":
        raise ClassifierError("--freeze-bn keeps pretrained BatchNorm statistics while fine-tuning: it needs "
                              "--mode finetune (feature-extract freezes them anyway)")


def resolve_for_model(cfg: Config) -> Config:
    """The values that depend on the model: its accepted input sizes checked, and the per-mode defaults
    (MODE_DEFAULTS) filled in where the setting was not given. Run before any data is loaded."""
    from classifier.models import model_entry  # imports torch and the builders; config stays light

    entry = model_entry(cfg.model)
    if cfg.img_size is not None:
        entry.check_size(cfg.img_size)
    defaults = dict(MODE_DEFAULTS[cfg.mode])
    if cfg.mode == "finetune":
        defaults["head_warmup_epochs"] = min(defaults["head_warmup_epochs"], cfg.epochs // 3)
        defaults["freeze_bn"] = defaults["freeze_bn"] and entry.source != "custom"
    resolved = dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
    if resolved.mode == "finetune" and resolved.head_warmup_epochs >= resolved.epochs:
        raise ClassifierError(f"--head-warmup-epochs {resolved.head_warmup_epochs} takes every one of the "
                              f"{resolved.epochs} epochs: the backbone would never train (give fewer, or more epochs)")
    return resolved


def make_config(values: dict) -> Config:
    """Build a checked Config from a plain dict (unknown keys are an error, with close matches)."""
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ClassifierError(f"unknown config key '{key}'{hint}")
    return validate(Config(**values))


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
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size`` for ``batch_size``); unset flags keep YAML/defaults."""
    parser.add_argument("--config", help="YAML file of config keys (flags override it)")
    add_dataclass_arguments(parser, Config, convert=_coerce)  # classifier/flags.py: the one flag style


def flag_values(args: argparse.Namespace) -> dict:
    """The config keys given as flags (``add_config_arguments``; unset flags are absent): ``resolve``'s values."""
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def resolve_config(args: argparse.Namespace) -> Config:
    """The finished Config of a command line: ``resolve`` of its flags and its ``--config`` file."""
    return resolve(flag_values(args), getattr(args, "config", None))[0]


def resolve(values: dict | None = None, config_file: str | Path | None = None,
            resume: str | Path | None = None) -> tuple[Config, dict]:
    """The one resolution of a run's settings, for every entry point (the scripts, ``classifier.train``,
    ``find_lr``, ``check_data``, ``show_dataset``): defaults < recipe < ``config_file`` < ``values``.

    A new run then gets its per-model defaults (``resolve_for_model``); with ``resume`` (a run folder), the
    run's own settings win instead, and the values may change only what a resume may change
    (``resumed``). Returns the finished Config, which the engine takes as it is, and the settings given
    (checked and typed: flags arrive as text), which the run keeps in given.yaml.
    """
    values = with_recipe({**(load_yaml(config_file) if config_file else {}), **(values or {})})
    asked = make_config(values)
    typed = asked.to_dict()
    given = {key: typed[key] for key in values}
    if resume is not None:
        return resumed(*run_settings(resume), given)
    return resolve_for_model(asked), given


def run_settings(run_dir: str | Path) -> tuple[dict, dict]:
    """The config a run folder's last.pt was saved with, and the settings given for the run so far."""
    from classifier.checkpoint import load_checkpoint  # imports torch: only for a resume

    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        raise ClassifierError(f"cannot resume: {path} not found")
    ckpt = load_checkpoint(path, mmap=True)  # the settings only: build_run reads the weights
    return dict(ckpt["config"]), dict(ckpt.get("given") or {})


def resumed(saved: dict, saved_given: dict, given: dict) -> tuple[Config, dict]:
    """The resume rules: the run's own config wins; settings given now may change what a resume may change
    (RESUMABLE_KEYS: a longer run, the hardware, ...) and must otherwise equal the run's, so that a flag
    given is never silently ignored. Returns the run's Config so changed, and its given settings so far."""
    run_cfg = make_config(dict(saved))
    for key, value in given.items():
        if key not in RESUMABLE_KEYS and value != getattr(run_cfg, key):
            raise ClassifierError(f"--{key.replace('_', '-')} cannot change when resuming (the run has "
                                  f"{getattr(run_cfg, key)!r}); on resume only {', '.join(sorted(RESUMABLE_KEYS))} "
                                  "may change: start a new run for other settings")
    changes = {k: v for k, v in given.items() if k in RESUMABLE_KEYS}
    return make_config({**saved, **changes}), {**saved_given, **changes}


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
