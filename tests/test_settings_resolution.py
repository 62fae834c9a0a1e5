"""One resolution of settings (config.resolve): defaults < recipe < config file < given values, the resume
rules and the per-model defaults, the same for train.py, classifier.train, find_lr, check_data and
show_dataset. Training itself is replaced by a recorder where only the resolved settings matter."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

import classifier
from classifier import api, config
from classifier.checkpoint import save_checkpoint
from classifier.commands.train import main as train_main
from classifier.config import RESUMABLE_KEYS, resolve
from classifier.errors import ClassifierError

RECIPE = {"epochs": 7, "lr": 0.2, "batch_size": 32, "label_smoothing": 0.1}
CONFIG_FILE = {"recipe": "base", "lr": 0.3, "batch_size": 48}
# what each layer wins: epochs/label_smoothing from the recipe, lr from the file, batch_size given
EXPECTED = {"recipe": "base", "epochs": 7, "label_smoothing": 0.1, "lr": 0.3, "batch_size": 16}


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A recipes folder of our own (recipe names are checked against it), and a config file naming one."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump(RECIPE))
    monkeypatch.setattr(config, "RECIPES_DIR", folder)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(CONFIG_FILE))
    return folder, tmp_path / "mine.yaml"


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """classifier.train with the engine replaced by a recorder of (cfg, given, resume); counts resolutions."""
    calls, resolutions = [], []

    def fake_fit(cfg, *, given=None, resume=None, arrays=None, callbacks=None):
        calls.append((cfg, given, resume))
        return SimpleNamespace(dir=tmp_path / "run", summary={}, state=SimpleNamespace(history=[]), cfg=cfg)

    def counted(*args, **kwargs):
        resolutions.append(args)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(api, "fit", fake_fit)
    monkeypatch.setattr(api, "resolve", counted)
    return calls, resolutions


def saved_run(folder, **values):
    """A run folder whose last.pt holds the settings ``values`` resolve to (all a resume reads of them)."""
    folder.mkdir(parents=True)
    cfg, given = resolve(values)
    save_checkpoint({"config": cfg.to_dict(), "given": given}, folder / "last.pt")
    return folder


def picked(cfg) -> dict:
    return {k: getattr(cfg, k) for k in EXPECTED}


# --- the order: recipe < config file < given

def test_recipe_then_file_then_given(recipes, monkeypatch):
    _, config_file = recipes
    cfg, given = resolve({"batch_size": "16"}, config_file)  # flags arrive as text
    assert picked(cfg) == EXPECTED
    assert given == EXPECTED  # every layer's keys are given; the values are the winners, typed
    assert cfg.optimizer == config.Config().optimizer  # a key nobody gave keeps its default

    applied = []
    monkeypatch.setattr(config, "with_recipe", lambda values: applied.append(values) or {**RECIPE, **values})
    resolve({"batch_size": 16}, config_file)
    assert len(applied) == 1  # the recipe is expanded once


def test_a_new_run_gets_its_per_model_defaults_and_given_ones_win():
    cfg, given = resolve({"model": "resnet", "mode": "finetune", "weights": "w.pt", "epochs": 9})
    assert (cfg.head_warmup_epochs, cfg.backbone_lr_mult, cfg.freeze_bn) == (2, 0.1, False)
    assert "head_warmup_epochs" not in given
    cfg, _ = resolve({"model": "resnet", "mode": "finetune", "weights": "w.pt", "head_warmup_epochs": 0})
    assert cfg.head_warmup_epochs == 0


def test_cli_resolves_once_in_the_same_order(recipes, trained):
    _, config_file = recipes
    calls, resolutions = trained
    train_main(["--config", str(config_file), "--batch-size", "16", "--progress", "false"])
    (cfg, given, resume), = calls
    assert picked(cfg) == EXPECTED and cfg.progress is False and resume is None
    assert given == {**EXPECTED, "progress": False}
    assert len(resolutions) == 1  # the CLI hands flags and file to the API, which resolves them once


def test_api_resolves_in_the_same_order(recipes, trained):
    _, config_file = recipes
    calls, _ = trained
    classifier.train(config_file, batch_size=16)
    classifier.train(recipe="base", lr=0.3, batch_size=16)  # the same settings without a file
    assert picked(calls[0][0]) == picked(calls[1][0]) == EXPECTED
    assert calls[0][1] == calls[1][1] == EXPECTED


def test_find_lr_resolves_in_the_same_order(recipes, monkeypatch):
    _, config_file = recipes
    seen = []
    monkeypatch.setattr(api, "find_lr_for_config", lambda cfg, plot_path=None: seen.append((cfg, plot_path)))
    classifier.find_lr(config_file, batch_size=16, plot=True)
    cfg, plot = seen[0]
    assert picked(cfg) == EXPECTED and plot == f"{cfg.model}-{cfg.dataset}-lr_find.png"


# --- resume rules

def test_resume_keeps_the_run_settings_and_changes_only_resumable_ones(tmp_path, recipes):
    run = saved_run(tmp_path / "run", model="lenet5", mode="finetune", weights="w.pt", epochs=3, lr=0.1)
    cfg, given = resolve({"epochs": "30", "lr": 0.1}, resume=run)
    assert (cfg.model, cfg.lr, cfg.epochs) == ("lenet5", 0.1, 30)  # the run's, not the defaults
    assert cfg.head_warmup_epochs == 1  # the run's resolved warm-up (3 epochs), not recomputed for 30
    assert given == {"model": "lenet5", "mode": "finetune", "weights": "w.pt", "epochs": 30, "lr": 0.1}
    cfg, _ = resolve({}, tmp_path / "mine.yaml", resume=saved_run(tmp_path / "other", recipe="base", lr=0.3,
                                                                   batch_size=48, epochs=2))
    assert (cfg.epochs, cfg.batch_size) == (7, 48)  # the file's recipe raised epochs; the rest equals the run's

    with pytest.raises(ClassifierError, match=r"^--lr cannot change when resuming \(the run has 0.1\)"):
        resolve({"lr": 0.2}, resume=run)
    with pytest.raises(ClassifierError, match="^--batch-size cannot change when resuming"):
        resolve({"recipe": "base"}, resume=run)  # the recipe is expanded first: its keys are checked too
    with pytest.raises(ClassifierError, match="^cannot resume: .*last.pt not found$"):
        resolve({}, resume=tmp_path)
    assert {"epochs", "device", "threads"} <= RESUMABLE_KEYS and "lr" not in RESUMABLE_KEYS


def test_resume_from_the_cli_and_the_api(tmp_path, trained, capsys):
    calls, resolutions = trained
    run = saved_run(tmp_path / "run", model="lenet5", epochs=2, lr=0.1)
    train_main(["--resume", str(run), "--epochs", "4"])
    classifier.train(resume=run, epochs=4)
    for cfg, given, resume in calls:
        assert (cfg.model, cfg.epochs, cfg.lr, str(resume)) == ("lenet5", 4, 0.1, str(run))
        assert given == {"model": "lenet5", "epochs": 4, "lr": 0.1}
    assert len(resolutions) == 2
    with pytest.raises(SystemExit) as exit_:
        train_main(["--resume", str(run), "--lr", "0.5"])
    assert exit_.value.code == 2 and "error: --lr cannot change when resuming" in capsys.readouterr().err


# --- the data tools honour the recipe

def test_check_data_and_show_dataset_honour_the_recipe(recipes, tiny_folder, tmp_path):
    folder, _ = recipes
    (folder / "split.yaml").write_text(yaml.safe_dump({"val_fraction": 0.5, "test_fraction": 0.25,
                                                       "dataset": f"folder:{tiny_folder}"}))
    dataset = f"folder:{tiny_folder}"

    def sizes(report):
        return {split: sum(counts) for split, counts in report["counts"].items()}

    by_recipe = sizes(classifier.check_data(dataset, recipe="split"))
    assert by_recipe == sizes(classifier.check_data(dataset, val_fraction=0.5, test_fraction=0.25))
    assert by_recipe != sizes(classifier.check_data(dataset))  # the defaults split otherwise
    given_wins = sizes(classifier.check_data(dataset, recipe="split", val_fraction=0.2))
    assert given_wins == sizes(classifier.check_data(dataset, val_fraction=0.2, test_fraction=0.25))
    out = tmp_path / "check.json"
    train_main(["--check-data", str(out), "--recipe", "split"])  # the recipe's dataset, too
    assert sizes(yaml.safe_load(out.read_text())) == by_recipe

    grid = classifier.show_dataset(recipe="split", save=tmp_path / "grid.png", per_class=2)
    assert grid.is_file() and grid == tmp_path / "grid.png"
