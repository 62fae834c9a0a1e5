"""The learning-rate range test: state restored exactly, a sensible suggestion, groups keep their ratio, CLI."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from classifier.commands.train import main as train_main, train_command_with_lr
from classifier.engine.loop import StepContext, training_step
from classifier.engine.lr_finder import (capped_steepest_index, find_lr, has_diverged, steepest_index, suggest,
                                         valley_index)
from classifier.models import create_model, param_groups

FAST = ["--batch-size", "16", "--progress", "false", "--amp", "off", "--workers", "0"]


def blobs(n_batches=6, batch=32, features=8, classes=3, seed=0):
    """Batches of a learnable task: Gaussian blobs around one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g) * 3
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, classes, (batch,), generator=g)
        out.append((centres[y] + torch.randn(batch, features, generator=g), y))
    return out


class AugmentedBatches(list):
    """Batches with noise drawn from the global numpy and python generators (like an augmenting loader)."""

    def __iter__(self):
        for x, y in super().__iter__():
            yield x + float(np.random.normal()) * 0.01 + random.random() * 0.01, y


def mlp(features=8, classes=3):
    torch.manual_seed(0)  # dropout draws from the global torch generator
    return nn.Sequential(nn.Linear(features, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(32, classes))


def context(optimizer):
    return StepContext(optimizer, torch.device("cpu"))


def loss_after(model, optimizer, batches, lr, steps=30):
    for group in optimizer.param_groups:
        group["lr"] = lr
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss, _, _ = training_step(model, x, y, context(optimizer))
    return loss


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_model_optimizer_and_random_state_are_restored_exactly(kind):
    batches = blobs()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if kind == "sgd" else \
        torch.optim.AdamW(model.parameters(), lr=1e-3)
    for x, y in batches[:3]:  # momentum / moment buffers and BatchNorm statistics exist before the test
        training_step(model, x, y, context(optimizer))
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = optimizer.state_dict()
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    buffers_before = {i: {k: v.clone() for k, v in s.items()} for i, s in opt_before["state"].items()}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    result = find_lr(model, optimizer, AugmentedBatches(batches), context(optimizer), num_steps=60)
    assert len(result.lrs) > 10  # it really trained

    assert not model.training
    after = model.state_dict()
    assert set(after) == set(weights) and all(torch.equal(after[k], weights[k]) for k in weights)
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == groups_before
    state = optimizer.state_dict()["state"]
    assert set(state) == set(buffers_before)
    assert all(torch.equal(state[i][k], v) for i, s in buffers_before.items() for k, v in s.items())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1][1]) and random.getstate() == rng[2]


def test_suggestion_is_inside_the_range_below_divergence_and_trains_well():
    batches = blobs()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    result = find_lr(model, optimizer, batches, context(optimizer), start_lr=1e-6, end_lr=100.0, num_steps=100)
    assert result.divergence_lr is not None and result.divergence_lr == result.lrs[-1]
    assert len(result.lrs) < 100  # stopped early
    assert result.rule == "capped" and result.suggestion == result.suggestions["capped"]
    for lr in result.suggestions.values():
        assert 1e-6 <= lr < result.divergence_lr
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = {}
    for name, lr in (("tiny", 1e-6), ("suggested", result.suggestion)):
        model.load_state_dict(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        losses[name] = loss_after(model, optimizer, batches, lr)
    assert losses["suggested"] < 0.5 * losses["tiny"]


def test_fine_tune_backbone_keeps_its_multiplier_during_the_test():
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=3, in_chans=1)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.05, backbone_lr_mult=0.1), lr=0.05, momentum=0.9)
    seen = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        return step(*args, **kwargs)

    optimizer.step = recording_step
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    result = find_lr(model, optimizer, batches, context(optimizer), num_steps=30, end_lr=1.0)
    assert len(seen) >= 20 and [s["head"] for s in seen] == pytest.approx(result.lrs[:len(seen)])
    for lrs in seen:
        assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
        assert lrs["backbone_no_decay"] == pytest.approx(0.1 * lrs["head"])
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"head": 0.05, "head_no_decay": 0.05, "backbone": 0.005, "backbone_no_decay": 0.005})


def test_rules_on_made_up_curves():
    lrs = np.geomspace(1e-7, 10, 100)
    # flat, one early spike, a long descent from 1e-4 to 1e-1, then up
    curve = np.concatenate([np.full(30, 2.3), np.linspace(2.3, 0.3, 45), np.linspace(0.3, 3.0, 25)])
    curve[12] = 0.5  # early spike downwards: steepest drop right after it... jumps back
    curve[13] = 2.3
    valley = lrs[valley_index(curve)]
    assert 1e-4 < valley < 1e-1
    assert steepest_index(lrs, curve) in (11, 12)  # the pitfall: the steepest slope is the spike
    picks = suggest(lrs[:90], curve[:90], diverged=True)
    assert all(lr < lrs[89] for lr in picks.values())


def test_capped_rule_stays_a_factor_3_below_the_lowest_loss():
    lrs = np.geomspace(1e-4, 1, 41)  # 10 steps per decade
    late_drop = np.concatenate([np.full(36, 2.3), [2.25, 2.15, 2.0, 1.8, 1.7]])  # falls fastest at its end
    assert steepest_index(lrs, late_drop) >= 38
    assert lrs[capped_steepest_index(lrs, late_drop)] == pytest.approx(lrs[40] / 3, rel=0.15)
    early_drop = np.concatenate([np.linspace(2.3, 1.0, 20), np.linspace(1.0, 0.9, 21)])
    assert capped_steepest_index(lrs, early_drop) == steepest_index(lrs, early_drop) < 20


def test_divergence_is_four_times_the_minimum_or_worse_than_at_the_start():
    falling = list(np.linspace(2.4, 0.5, 40))
    assert not has_diverged(falling, settle_steps=10)
    assert has_diverged(falling + [2.1], settle_steps=10)  # 4.2x the minimum
    start = [2.3, 2.42, 2.36, 2.4, 2.38]  # smoothed loss of the first steps: the start level is 2.42
    assert not has_diverged(start[:4], settle_steps=5)  # the start is still settling
    assert not has_diverged(start + [2.37, 2.39, 2.4, 2.43], settle_steps=5)  # a flat start's noise: no fall
    assert not has_diverged(start + [2.2, 2.0, 2.4], settle_steps=5)  # fell, not yet back above the start
    assert has_diverged(start + [2.2, 2.0, 2.5], settle_steps=5)  # worse than when the test began


def test_cli_prints_the_suggestion_the_plot_and_the_command(tmp_path, tiny_folder, capsys):
    png = tmp_path / "finder.png"
    argv = ["--dataset", f"folder:{tiny_folder}", "--model", "lenet5", "--project", str(tmp_path / "runs"),
            "--lr", "0.3", *FAST, "--find-lr", str(png)]
    lr = train_main(argv)
    out = capsys.readouterr().out
    match = re.search(r"^suggested lr: (\S+)", out, re.MULTILINE)
    assert match and float(match.group(1)) == lr and 1e-7 <= lr <= 10
    assert png.is_file() and png.stat().st_size > 10_000 and f"plot: {png}" in out
    command = re.search(r"^train with it: (.*)$", out, re.MULTILINE).group(1)
    assert command.startswith("python train.py --dataset") and command.endswith(f"--lr {lr:g}")
    assert "--find-lr" not in command and "0.3" not in command
    assert not (tmp_path / "runs").exists()  # nothing written but the plot


def test_train_command_drops_the_finder_and_the_old_lr():
    assert train_command_with_lr(["--find-lr", "--lr=0.1", "--model", "a b"], 0.003) == \
        "python train.py --model 'a b' --lr 0.003"
    assert train_command_with_lr(["--model", "m", "--find-lr", "p.png", "--lr", "1"], 2e-4) == \
        "python train.py --model m --lr 0.0002"
