"""The search on Optuna in this process: TPE samples, a median pruner reads each trial's epochs.

Trials run one after another through ``classifier.train``; the study is stored in RUN/study.db, so a study
that was stopped (Ctrl-C, ``--tune-time``, fewer trials) continues where it ended when run again.
"""
from __future__ import annotations

import time

import optuna

from classifier.search.space import sample
from classifier.search.trial import STUDY_NAME, Study, run_trial


class TimeUp(Exception):
    """A trial stopped by the search's time limit: recorded as failed (not counted), the study ends."""


def default_pruner(trials: int, epochs: int) -> optuna.pruners.BasePruner:
    """Median rule: a trial whose validation accuracy at an epoch is below the median of the finished trials'
    at that epoch stops, once a quarter of the study (2 to 5 trials) has finished, and never in the first
    third of its epochs (early epochs rank settings poorly)."""
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 4)), n_warmup_steps=epochs // 3 + 1)


def sampler_for(study_seed: int, trials: int, done: int) -> optuna.samplers.TPESampler:
    """TPE, seeded by the run's seed and the trials already in the study (a continued study must not draw
    its first random points again); random start-up trials: a third of the study, 3 to 10."""
    return optuna.samplers.TPESampler(seed=study_seed + done, n_startup_trials=min(10, max(3, trials // 3)))


def open_study(study: Study, sampler=None, pruner=None) -> optuna.Study:
    return optuna.create_study(study_name=STUDY_NAME, storage=study.storage_url, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def counted(trials: list) -> int:
    """Trials that count towards the total: finished or pruned (failed and interrupted ones are replaced)."""
    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)


def stored_trials(study: Study) -> list:
    """The trials in RUN/study.db so far (none before the study is created)."""
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=study.storage_url).get_trials(deepcopy=False)
    except KeyError:
        return []


def fail_stale(study: Study) -> list:
    """Trials left RUNNING by a search that was killed or interrupted (one search command runs a study at a
    time): recorded as failed, so that they are replaced. Returns the study's trials."""
    trials = stored_trials(study)
    stale = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    if stale:
        ostudy = optuna.load_study(study_name=STUDY_NAME, storage=study.storage_url)
        for number in stale:
            ostudy.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        trials = stored_trials(study)
    return trials


def needs_defaults(trials: list, defaults: dict) -> bool:
    """Whether the defaults are still to be tried: no trial with their values finished, was pruned or waits
    (a defaults trial that failed or was interrupted is tried again)."""
    kept = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)

    def values(t):  # a waiting (enqueued) trial holds its values as fixed_params until it runs
        return t.params or t.system_attrs.get("fixed_params", {})

    return bool(defaults) and not any(t.state in kept and all(values(t).get(k) == v for k, v in defaults.items())
                                      for t in trials)


def run(study: Study, trials: int, *, seed: int = 0, pruner=None, **_) -> None:
    before = fail_stale(study)
    done = counted(before)
    if done >= trials:
        return
    ostudy = open_study(study, sampler_for(seed, trials, len(before)),
                        pruner if pruner is not None else default_pruner(trials, study.epochs))
    if needs_defaults(before, study.defaults):  # a study starts from the defaults
        ostudy.enqueue_trial(study.defaults, user_attrs={"defaults": True})

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, study.space)
        trial.set_user_attr("run_dir", str(study.trial_dir(trial.number)))

        def report(epoch, val_acc):
            trial.report(val_acc, epoch)
            return trial.should_prune()

        outcome = run_trial(study, trial.number, params, report)
        if outcome.stopped == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {outcome.epochs}")
        if outcome.stopped == "time":
            trial.study.stop()  # no trial after this one, whatever Optuna's own timeout says
            raise TimeUp(f"the search's time was up after epoch {outcome.epochs}")
        return outcome.value

    timeout = None if study.deadline is None else max(study.deadline - time.time(), 0.0)
    ostudy.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(TimeUp,), gc_after_trial=True)
