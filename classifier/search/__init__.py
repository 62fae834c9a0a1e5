"""Hyperparameter search over runs: ``classifier.tune(..., trials=N)`` / ``train.py --tune N``.

study.py (the API, results: tune.csv, plots, best.yaml), space.py (what is sampled), trial.py (a trial is an
ordinary run), optuna_backend.py (Optuna in this process), ray_backend.py (Ray Tune, trials in parallel).
See docs/search.md.
"""
from classifier.search.study import BACKENDS, TuneResult, parse_duration, tune

__all__ = ["tune", "TuneResult", "BACKENDS", "parse_duration"]
