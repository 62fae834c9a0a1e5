"""What a search samples: the default space per mode, or the config file's ``search:`` block.

A space maps config keys to Optuna distributions; both backends (Optuna, Ray Tune through Optuna's
sampler) sample the same dict. The ``search:`` block replaces the default space entirely:

    search:
      lr: {low: 0.001, high: 0.1, log: true}   # a range: float or int after the key's type
      head_warmup_epochs: {low: 0, high: 3}     # int keys sample integers (optional: step)
      augment: [none, light, strong]            # a list: one of these values

Settings given explicitly (flags, config keys, API arguments) are fixed: the default space leaves them out.
"""
from __future__ import annotations

import difflib

from classifier.config import DEFAULT_LR, FIELDS, key_types, make_config
from classifier.errors import ClassifierError

try:
    import optuna
except ImportError:  # an optional part: setup.cfg's tune extra
    raise ClassifierError("the search needs Optuna: pip install optuna (or the tune extra: pip install -e "
                          "'.[tune]')") from None

# keys a trial cannot vary: where the run lives, what it is trained on, the search itself
NOT_SEARCHABLE = frozenset({"search", "name", "project", "exist_ok", "dataset", "data_dir", "download", "mode",
                            "model", "weights", "classes", "epochs", "seed", "val_fraction", "test_fraction",
                            "eval_test", "recipe", "mlflow"})
AUGMENT_CHOICES = ["none", "flip", "light", "strong"]


def default_space(cfg) -> dict:
    """Learning rate (a decade below the optimiser's default up to 3x it), weight decay, label smoothing and the
    augmentation preset in every mode; head warm-up and the backbone's learning-rate multiplier for fine-tuning."""
    lr = DEFAULT_LR[cfg.optimizer]
    space = {
        "lr": optuna.distributions.FloatDistribution(lr / 10, lr * 3, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.2),
        "augment": optuna.distributions.CategoricalDistribution(AUGMENT_CHOICES),
    }
    if cfg.mode == "finetune":
        if cfg.epochs > 1:  # a warm-up must leave the backbone at least one epoch
            space["head_warmup_epochs"] = optuna.distributions.IntDistribution(0, min(3, cfg.epochs - 1))
        space["backbone_lr_mult"] = optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
    return space


def build_space(block: dict | None, cfg, given: dict) -> dict:
    """The space a study samples: ``block`` (the ``search:`` setting) if given, else the mode's default
    without the keys given explicitly. Every bound and choice is checked as a trial's setting would be."""
    if not block:
        space = {k: d for k, d in default_space(cfg).items() if k not in given}
    else:
        space = {name: _distribution(name, spec) for name, spec in block.items()}
    if not space:
        raise ClassifierError("nothing to search: every key of the default space was given; give a search: block")
    base = {k: v for k, v in given.items() if k not in ("search", "dataset")}
    for name, dist in space.items():
        values = dist.choices if isinstance(dist, optuna.distributions.CategoricalDistribution) else (dist.low,
                                                                                                      dist.high)
        for value in values:
            try:
                make_config({**base, name: value, "dataset": cfg.dataset})
            except ClassifierError as err:
                raise ClassifierError(f"search: {name} value {value!r} is not a valid setting: {err}") from None
    return space


def _distribution(name: str, spec):
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ClassifierError(f"search: unknown config key '{name}'{hint}")
    if name in NOT_SEARCHABLE:
        raise ClassifierError(f"search: '{name}' cannot vary between trials (a study compares trials of one "
                              "model, data and run length); set it as a plain setting")
    if isinstance(spec, (list, tuple)):
        if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise ClassifierError(f"search: {name} takes a non-empty list of plain values (numbers, names), "
                                  f"got {spec!r}")
        return optuna.distributions.CategoricalDistribution(list(spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise ClassifierError(f"search: {name} takes {{low: A, high: B[, log: true][, step: S]}} or a list of "
                              f"values, got {spec!r}")
    kinds, _ = key_types(name)
    try:
        if kinds[0] == "int":
            return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]),
                                                        log=bool(spec.get("log", False)), step=int(spec.get("step", 1)))
        if kinds[0] == "float":
            step = spec.get("step")
            return optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                          log=bool(spec.get("log", False)),
                                                          step=float(step) if step is not None else None)
    except (TypeError, ValueError) as err:
        raise ClassifierError(f"search: {name} {spec!r}: {err}") from None
    raise ClassifierError(f"search: {name} is a {kinds[0]} setting: give a list of values to choose from")


def default_point(space: dict, cfg) -> dict:
    """The values a plain run of ``cfg`` would use, for the keys of ``space`` whose range holds them: the
    search's first trial, so its best is never a worse setting than the defaults (on validation)."""
    from classifier.data import default_augment  # imports torch: only when a study starts

    point = {}
    for name, dist in space.items():
        value = getattr(cfg, name)
        if name == "lr" and value is None:
            value = cfg.peak_lr
        elif name == "augment" and value is None:
            value = default_augment(cfg.dataset)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if value in dist.choices:
                point[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high \
                and (not isinstance(dist, optuna.distributions.IntDistribution) or float(value).is_integer()):
            point[name] = int(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)
    return point


def sample(trial, space: dict) -> dict:
    """One value per key from an Optuna trial (the ask interface records each with its distribution)."""
    params = {}
    for name, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return params


def describe(space: dict) -> dict:
    """A plain, YAML-able form of a space (saved with the study so a re-run can check it is the same)."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            out[name] = list(dist.choices)
        else:
            out[name] = {"low": dist.low, "high": dist.high, "log": dist.log,
                         **({"step": dist.step} if dist.step not in (None, 1) else {})}
    return out
