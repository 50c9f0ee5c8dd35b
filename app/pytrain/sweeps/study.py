"""Optuna glue: a sweep's study in Optuna's RDB storage on PyTrain's PostgreSQL.

Optuna's tables live in their own schema (:data:`~pytrain.sweeps.vocabulary.OPTUNA_SCHEMA`,
created by migration 0008): its engine connects with ``search_path`` set to it, so its tables and
its own ``alembic_version`` never meet PyTrain's in ``public``. The study is named like the sweep.

Samplers and pruners are not stored by Optuna: every process rebuilds them from the sweep's row
(:func:`make_sampler`, :func:`make_pruner`). A seeded sampler is re-seeded with the number of
trials created so far, so two top-ups never draw the same "random" values.

Optuna is imported here only, and only when a sweep is used (``pip install 'pytrain[sweep]'``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from pytrain.errors import ConfigurationError
from pytrain.sweeps.params import ParamSpec
from pytrain.sweeps.vocabulary import METRICS, OPTUNA_SCHEMA

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: ASHA's settings: a trial's first rung is its first epoch (the runs are short, and Optuna's
#: ``auto`` would wait for a whole trial to learn this), and a third of each rung goes on.
ASHA_MIN_EPOCHS = 1
ASHA_REDUCTION_FACTOR = 3
#: The median rule prunes only once this many trials have finished (fewer would be noise).
MEDIAN_STARTUP_TRIALS = 3

_storages: dict[str, Any] = {}
_storages_lock = threading.Lock()


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ConfigurationError("sweeps need Optuna, which is not installed", hint="pip install 'pytrain[sweep]'") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line per trial repeats what PyTrain logs
    return optuna


def storage(engine: Engine) -> Any:
    """Optuna's RDB storage on ``engine``'s database, in schema ``optuna`` (one per URL per process).

    Optuna creates its tables there on first use (``pytrain sweep create`` is the first user, so
    orchestrators never race to create them).

    Raises:
        ConfigurationError: Optuna is not installed.
    """
    optuna = _optuna()
    url = engine.url.render_as_string(hide_password=False)
    with _storages_lock:
        if url not in _storages:
            _storages[url] = optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True, "connect_args": {"options": f"-c search_path={OPTUNA_SCHEMA}"}})
        return _storages[url]


def make_sampler(sweep: Mapping[str, Any], params: list[ParamSpec], created: int) -> Any:
    """The sweep's sampler: TPE, random or grid; seeded with ``seed + created`` when the sweep has a seed."""
    optuna = _optuna()
    seed = None if sweep["seed"] is None else int(sweep["seed"]) + created
    if sweep["sampler"] == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid_values() for p in params}, seed=seed)
    if sweep["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(sweep: Mapping[str, Any]) -> Any:
    """The sweep's pruner: ASHA (successive halving), the median rule, or none."""
    optuna = _optuna()
    if sweep["pruner"] == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=ASHA_MIN_EPOCHS, reduction_factor=ASHA_REDUCTION_FACTOR)
    if sweep["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def create_study(engine: Engine, sweep: Mapping[str, Any]) -> None:
    """Create the sweep's study (named like the sweep, its direction from the metric).

    Raises:
        ConfigurationError: a study of that name exists already (a sweep of that name was made
            before and its study kept), or Optuna is not installed.
    """
    optuna = _optuna()
    try:
        optuna.create_study(storage=storage(engine), study_name=sweep["name"], direction=METRICS[sweep["metric"]])
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigurationError(f"an Optuna study named {sweep['name']!r} exists already in schema {OPTUNA_SCHEMA}",
                                 hint="choose another sweep name") from None


def load_study(engine: Engine, sweep: Mapping[str, Any], params: list[ParamSpec], created: int = 0) -> "optuna.Study":
    """The sweep's study with its sampler and pruner (see :func:`make_sampler`)."""
    optuna = _optuna()
    return optuna.load_study(study_name=sweep["name"], storage=storage(engine),
                             sampler=make_sampler(sweep, params, created), pruner=make_pruner(sweep))


def ask(study: "optuna.Study", params: list[ParamSpec]) -> tuple[int, int, dict[str, Any]]:
    """A new trial (``RUNNING`` in the study) and its drawn values.

    Returns:
        ``(trial number, trial id, {param name: value})``.
    """
    trial = study.ask({p.name: p.distribution() for p in params})
    return trial.number, trial._trial_id, dict(trial.params)


def report(study: "optuna.Study", trial_id: int, values: Iterable[tuple[int, float]]) -> None:
    """Report ``(epoch, metric)`` pairs not yet reported as the trial's intermediate values.

    An epoch reported before (a resumed run writes its epochs on, the heartbeat and the end both
    report) is skipped: each epoch counts once. NaN values are skipped (Optuna refuses them).
    """
    storage_ = study._storage
    have = storage_.get_trial(trial_id).intermediate_values
    for epoch, value in values:
        if epoch not in have and value is not None and math.isfinite(value):
            storage_.set_trial_intermediate_value(trial_id, epoch, float(value))


def should_prune(study: "optuna.Study", trial_id: int) -> bool:
    """Whether the sweep's pruner stops the trial at its last reported epoch."""
    trial = study._storage.get_trial(trial_id)
    return bool(trial.intermediate_values) and bool(study.pruner.prune(study, trial))


def best_value(study: "optuna.Study", trial_id: int) -> tuple[int, float] | None:
    """``(epoch, value)`` of the trial's best reported epoch (highest or lowest by the study's
    direction; the earliest on a tie), or ``None`` when none was reported."""
    values = study._storage.get_trial(trial_id).intermediate_values
    if not values:
        return None
    maximize = study.direction.name == "MAXIMIZE"
    return min(values.items(), key=lambda item: ((-item[1] if maximize else item[1]), item[0]))


def tell(study: "optuna.Study", trial_id: int, state: str) -> str:
    """End the trial in the study: ``COMPLETE`` (its value: :func:`best_value`), ``PRUNED`` or
    ``FAIL``. A ``COMPLETE`` without any reported value is told ``FAIL``. A trial already ended
    (told by a process that died before recording it) is left as it is.

    Returns:
        The trial's state in the study now (``COMPLETE``, ``PRUNED``, ``FAIL``).
    """
    optuna = _optuna()
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return frozen.state.name
    best = best_value(study, trial_id)
    if state == "COMPLETE" and best is None:
        state = "FAIL"
    trial_state = optuna.trial.TrialState[state]
    study.tell(frozen.number, best[1] if state == "COMPLETE" and best else None, state=trial_state, skip_if_finished=True)
    return state


def best_trials(engine: Engine) -> dict[str, tuple[int, float]]:
    """``{study name: (number, value)}`` of each study's best completed trial (one query of Optuna's
    storage for every study; a study without a completed trial is absent)."""
    optuna = _optuna()
    summaries = optuna.study.get_all_study_summaries(storage(engine), include_best_trial=True)
    return {s.study_name: (s.best_trial.number, float(s.best_trial.value)) for s in summaries if s.best_trial is not None}


def running_numbers(study: "optuna.Study") -> set[int]:
    """Numbers of the study's trials still ``RUNNING``."""
    optuna = _optuna()
    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}


def importances(study: "optuna.Study") -> dict[str, float] | None:
    """Parameter importances (Optuna's default evaluator) once at least
    :data:`MIN_TRIALS_FOR_IMPORTANCE` trials completed, else ``None``."""
    optuna = _optuna()
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as exc:  # e.g. every completed trial drew the same values
        log.info("no parameter importances for study %s: %s", study.study_name, exc)
        return None


#: Completed trials needed before ``sweep show`` gives parameter importances.
MIN_TRIALS_FOR_IMPORTANCE = 4
