"""A sweep's database side: create it, settle it (tell Optuna, top up, finish), report epochs, publish.

A trial is an ordinary ``training_tasks`` row (the queue, every runner, fencing, resume and
tracking work for it unchanged) linked to its Optuna trial by a ``sweep_trials`` row. Whoever ends
a trial's task (an orchestrator, ``sweep cancel``) or creates the sweep calls :meth:`SweepStore.settle`,
which, holding the sweep's row lock (``SELECT ... FOR UPDATE``):

1. tells Optuna how each ended, not yet told trial ended (``COMPLETE`` with its best validation
   metric, ``PRUNED`` or ``FAIL``) and marks it told: each trial is told once, and a trial whose
   task was re-claimed after a crash is still the same live trial;
2. ends Optuna trials left ``RUNNING`` without a task (a creator that died between asking Optuna
   and committing its rows) as ``FAIL``;
3. tops the sweep up to ``parallel`` live trials (never past ``trials``): asks Optuna for each new
   trial's values and inserts its task and link;
4. once every trial has been created and has ended, finishes the sweep; the one caller that does
   so publishes the best trial (``--publish best``) after the commit.

Any number of orchestrators on any host serve one sweep: the row lock orders them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert

from pytrain.db import queries
from pytrain.db.models import FINAL_STATUSES, TrainingTask
from pytrain.db.queue import Repository
from pytrain.errors import ConfigurationError, PyTrainError, SweepNotFoundError
from pytrain.outcome import Outcome
from pytrain.settings import Settings
from pytrain.spec import CHECKPOINT_BEST, CHECKPOINT_LAST, CHECKPOINT_PREV, CLIP_CACHE, MODEL_ONNX, PublishedTaskRow, ProgressRecord
from pytrain.sweeps import study as optuna_glue
from pytrain.sweeps.params import ParamSpec

log = logging.getLogger(__name__)

#: How a trial's task status is told to Optuna.
_TOLD = {Outcome.SUCCEEDED.value: "COMPLETE", Outcome.PRUNED.value: "PRUNED",
         Outcome.FAILED.value: "FAIL", Outcome.CANCELLED.value: "FAIL"}
#: What ``sweep clean`` removes from an unpublished ended trial's folder (the logs, metrics and
#: progress stay: ``sweep show`` and ``pytrain show`` read them).
CLEANED = (MODEL_ONNX, CHECKPOINT_LAST, CHECKPOINT_BEST, CHECKPOINT_PREV, CLIP_CACHE)


@dataclass(frozen=True)
class TrialRef:
    """A claimed task that is a sweep's trial (:meth:`SweepStore.trial_of`).

    Attributes:
        sweep_id, name: the sweep.
        number: Optuna's trial number; optuna_trial_id: its trial id.
        publish: the sweep's ``--publish`` (``all``: the trial publishes as it succeeds).
        metric: the progress field the pruner reads (``val_accuracy``, ``val_loss``).
    """

    sweep_id: int
    name: str
    number: int
    optuna_trial_id: int
    publish: str
    metric: str


@dataclass(frozen=True)
class Settled:
    """What one :meth:`SweepStore.settle` did: trials told (``{number: state}``), task ids created,
    and whether this call finished the sweep (and published, with the version)."""

    told: dict[int, str]
    created: list[int]
    finished: bool = False
    published_version: int | None = None


class SweepStore(Repository):
    """The sweeps' database operations (tables ``sweeps``, ``sweep_trials``; Optuna's storage).

    Args:
        engine: a database migrated with :func:`pytrain.db.upgrade` (revision 0008 or later).
        settings: for publishing (``model_repo_dir``, ``results_dir``...).
    """

    subject = "the sweep"

    def __init__(self, engine, settings: Settings) -> None:
        super().__init__(engine)
        self.settings = settings
        self._studies: dict[int, Any] = {}  # sweep id -> study (the reporter's: its pruner)

    # -- creating --------------------------------------------------------------------------
    def create(self, sweep: dict[str, Any]) -> dict[str, Any]:
        """Insert the sweep and create its study (one transaction: a failed study leaves no row),
        then settle it (its first ``parallel`` trials).

        Args:
            sweep: ``name``, ``base`` (task columns), ``params`` (:class:`ParamSpec` list),
                ``trials``, ``parallel``, ``sampler``, ``pruner``, ``metric``, ``publish``, ``seed``:
                checked by the caller (``pytrain sweep create``).

        Returns:
            The sweep row.

        Raises:
            ConfigurationError: the name is taken (in PyTrain or in Optuna's storage).
        """
        values = {**sweep, "base": json.dumps(sweep["base"]), "params": json.dumps([p.to_json() for p in sweep["params"]])}
        if self._execute(queries.GET_SWEEP, {"name": sweep["name"]}):
            raise ConfigurationError(f"sweep {sweep['name']!r} exists already", hint="choose another name; `pytrain sweep list`")
        with self._transaction() as conn:
            row = dict(conn.execute(queries.INSERT_SWEEP, values).mappings().one())
            optuna_glue.create_study(self.engine, row)
        self._track_parent(row)
        self.settle(row["id"])
        return row

    def _track_parent(self, sweep: dict[str, Any]) -> None:
        """The sweep's MLflow parent run, with tracking on (a side channel: a failure is a warning)."""
        if self.settings.mlflow != "on":
            return
        try:
            from pytrain.tracking.store import make_client
            from pytrain.tracking.tracker import create_sweep_parent

            experiment = (sweep["base"].get("options") or {}).get("experiment") or sweep["name"]
            create_sweep_parent(make_client(self.settings), self.settings, experiment, sweep["name"])
        except Exception as exc:
            log.warning("sweep %s: no MLflow parent run (%s: %s); its trials are tracked without one",
                        sweep["name"], type(exc).__name__, exc)

    # -- reading ---------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        """The sweep row ``name``.

        Raises:
            SweepNotFoundError: no such sweep (hint: ``pytrain sweep list``).
        """
        rows = self._execute(queries.GET_SWEEP, {"name": name})
        if not rows:
            raise SweepNotFoundError(f"no sweep named {name!r}", hint="`pytrain sweep list` lists them")
        return rows[0]

    def list(self) -> list[dict[str, Any]]:
        """Every sweep, newest first, with ``created``, ``live`` (not yet ended) and ``ended`` trial
        counts, and ``best_trial``, ``best_value``: its best completed trial's number and value (the
        metric's best epoch; ``None`` before a trial completed)."""
        rows = self._execute(queries.LIST_SWEEPS)
        best = optuna_glue.best_trials(self.engine) if any(r["ended"] for r in rows) else {}
        return [{**r, **dict(zip(("best_trial", "best_value"), best.get(r["name"], (None, None))))} for r in rows]

    def trials(self, sweep_id: int) -> list[dict[str, Any]]:
        """The sweep's trials with their tasks' status, folder, progress and metrics, by number."""
        return self._execute(queries.SWEEP_TRIALS, {"sweep_id": sweep_id})

    def trial_of(self, task_id: int) -> TrialRef | None:
        """The trial task ``task_id`` trains, or ``None`` for an ordinary task."""
        rows = self._execute(queries.TRIAL_OF_TASK, {"task_id": task_id})
        if not rows:
            return None
        r = rows[0]
        return TrialRef(r["sweep_id"], r["name"], r["number"], r["optuna_trial_id"], r["publish"], r["metric"])

    def trials_of_tasks(self, task_ids: list[int]) -> dict[int, tuple[str, int]]:
        """``{task id: (sweep name, trial number)}`` for those of ``task_ids`` that are trials."""
        rows = self._execute(queries.TRIALS_OF_TASKS, {"task_ids": list(task_ids)})
        return {r["task_id"]: (r["name"], r["number"]) for r in rows}

    def study(self, sweep: dict[str, Any]) -> Any:
        """The sweep's Optuna study (its sampler seeded for the next trial)."""
        return optuna_glue.load_study(self.engine, sweep, _params(sweep), len(self.trials(sweep["id"])))

    def summary(self, name: str) -> dict[str, Any]:
        """``pytrain sweep show``'s record: the sweep (``budget``: its ``--trials``), each trial
        (number, task id, task status, Optuna state, params, value, best metric and its epoch,
        epochs run, wall seconds, whether it is the best, the task's error) and the parameter
        importances (``None`` until enough trials completed).

        The trial fields come from the task rows (status, epochs, wall time) and from Optuna's
        storage (state, params, values), side by side, so a disagreement shows.
        """
        sweep = self.get(name)
        rows = self.trials(sweep["id"])
        study = self.study(sweep)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        best = self.best_number(sweep) if any(r["told"] == "COMPLETE" for r in rows) else None
        trials = []
        for row in rows:
            trial = frozen[row["number"]]
            top = optuna_glue.best_value(study, trial._trial_id)  # FrozenTrial has no public trial id
            trials.append({
                "number": row["number"], "task_id": row["task_id"], "status": row["status"], "state": trial.state.name,
                "params": trial.params, "value": trial.value, "best_metric": None if top is None else top[1],
                "best_epoch": None if top is None else top[0], "epochs_run": (row["progress"] or {}).get("epoch"),
                "wall_seconds": None if row["wall_seconds"] is None else round(float(row["wall_seconds"]), 1),
                "attempts": row["attempts"], "version": row["version"], "best": row["number"] == best, "error": row["error"],
            })
        keep = ("name", "status", "parallel", "sampler", "pruner", "metric", "publish", "seed",
                "published_task_id", "published_version", "created_at", "finished_at")
        return {**{k: sweep[k] for k in keep}, "budget": sweep["trials"], "direction": study.direction.name.lower(),
                "best_trial": best, "params": sweep["params"], "trials": trials, "importances": optuna_glue.importances(study)}

    # -- the orchestrator's side -----------------------------------------------------------
    def report_epochs(self, trial: TrialRef, records: list[ProgressRecord]) -> bool:
        """Report the run's epoch records' metric to the trial; returns whether the pruner stops it.

        Each epoch is reported once (:func:`pytrain.sweeps.study.report`), so a resumed run, or
        the heartbeat and the end reporting the same epoch, never counts one twice. A run whose
        last record is its final epoch is never stopped: only its export is left, and a trial
        that trained every epoch completes (the heartbeat may see an epoch late, e.g. after a fast one).
        """
        study = self._studies.get(trial.sweep_id)
        if study is None:
            sweep = self._execute(queries.GET_SWEEP, {"name": trial.name})[0]
            study = self._studies[trial.sweep_id] = optuna_glue.load_study(self.engine, sweep, _params(sweep))
        optuna_glue.report(study, trial.optuna_trial_id, [(r.epoch, getattr(r, trial.metric)) for r in records if r.epoch])
        last = records[-1] if records else None
        if last is not None and last.epochs is not None and last.epoch is not None and last.epoch >= last.epochs:
            return False
        return optuna_glue.should_prune(study, trial.optuna_trial_id)

    def settle(self, sweep_id: int) -> Settled:
        """Tell Optuna of ended trials, top the sweep up, and finish it when every trial ended
        (see the module's docstring). Safe to call from any process at any time.

        Returns:
            What this call did (:class:`Settled`).

        Raises:
            DatabaseError: the database failed (nothing half-done in PyTrain's tables; an Optuna
                trial asked for and not recorded is failed by the next settle).
        """
        with self._transaction() as conn:
            sweep = dict(conn.execute(queries.LOCK_SWEEP, {"sweep_id": sweep_id}).mappings().one())
            trials = [dict(r) for r in conn.execute(queries.SWEEP_TRIALS, {"sweep_id": sweep_id}).mappings()]
            study = optuna_glue.load_study(self.engine, sweep, _params(sweep), len(trials))
            told = self._tell_ended(conn, study, sweep, trials)
            live = sum(1 for t in trials if t["told"] is None and t["status"] not in FINAL_STATUSES)
            created: list[int] = []
            finished = False
            if sweep["status"] == "running":
                wanted = min(sweep["parallel"] - live, sweep["trials"] - len(trials))
                if wanted > 0:
                    created = self._create_trials(conn, study, sweep, {t["number"] for t in trials}, wanted)
                elif len(trials) >= sweep["trials"] and live == 0:
                    finished = bool(conn.execute(queries.FINISH_SWEEP, {"sweep_id": sweep_id}).first())
        version = None
        if finished:
            log.info("sweep %s: every trial ended", sweep["name"])
            if sweep["publish"] == "best":
                version = self._publish_best(sweep)
        return Settled(told, created, finished, version)

    def settle_running(self) -> None:
        """Settle every running sweep (an idle orchestrator's look: a trial failed by a lease
        that ran out, a creator that died before its first trials). Errors are logged."""
        for row in self._execute(queries.RUNNING_SWEEPS):
            try:
                self.settle(row["id"])
            except PyTrainError as exc:
                log.warning("sweep %s: cannot settle it: %s", row["id"], exc)

    def _tell_ended(self, conn: Connection, study: Any, sweep: dict[str, Any], trials: list[dict[str, Any]]) -> dict[int, str]:
        """Tell Optuna how each ended trial not yet told ended; mark it told."""
        told: dict[int, str] = {}
        for trial in trials:
            if trial["told"] is not None or trial["status"] not in _TOLD:
                continue
            if trial["status"] == Outcome.SUCCEEDED.value:  # the epochs the orchestrator may not have reported
                history = (trial["metrics"] or {}).get("history") or []
                optuna_glue.report(study, trial["optuna_trial_id"],
                                   [(h["epoch"], h.get(sweep["metric"])) for h in history if h.get("epoch")])
            state = optuna_glue.tell(study, trial["optuna_trial_id"], _TOLD[trial["status"]])
            conn.execute(queries.MARK_TOLD, {"sweep_id": sweep["id"], "number": trial["number"], "told": state})
            trial["told"] = told[trial["number"]] = state
            log.info("sweep %s: trial %s (task %s) %s", sweep["name"], trial["number"], trial["task_id"], state)
        return told

    def _create_trials(self, conn: Connection, study: Any, sweep: dict[str, Any], known: set[int], wanted: int) -> list[int]:
        """Fail Optuna trials left without a task, then ask for ``wanted`` new trials and insert
        their tasks (options ``sweep`` and ``trial``: MLflow tags them; ``experiment``: the sweep's
        name, unless the base task names one, so a sweep's runs are one MLflow experiment)."""
        for number in optuna_glue.running_numbers(study) - known:
            log.warning("sweep %s: Optuna trial %s has no task (its creator stopped midway): failed", sweep["name"], number)
            study.tell(number, state=optuna_glue._optuna().trial.TrialState.FAIL, skip_if_finished=True)
        params = _params(sweep)
        table = TrainingTask.__table__
        created = []
        for _ in range(wanted):
            number, trial_id, values = optuna_glue.ask(study, params)
            task = dict(sweep["base"])
            task["options"] = {"experiment": sweep["name"], **task.get("options", {}), "sweep": sweep["name"], "trial": number}
            for spec in params:
                task = spec.apply(task, values[spec.name])
            task_id = conn.execute(insert(table).values(**task).returning(table.c.id)).scalar_one()
            conn.execute(queries.INSERT_TRIAL, {"sweep_id": sweep["id"], "number": number, "task_id": task_id,
                                                "optuna_trial_id": trial_id})
            log.info("sweep %s: trial %s queued as task %s: %s", sweep["name"], number, task_id, values)
            created.append(task_id)
        return created

    # -- users -----------------------------------------------------------------------------
    def cancel(self, name: str) -> list[int]:
        """Stop creating trials and cancel the sweep's queued and running trials (running ones stop
        within seconds; their orchestrators record it). Returns the cancelled task ids."""
        from pytrain.db.queue import TaskQueue

        sweep = self.get(name)
        self._execute(queries.CANCEL_SWEEP, {"sweep_id": sweep["id"]})
        queue = TaskQueue(self.engine)
        cancelled = [t["task_id"] for t in self.trials(sweep["id"])
                     if t["status"] in ("queued", "running") and queue.cancel(t["task_id"])]
        self.settle(sweep["id"])  # the queued ones are told at once
        return cancelled

    def best_number(self, sweep: dict[str, Any]) -> int | None:
        """The number of the best completed trial (Optuna's ``best_trial``), ``None`` before any completed."""
        completed = [t for t in self.trials(sweep["id"]) if t["told"] == "COMPLETE"]
        if not completed:
            return None
        return int(self.study(sweep).best_trial.number)

    def publish(self, name: str, number: int | None = None) -> tuple[int, int]:
        """Publish a trial's model (default: the best completed trial) as the next version of its
        Triton model. Publishing the same trial again returns the version it got.

        Returns:
            ``(trial number, version)``.

        Raises:
            ConfigurationError: no such trial, or it did not succeed (its state named), or no trial
                has completed yet.
            PublishError: publishing failed.
        """
        sweep = self.get(name)
        if number is None:
            number = self.best_number(sweep)
            if number is None:
                raise ConfigurationError(f"sweep {name}: no trial has completed yet", hint="`pytrain sweep show NAME`")
        return number, self._publish_trial(sweep, number)

    def _publish_best(self, sweep: dict[str, Any]) -> int | None:
        number = self.best_number(sweep)
        if number is None:
            log.warning("sweep %s ended without a completed trial: nothing published", sweep["name"])
            return None
        try:
            return self._publish_trial(sweep, number)
        except PyTrainError as exc:
            log.error("sweep %s: publishing its best trial %s failed: %s (retry: `pytrain sweep publish %s`)",
                      sweep["name"], number, exc, sweep["name"])
            return None

    def _publish_trial(self, sweep: dict[str, Any], number: int) -> int:
        from pytrain.db.queue import TaskQueue
        from pytrain.publish import publish_task

        trial = next((t for t in self.trials(sweep["id"]) if t["number"] == number), None)
        if trial is None:
            raise ConfigurationError(f"sweep {sweep['name']} has no trial {number}", hint="`pytrain sweep show NAME` lists them")
        if trial["status"] != Outcome.SUCCEEDED.value or not trial["task_dir"]:
            raise ConfigurationError(f"sweep {sweep['name']}: trial {number} (task {trial['task_id']}) is {trial['status']}: "
                                     "only a trial that trained to its end has a model", hint="pick a succeeded trial")
        row = TaskQueue(self.engine).get(trial["task_id"])
        published = publish_task(Path(trial["task_dir"]), settings=self.settings, task_record=PublishedTaskRow.from_row(dict(row)).to_dict())
        with self._transaction() as conn:
            conn.execute(queries.SET_TASK_VERSION, {"task_id": trial["task_id"], "version": int(published.version)})
            conn.execute(queries.SET_SWEEP_PUBLISHED, {"sweep_id": sweep["id"], "task_id": trial["task_id"],
                                                       "version": int(published.version)})
        log.info("sweep %s: trial %s (task %s) published as %s version %s", sweep["name"], number, trial["task_id"],
                 row.model_name, published.version)
        return int(published.version)

    def clean(self, name: str) -> list[Path]:
        """Remove the models, checkpoints and clip caches (:data:`CLEANED`) of the sweep's ended
        trials that are not published; logs, metrics and progress stay. Returns what was removed."""
        sweep = self.get(name)
        removed: list[Path] = []
        for trial in self.trials(sweep["id"]):
            if trial["status"] not in FINAL_STATUSES or trial["version"] is not None or not trial["task_dir"]:
                continue
            for item in CLEANED:
                path = Path(trial["task_dir"]) / item
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                else:
                    continue
                removed.append(path)
        return removed


def _params(sweep: dict[str, Any]) -> list[ParamSpec]:
    return [ParamSpec.from_json(p) for p in sweep["params"]]
