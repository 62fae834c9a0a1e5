"""Defaults per mode (config.MODE_DEFAULTS): fine-tuning gets a head warm-up (never every epoch), a 0.1x
backbone learning rate and, for pretrained families, frozen BatchNorm statistics; scratch and
feature-extract get none of them. A run saves the resolved values; settings given always win."""
from __future__ import annotations

import pytest
import yaml

from classifier.commands.train import main as train_main
from classifier.config import MODE_DEFAULTS, make_config, resolve_for_model
from classifier.errors import ClassifierError

TUNING = ("head_warmup_epochs", "backbone_lr_mult", "freeze_bn")


def resolved(**values) -> tuple:
    cfg = resolve_for_model(make_config(values))
    return tuple(getattr(cfg, k) for k in TUNING)


@pytest.mark.parametrize("values, expected", [
    (dict(mode="scratch"), (0, 1.0, False)),
    (dict(mode="feature-extract", weights="imagenet", model="resnet18"), (0, 1.0, False)),
    # pretrained families keep their BatchNorm statistics; the custom nets keep them moving
    (dict(mode="finetune", weights="imagenet", model="resnet18", epochs=30), (2, 0.1, True)),
    (dict(mode="finetune", weights="imagenet", model="mobilenet_v2", epochs=30), (2, 0.1, True)),
    (dict(mode="finetune", weights="w.pt", model="resnet", epochs=30), (2, 0.1, False)),
    # the warm-up takes at most a third of the epochs: a 1- or 2-epoch fine-tune trains the backbone at once
    (dict(mode="finetune", weights="w.pt", model="resnet", epochs=1), (0, 0.1, False)),
    (dict(mode="finetune", weights="w.pt", model="resnet", epochs=2), (0, 0.1, False)),
    (dict(mode="finetune", weights="w.pt", model="resnet", epochs=4), (1, 0.1, False)),
    # given settings win, including values equal to another mode's default
    (dict(mode="finetune", weights="imagenet", model="resnet18", epochs=30, head_warmup_epochs=0,
          backbone_lr_mult=1.0, freeze_bn=False), (0, 1.0, False)),
    (dict(mode="finetune", weights="imagenet", model="resnet18", epochs=30, backbone_lr_mult=0.5), (2, 0.5, True)),
])
def test_defaults_resolve_per_mode_and_model(values, expected):
    assert resolved(**values) == expected


def test_every_mode_has_every_tuning_default():
    assert set(MODE_DEFAULTS) == {"scratch", "finetune", "feature-extract"}
    assert all(set(d) == set(TUNING) for d in MODE_DEFAULTS.values())
    assert make_config({}).head_warmup_epochs is None  # unresolved until the model is known


def test_a_warmup_of_every_epoch_is_refused():
    with pytest.raises(ClassifierError, match="takes every one of the 3 epochs: the backbone would never train"):
        resolved(mode="finetune", weights="w.pt", model="resnet", epochs=3, head_warmup_epochs=3)


def test_the_run_saves_the_resolved_defaults_and_a_flag_overrides_them(tmp_path, tiny_folder):
    fast = ["--dataset", f"folder:{tiny_folder}", "--project", str(tmp_path), "--model", "lenet5", "--batch-size",
            "16", "--progress", "false", "--amp", "off", "--workers", "0", "--plots", "false", "--tensorboard",
            "false", "--eval-test", "false"]
    source = train_main([*fast, "--epochs", "1", "--name", "src"])
    saved = yaml.safe_load((source / "config.yaml").read_text())
    assert (saved["head_warmup_epochs"], saved["backbone_lr_mult"], saved["freeze_bn"]) == (0, 1.0, False)
    finetune = [*fast, "--mode", "finetune", "--weights", str(source / "best.pt"), "--epochs", "3"]
    run = train_main([*finetune, "--name", "ft"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["head_warmup_epochs"], saved["backbone_lr_mult"], saved["freeze_bn"]) == (1, 0.1, False)
    given = yaml.safe_load((run / "given.yaml").read_text())
    assert not set(TUNING) & set(given)  # defaults, not settings the user gave
    run = train_main([*finetune, "--name", "ft-flag", "--backbone-lr-mult", "0.3", "--head-warmup-epochs", "0"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["head_warmup_epochs"], saved["backbone_lr_mult"]) == (0, 0.3)
