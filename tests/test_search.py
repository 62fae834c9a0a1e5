"""Hyperparameter search (classifier/search/): a study continues to its total, prunes, stops on time, records
the sampled values in each trial's config.yaml (both backends), and its best.yaml trains."""
from __future__ import annotations

import csv
import time

import pytest
import yaml

import classifier
from classifier.commands.train import main as train_main
from classifier.errors import ClassifierError
from classifier.search import parse_duration
from classifier.search.space import build_space, default_space
from classifier.config import resolve

from tests.conftest import stripes, write_class_images

FAST = dict(model="lenet5", batch_size=16, progress=False, amp="off", workers=0, tensorboard=False, plots=False)


def rows(run_dir):
    with open(run_dir / "tune.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_trials_record_sampled_values(run_dir, space_keys):
    """The peers' bug: each trial's config.yaml holds the values the study sampled for it."""
    checked = 0
    for row in rows(run_dir):
        cfg = yaml.safe_load((run_dir / "trials" / f"{int(row['trial']):04d}" / "config.yaml").read_text())
        for key in space_keys:
            recorded = cfg[key]
            sampled = type(recorded)(row[key]) if not isinstance(recorded, str) else row[key]
            assert recorded == pytest.approx(sampled, rel=1e-12) if isinstance(recorded, float) else recorded == sampled
        assert cfg["eval_test"] is False  # chosen on validation, never on test
        checked += 1
    return checked


def test_study_continues_to_its_total_and_best_yaml_trains(tmp_path, capsys):
    data = write_class_images(tmp_path / "data", per_class=10, size=12)
    common = dict(FAST, dataset=f"folder:{data}", epochs=1, val_fraction=0.3, project=str(tmp_path / "runs"),
                  name="search")
    result = classifier.tune(trials=2, **common)
    run_dir = tmp_path / "runs" / "search"
    assert len(rows(run_dir)) == 2 and (run_dir / "study.db").is_file()
    # the same command again with N=3: one more trial, not three
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    train_main(["--tune", "3", *flags])
    table = rows(run_dir)
    assert [r["trial"] for r in table] == ["0", "1", "2"] and all(r["state"] == "COMPLETE" for r in table)
    keys = list(default_space(resolve({"model": "lenet5"})[0]))
    assert assert_trials_record_sampled_values(run_dir, keys) == 3
    assert not (run_dir / "trials" / "0000" / "eval").exists()
    first = yaml.safe_load((run_dir / "trials" / "0000" / "config.yaml").read_text())
    assert (first["lr"], first["weight_decay"], first["label_smoothing"]) == (0.05, 5e-4, 0.0)  # starts at the defaults
    # best.yaml: the best trial's values, and train.py --config takes it (the printed command)
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    top = max(table, key=lambda r: float(r["val_acc"]))
    assert best["lr"] == pytest.approx(float(top["lr"])) and best["augment"] == top["augment"]
    assert f"python train.py --config {run_dir / 'best.yaml'}" in capsys.readouterr().out
    final = train_main(["--config", str(run_dir / "best.yaml")])
    assert (final / "best.pt").is_file()
    assert yaml.safe_load((final / "config.yaml").read_text())["lr"] == pytest.approx(float(top["lr"]))
    assert result.dir == run_dir
    # other settings in the same folder: refused, not mixed into the study
    with pytest.raises(ClassifierError, match="other settings"):
        classifier.tune(trials=3, **{**common, "epochs": 2})


def test_pruning_stops_a_hopeless_trial(tmp_path):
    images, labels = stripes(36, 12)

    def hopeless(run, row):  # a fake objective: trial 2 looks hopeless from its first epoch
        if run.dir.name == "0002":
            row["val_acc"] = -1.0

    result = classifier.tune(trials=3, dataset=(images, labels), epochs=2, project=str(tmp_path), name="prune",
                             callbacks={"on_epoch_end": [hopeless]}, **FAST)
    table = {r["trial"]: r for r in rows(result.dir)}
    assert table["2"]["state"] == "PRUNED" and table["2"]["epochs"] == "1"
    with open(result.dir / "trials" / "0002" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # stopped after its first epoch of two
    assert table["0"]["state"] == "COMPLETE" and table["0"]["epochs"] == "2"


def test_interrupted_trial_leaves_the_study_resumable(tmp_path):
    images, labels = stripes(36, 12)
    common = dict(FAST, dataset=(images, labels), epochs=1, project=str(tmp_path), name="stop")

    def ctrl_c(run, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        classifier.tune(trials=1, callbacks={"on_epoch_end": [ctrl_c]}, **common)
    assert [r["state"] for r in rows(tmp_path / "stop")] == ["FAIL"]  # written on the way out
    # a search killed outright leaves its trial RUNNING in study.db: the next command records it as failed
    import optuna

    storage = f"sqlite:///{tmp_path / 'stop' / 'study.db'}"
    optuna.load_study(study_name="tune", storage=storage).ask()
    result = classifier.tune(trials=1, **common)  # the interrupted trial does not count: one more runs
    assert [r["state"] for r in result.trials] == ["FAIL", "FAIL", "COMPLETE"] and result.best["trial"] == 2
    # the interrupted first trial was the defaults: they are tried again
    assert result.best["lr"] == 0.05 and result.best["label_smoothing"] == 0.0


def test_time_limit_stops_the_running_trial(tmp_path, monkeypatch):
    import classifier.search.trial as trial_module

    class Later:  # the clock the trials read: the search's hour is over by the first epoch's end
        @staticmethod
        def time():
            return time.time() + 3600

    monkeypatch.setattr(trial_module, "time", Later)
    images, labels = stripes(36, 12)
    result = classifier.tune(trials=5, time_limit="1h", dataset=(images, labels), epochs=3, project=str(tmp_path),
                             name="time", **FAST)
    # stopped at its first epoch's end, recorded as failed (it does not count), and no trial after it
    assert [(r["state"], r["epochs"]) for r in result.trials] == [("FAIL", 1)]


def test_search_space_default_and_block():
    cfg, given = resolve({"model": "lenet5", "mode": "finetune", "weights": "x.pt", "epochs": 4, "lr": 0.01})
    space = build_space({}, cfg, given)
    assert "lr" not in space  # a setting given is fixed, not searched
    assert space["head_warmup_epochs"].high == 3 and "backbone_lr_mult" in space
    scratch, _ = resolve({"model": "lenet5"})
    assert "backbone_lr_mult" not in default_space(scratch)
    block = {"lr": {"low": 0.001, "high": 0.1, "log": True}, "augment": ["none", "flip"], "batch_size": [16, 32]}
    space = build_space(block, scratch, {})
    assert list(space) == ["lr", "augment", "batch_size"] and space["lr"].log
    for bad, message in [({"lrr": {"low": 0.1, "high": 1}}, "did you mean 'lr'"),
                         ({"epochs": [1, 2]}, "cannot vary"),
                         ({"lr": {"low": -1, "high": 1}}, "not a valid setting"),
                         ({"augment": ["none", "sideways"]}, "not a valid setting"),
                         ({"lr": {"low": 0.1}}, "low: A, high: B")]:
        with pytest.raises(ClassifierError, match=message):
            build_space(bad, scratch, {})


def test_durations_and_bad_arguments(tmp_path):
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ClassifierError, match="tune-time"):
            parse_duration(bad)
    with pytest.raises(ClassifierError, match="unknown tune backend"):
        classifier.tune(trials=2, backend="grid", model="lenet5")
    with pytest.raises(ClassifierError, match="number of trials"):
        classifier.tune(trials=0, model="lenet5")


# Ray's start and one worker process per trial (each importing torch): 33 s of the suite's 5 min on a quiet
# 2-core machine (make test's xdist, 2 processes), so it runs in every `make test`; it took 67-165 s on a busy one
def test_ray_backend_runs_two_trials_with_the_sampled_values(tmp_path):
    ray = pytest.importorskip("ray")
    images, labels = stripes(36, 12)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = classifier.tune(trials=2, backend="ray", resources={"cpu": 1}, dataset=(images, labels), epochs=1,
                                 project=str(tmp_path), name="ray", **FAST)
    finally:
        ray.shutdown()
    table = rows(result.dir)
    assert len(table) == 2 and {r["state"] for r in table} == {"COMPLETE"}
    assert assert_trials_record_sampled_values(result.dir, ["lr", "weight_decay", "label_smoothing", "augment"]) == 2
    trial = yaml.safe_load((result.dir / "trials" / "0000" / "config.yaml").read_text())
    assert trial["threads"] == 1 and trial["lr"] == 0.05  # the trial's CPUs; the first trial is the defaults


def test_ray_trial_stopped_early_is_pruned_by_asha_but_failed_when_time_is_up():
    """Ray reports a stopped trial as complete with a partial result: ASHA's is PRUNED (it counts), one the
    search's time limit stopped is FAIL (a re-run replaces it, as on the Optuna backend)."""
    from classifier.search.ray_backend import searcher_class

    class OptunaSearch:  # what the searcher hands on to Ray's OptunaSearch (result None + error: FAIL)
        def __init__(self):
            self._ot_trials, self.told = {}, []

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.told.append((result, error))

    for deadline, error in ((None, False), (time.time() + 3600, False), (time.time() - 1, True)):
        search = searcher_class(OptunaSearch, 3, deadline)()
        search.on_trial_complete("t1", {"score": 0.5, "epoch": 1})
        search.on_trial_complete("t2", {"score": 0.5, "epoch": 3})
        assert search.told == [(None, error), ({"score": 0.5, "epoch": 3}, False)]
