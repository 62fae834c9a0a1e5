"""The same search on Ray Tune: trials in parallel, on this machine or on a Ray cluster.

Optuna's TPE sampler samples (``ray.tune.search.optuna.OptunaSearch``, on the same RUN/study.db, so both
backends continue one study), ASHA stops trials that trail at an epoch. Each trial is an ordinary run under
RUN/trials/NNNN (NNNN: the Optuna trial number) with the resources stated per trial. The sampled values reach
the trial as its settings, so the trial's config.yaml records them (tests/test_search.py checks it).

Ray: an existing cluster when ``RAY_ADDRESS`` is set (``ray start --head`` on one machine, ``ray start
--address HEAD:6379`` on the others; docs/search.md), else a local Ray started here and shut down after.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import optuna

from classifier.errors import ClassifierError
from classifier.search.optuna_backend import counted, fail_stale, needs_defaults, sampler_for
from classifier.search.trial import STUDY_NAME, Study, run_trial

TRIAL_KEY = "_trial"  # the Optuna trial number, passed to the trainable with the sampled values


def _ray():
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ClassifierError("--tune-backend ray needs Ray Tune: pip install 'ray[tune]' (or the tune extra: "
                              "pip install -e '.[tune]')") from None
    return ray, tune, ASHAScheduler, OptunaSearch


def searcher_class(OptunaSearch, epochs: int, deadline: float | None = None):
    class NumberedOptunaSearch(OptunaSearch):
        """OptunaSearch that tells the trial its Optuna number (its folder name), and records a trial stopped
        before its last epoch (Ray reports it as complete with a partial value) as pruned when ASHA stopped it,
        as failed (replaced by a re-run, as on the Optuna backend) when the search's time was up."""

        def suggest(self, trial_id):
            params = super().suggest(trial_id)
            if isinstance(params, dict):
                params[TRIAL_KEY] = self._ot_trials[trial_id].number
            return params

        def on_trial_complete(self, trial_id, result=None, error=False):
            trial = self._ot_trials.get(trial_id)
            if result and trial is not None and "score" in result:  # Ray does not pass the last result to
                with warnings.catch_warnings():  # on_trial_result: report it (a step already seen is ignored)
                    warnings.simplefilter("ignore")
                    trial.report(result["score"], result["epoch"])
            if result and not error and result.get("epoch", epochs) < epochs:
                error = deadline is not None and time.time() >= deadline  # --tune-time: FAIL, not counted
                result = None  # no value: Optuna's PRUNED (FAIL with error), with the epochs' reported values
            super().on_trial_complete(trial_id, result=result, error=error)

    return NumberedOptunaSearch


def trainable(config: dict, study: Study = None, cwd: str = ""):
    """A Ray Tune trial (in a Ray worker): the sampled values -> ``run_trial``; reports each epoch."""
    from ray import tune

    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # Ray starts trials in their own folder: relative paths (data, weights) are the user's
    params = dict(config)
    number = params.pop(TRIAL_KEY)
    best = [0.0]

    def report(epoch, val_acc):
        best[0] = max(best[0], val_acc)
        tune.report({"score": best[0], "val_acc": val_acc, "epoch": epoch})
        return False  # ASHA stops a trial by ending its worker

    run_trial(study, number, params, report)


def parse_resources(resources) -> dict:
    """{"cpu": 2, "gpu": 0.5} or "cpu=2,gpu=0.5" -> Ray's per-trial resources."""
    if isinstance(resources, str):
        pairs = [p.split("=", 1) for p in resources.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ClassifierError(f"--tune-resources takes cpu=N,gpu=M, got '{resources}'")
        resources = {k.strip(): v.strip() for k, v in pairs}
    out = {}
    for name, value in (resources or {}).items():
        if name not in ("cpu", "gpu"):
            raise ClassifierError(f"unknown trial resource '{name}' (choices: cpu, gpu)")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ClassifierError(f"trial resource {name}={value!r} is not a number") from None
        if out[name] < 0:
            raise ClassifierError(f"trial resource {name}={value!r} must be >= 0")
    out.setdefault("cpu", 1.0)
    out.setdefault("gpu", 0.0)
    return out


def run(study: Study, trials: int, *, seed: int = 0, resources=None, parallel: int | None = None,
        verbose: int = 1, **_) -> None:
    ray, tune, ASHAScheduler, OptunaSearch = _ray()
    before = fail_stale(study)
    done = counted(before)
    if done >= trials:
        return
    per_trial = parse_resources(resources)
    settings = dict(study.settings)
    if "threads" not in settings:  # torch in each trial uses the CPUs the trial holds, not the machine's
        settings["threads"] = max(1, int(per_trial["cpu"]))
    settings.setdefault("progress", False)
    study = dataclasses.replace(study, dir=study.dir.resolve(), settings=settings)
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(include_dashboard=False)
    try:
        search = searcher_class(OptunaSearch, study.epochs, study.deadline)(
            study.space, metric="score", mode="max", sampler=sampler_for(seed, trials, len(before)),
            # a new study starts from the defaults (Ray takes whole points only)
            points_to_evaluate=[study.defaults] if needs_defaults(before, study.defaults)
            and len(study.defaults) == len(study.space) else None,
            storage=optuna.storages.RDBStorage(study.storage_url), study_name=STUDY_NAME)
        # ASHA's first rung after a third of the epochs, as the Optuna backend's pruner
        scheduler = ASHAScheduler(time_attr="training_iteration", metric="score", mode="max", max_t=study.epochs,
                                  grace_period=min(study.epochs, study.epochs // 3 + 1))
        budget = None
        if study.deadline is not None:
            budget = max(study.deadline - time.time(), 1.0)
        job = tune.with_resources(tune.with_parameters(trainable, study=study, cwd=os.getcwd()), per_trial)
        tuner = tune.Tuner(job, tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler,
                                                            num_samples=trials - done, max_concurrent_trials=parallel,
                                                            time_budget_s=budget),
                           run_config=tune.RunConfig(storage_path=str(study.dir / "ray"),
                                                     name=time.strftime("tune-%Y%m%d-%H%M%S"),  # one per command
                                                     verbose=verbose))
        results = tuner.fit()
        errors = [r.error for r in results if r.error is not None]
        if errors and len(errors) == len(results):
            raise ClassifierError(f"every Ray trial failed; the first: {str(errors[0]).strip().splitlines()[-1]}")
    finally:
        if started:
            ray.shutdown()
