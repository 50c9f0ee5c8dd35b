"""The worker's tracker: logs each run to MLflow from a background thread, never failing or
slowing the run; and :func:`sync_run`, the idempotent catch-up it (and ``pytrain tracking sync``) uses.

The catch-up rule: one MLflow run per ``task_runs`` row, found by its tags ``pytrain.uid`` (the
task's) and ``pytrain.run_id``. A
sync reads the whole ``progress.jsonl`` and logs only the epochs after the last one the MLflow
run holds (the history of the metric ``epoch``, logged in the same batch as the epoch's other
metrics), so a sync may be repeated, interrupted or run after the server was down, and no step is
ever logged twice. A re-claimed task (a resume) gets a new MLflow run, linked to the previous one
by the tag ``pytrain.previous_run`` (its MLflow run id); its history is the task folder's whole
curve. A run is complete when it carries the tag ``pytrain.synced=final``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytrain.outcome import Outcome
from pytrain.settings import Settings
from pytrain.spec import read_metrics
from pytrain.tracking import logged
from pytrain.tracking.logged import TrackedRun
from pytrain.tracking.onnx_model import MODEL_ARTIFACT, log_onnx_model
from pytrain.tracking.registry import MODEL_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The tag that marks a run whose end was logged.
SYNCED_TAG = "pytrain.synced"
#: The tag of a sweep's parent run (its value: the sweep's name; :func:`create_sweep_parent`).
SWEEP_PARENT_TAG = "pytrain.sweep_parent"
#: How an ended PyTrain run maps to an MLflow run status.
_STATUS = {Outcome.SUCCEEDED: "FINISHED", Outcome.CANCELLED: "KILLED", Outcome.REQUEUED: "KILLED", Outcome.PRUNED: "KILLED"}
#: MLflow's most metrics in one ``log_batch`` call (``MAX_METRICS_PER_BATCH``).
_BATCH = 1000


def sync_run(client: MlflowClient, run: TrackedRun, settings: Settings, *, outcome: Outcome | None = None,
             logged_epoch: int | None = None) -> tuple[str, int]:
    """Bring ``run``'s MLflow run up to date with its task folder (idempotent).

    Args:
        client: an MLflow client (:func:`pytrain.tracking.store.make_client`).
        run: the ``task_runs`` row; ``run.task_dir`` ``None``: only the run, its tags and params.
        settings: for the default artifact location of a new experiment.
        outcome: how the run ended (``None``: still running): its end is logged too (final
            metrics, artifacts, status) unless already done.
        logged_epoch: the last epoch known to be logged (a cache; ``None``: read it from MLflow).

    Returns:
        ``(MLflow run id, last epoch logged)``.

    Raises:
        Exception: whatever MLflow raises (the server is down, a timeout); nothing is logged twice
            when called again.
    """
    mlflow_run = _find_or_create(client, run, settings)
    run_id = mlflow_run.info.run_id
    if mlflow_run.data.tags.get(SYNCED_TAG) == "final":
        return run_id, logged_epoch or 0
    if logged_epoch is None:
        logged_epoch = int(max((m.step for m in client.get_metric_history(run_id, logged.EPOCH_MARK)), default=0))
    if run.task_dir is None:
        return run_id, logged_epoch
    epochs, params = logged.read_epochs(run.task_dir)
    params.update(logged.dataset_params(run.task_dir))
    _log_new_params(client, run_id, mlflow_run.data.params, params)
    logged_epoch = _log_epochs(client, run_id, [r for r in epochs if r.epoch > logged_epoch], logged_epoch)
    if outcome is not None:
        _log_end(client, run_id, run.task_dir, outcome, mlflow_run.data.params)
        if outcome is Outcome.SUCCEEDED:
            _register(client, run, settings, run_id)
        client.set_tag(run_id, SYNCED_TAG, "final")  # last: a sync cut off before it is done again
    return run_id, logged_epoch


def _register(client: MlflowClient, run: TrackedRun, settings: Settings, mlflow_run_id: str) -> None:
    """Register the Triton version this run published (``history.jsonl`` names it) and move alias
    ``served`` to what Triton serves now (:mod:`pytrain.tracking.registry`)."""
    from pytrain.publish.versions import published_by_run, served_by_config
    from pytrain.tracking.registry import move_served, register_version

    model_dir = settings.model_repo_dir / run.model_name
    published = published_by_run(model_dir, run.uid, run.run_id)
    if published is None:  # not published by this run (or the version was unpublished since)
        return
    register_version(client, run.model_name, client.get_run(mlflow_run_id), published.version,
                     {"pytrain.task_id": str(run.task_id), "pytrain.uid": run.uid, "pytrain.run_id": str(run.run_id)})
    move_served(client, run.model_name, served_by_config(model_dir))


def _task_filter(uid: str) -> str:
    """MLflow's filter for the runs of the task ``uid`` (the uid, not the id: ids repeat across PyTrain databases)."""
    return f"tags.`pytrain.uid` = '{uid}'"


def _run_filter(uid: str, run_id: int) -> str:
    """MLflow's filter for the run of ``task_runs`` row ``run_id`` of the task ``uid``."""
    return f"{_task_filter(uid)} and tags.`pytrain.run_id` = '{run_id}'"


def find_run(client: MlflowClient, run: TrackedRun) -> tuple[str, str] | None:
    """``(experiment id, MLflow run id)`` of ``run``'s MLflow run, ``None`` when it has none (yet):
    what the console's Task page links to."""
    experiment = client.get_experiment_by_name(run.experiment)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], filter_string=_run_filter(run.uid, run.run_id), max_results=1)
    return (experiment.experiment_id, found[0].info.run_id) if found else None


def _find_or_create(client: MlflowClient, run: TrackedRun, settings: Settings) -> Any:
    """The MLflow run tagged with ``run.run_id``, created (with tags and params) when there is none;
    a sweep's trial's run is created as a child of its sweep's parent run, where there is one."""
    experiment_id = _experiment_id(client, settings, run.experiment)
    task = _task_filter(run.uid)
    found = client.search_runs([experiment_id], filter_string=_run_filter(run.uid, run.run_id), max_results=1)
    if found:
        return found[0]
    tags = run.tags()
    previous = client.search_runs([experiment_id], filter_string=task,
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if previous:
        tags["pytrain.previous_run"] = previous[0].info.run_id
    parent = _sweep_parent(client, experiment_id, (run.columns.get("options") or {}).get("sweep"))
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    created = client.create_run(experiment_id, run_name=run.run_name, tags=tags)
    _log_new_params(client, created.info.run_id, {}, run.params())
    return client.get_run(created.info.run_id)


def _experiment_id(client: MlflowClient, settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created (artifacts where :func:`artifact_location` says) when missing."""
    from pytrain.tracking.store import artifact_location

    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(
        name, artifact_location=artifact_location(settings, name))


def create_sweep_parent(client: MlflowClient, settings: Settings, experiment: str, sweep: str) -> str:
    """The parent run of sweep ``sweep`` in ``experiment`` (tag :data:`SWEEP_PARENT_TAG`), created
    when missing; ``pytrain sweep create`` makes it once, so concurrent trials never race to make
    two. Its trials' runs are its children (``mlflow.parentRunId``). Returns its run id."""
    experiment_id = _experiment_id(client, settings, experiment)
    found = _sweep_parent(client, experiment_id, sweep)
    if found is not None:
        return found
    created = client.create_run(experiment_id, run_name=f"sweep-{sweep}", tags={SWEEP_PARENT_TAG: sweep, "pytrain.sweep": sweep})
    client.set_terminated(created.info.run_id, "FINISHED")
    return created.info.run_id


def _sweep_parent(client: MlflowClient, experiment_id: str, sweep: Any) -> str | None:
    """The run id of the sweep's parent run, ``None`` without one (or without a sweep name that is
    safe in a filter: a sweep's name matches :data:`pytrain.task_columns.MODEL_NAME_PATTERN`)."""
    from pytrain.task_columns import MODEL_NAME_PATTERN

    if not isinstance(sweep, str) or not re.fullmatch(MODEL_NAME_PATTERN, sweep):
        return None
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_PARENT_TAG}` = '{sweep}'", max_results=1)
    return found[0].info.run_id if found else None


def _log_new_params(client: MlflowClient, run_id: str, have: dict[str, str], params: dict[str, str]) -> None:
    """Log the params the run does not hold yet (a param cannot change in MLflow)."""
    from mlflow.entities import Param

    new = [Param(key, value) for key, value in params.items() if key not in have]
    for start in range(0, len(new), 100):  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
        client.log_batch(run_id, params=new[start:start + 100])
    have.update({p.key: p.value for p in new})


def _log_epochs(client: MlflowClient, run_id: str, records: list, logged_epoch: int) -> int:
    """Log each record's metrics at ``step = epoch``, one batch per epoch (the mark in the same
    batch); returns the last epoch logged."""
    from mlflow.entities import Metric

    for record in records:
        stamp = int((record.time or time.time()) * 1000)
        batch = [Metric(key, value, stamp, record.epoch) for key, value in logged.epoch_metrics(record).items()]
        client.log_batch(run_id, metrics=batch[:_BATCH])
        logged_epoch = record.epoch
    return logged_epoch


def _log_end(client: MlflowClient, run_id: str, task_dir: Path, outcome: Outcome, have: dict[str, str]) -> None:
    """Final metrics and params (when ``metrics.json`` is there), the artifacts, the status."""
    from mlflow.entities import Metric, RunTag

    metrics = read_metrics(task_dir)
    if metrics is not None:
        _log_new_params(client, run_id, have, logged.final_params(metrics))
        now = int(time.time() * 1000)
        values = [Metric(key, value, now, 0) for key, value in logged.final_metrics(metrics).items()]
        if client.get_run(run_id).data.tags.get("pytrain.final_metrics") != "1":  # logged once (step 0)
            for start in range(0, len(values), _BATCH):
                client.log_batch(run_id, metrics=values[start:start + _BATCH])
            client.set_tag(run_id, "pytrain.final_metrics", "1")
    for path in logged.artifact_files(task_dir):
        client.log_artifact(run_id, str(path))  # same name again: replaced, never duplicated
    if outcome is Outcome.SUCCEEDED and log_onnx_model(client, run_id, task_dir):
        client.set_tag(run_id, MODEL_TAG, MODEL_ARTIFACT)
    client.log_batch(run_id, tags=[RunTag("pytrain.outcome", outcome.value)])
    client.set_terminated(run_id, _STATUS.get(outcome, "FAILED"))


class RunTracker:
    """Logs the worker's runs to MLflow on a background thread (``PYTRAIN_MLFLOW=on``).

    :meth:`update` (each heartbeat) and :meth:`finish` (the end of a run) only queue work and never
    raise; the thread syncs (:func:`sync_run`). A failure is a warning, at most one per
    :attr:`WARNING_SECONDS`; a run whose end could not be logged stays pending and is retried every
    ``settings.poll_seconds`` (at least :attr:`RETRY_SECONDS`) until it is, or the worker stops
    (then ``pytrain tracking sync`` catches it up).

    Args:
        settings: the worker's settings (``mlflow``, ``mlflow_tracking_uri``, ``data_dir``).
        client: an MLflow client (default: :func:`pytrain.tracking.store.make_client`, made on
            the thread when first needed).
    """

    WARNING_SECONDS = 60.0
    RETRY_SECONDS = 5.0

    def __init__(self, settings: Settings, client: MlflowClient | None = None) -> None:
        self.settings = settings
        self.enabled = settings.mlflow == "on"
        self._client = client
        self._queue: queue.Queue[tuple[TrackedRun, Outcome | None] | None] = queue.Queue()
        self._pending: dict[int, tuple[TrackedRun, Outcome]] = {}  # run id -> ended run not yet logged
        self._logged: dict[int, int] = {}  # run id -> last epoch known logged
        #: ``{task_runs id: MLflow run id}`` of the runs logged so far (the demo prints its run's).
        self.mlflow_runs: dict[int, str] = {}
        self._warned_at: float | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def update(self, run: TrackedRun) -> None:
        """Log the run's new epochs (queued; returns at once)."""
        self._put(run, None)

    def finish(self, run: TrackedRun, outcome: Outcome) -> None:
        """Log the run's end: the rest of its epochs, final metrics, artifacts, status (queued)."""
        self._put(run, outcome)

    def wait(self, timeout: float) -> bool:
        """Wait until the queue is worked off and no end is pending (tests, the demo); returns whether it was."""
        return self._idle.wait(timeout)

    @property
    def pending(self) -> list[int]:
        """The ``task_runs`` ids whose end is not logged yet."""
        return sorted(self._pending)

    def close(self, timeout: float = 10.0) -> None:
        """Work off the queue for at most ``timeout`` seconds, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _put(self, run: TrackedRun, outcome: Outcome | None) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._idle.clear()
            self._queue.put((run, outcome))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        retry = max(self.RETRY_SECONDS, self.settings.poll_seconds)
        while True:
            try:
                item = self._queue.get(timeout=retry if self._pending else None)
            except queue.Empty:  # nothing new: retry the pending ends
                item = ()
            if item is None:  # close(): everything queued before was worked off
                if not self._pending:
                    self._idle.set()
                return
            items = [item] if item else []
            while not self._queue.empty():  # coalesce: the latest update of each run is enough
                nxt = self._queue.get_nowait()
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            self._sync_all(items)
            if self._queue.empty() and not self._pending:
                self._idle.set()

    def _sync_all(self, items: list) -> None:
        todo: dict[int, tuple[TrackedRun, Outcome | None]] = {}
        for run, outcome in items:
            if outcome is not None:
                self._pending[run.run_id] = (run, outcome)
            elif run.run_id not in self._pending:
                todo[run.run_id] = (run, None)
        todo.update(self._pending)
        for run, outcome in todo.values():
            self._sync_one(run, outcome)

    def _sync_one(self, run: TrackedRun, outcome: Outcome | None) -> None:
        try:
            if self._client is None:
                from pytrain.tracking.store import make_client

                self._client = make_client(self.settings)
            mlflow_run_id, epoch = sync_run(self._client, run, self.settings, outcome=outcome, logged_epoch=self._logged.get(run.run_id))
        except Exception as exc:  # tracking is a side channel: never let it fail or stop a run
            self._logged.pop(run.run_id, None)  # a batch may have landed before the error: read the mark again
            self._warn(run, exc)
            return
        self._logged[run.run_id] = epoch
        self.mlflow_runs[run.run_id] = mlflow_run_id
        if outcome is not None:
            self._pending.pop(run.run_id, None)
            self._logged.pop(run.run_id, None)

    def _warn(self, run: TrackedRun, exc: Exception) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.WARNING_SECONDS:
            self._warned_at = now
            log.warning("task %s: MLflow tracking failed (%s: %s); the run goes on, its metrics are caught up later "
                        "(this warning repeats at most every %g s)", run.task_id, type(exc).__name__,
                        str(exc).splitlines()[0][:300] if str(exc) else "", self.WARNING_SECONDS)


def with_task_dir(run: TrackedRun, task_dir: Path | None) -> TrackedRun:
    """``run`` with its task folder set."""
    return run if run.task_dir == task_dir else replace(run, task_dir=task_dir)


def sync_tasks(settings: Settings, engine: Any, task_ids: list[int] | None = None, *, last: int = 50,
               client: MlflowClient | None = None) -> list[tuple[int, int, str]]:
    """``pytrain tracking sync``: catch up the MLflow runs of tasks' runs (:func:`sync_run` each).

    Args:
        settings: PyTrain settings (the tracking store).
        engine: PyTrain's database.
        task_ids: these tasks (default: the ``last`` most recent ones).
        last: how many recent tasks when ``task_ids`` is not given.
        client: an MLflow client (default: :func:`pytrain.tracking.store.make_client`).

    Returns:
        ``(task id, task_runs id, MLflow run id)`` per run synced.

    Raises:
        Exception: what MLflow raises (the server is down): the runs before it are synced.
        ConfigurationError: mlflow is not installed.
    """
    from pytrain.db import TaskQueue
    from pytrain.tracking.store import make_client

    client = client or make_client(settings)
    queue = TaskQueue(engine)
    rows = [queue.get(task_id) for task_id in task_ids] if task_ids else queue.list(limit=last)
    done = []
    for row in rows:
        for task_run in queue.runs(row.id):
            run = TrackedRun.from_row(row, run_id=task_run.id, worker_id=task_run.worker_id, runner=settings.runner,
                                      task_dir=row.task_dir)
            mlflow_run_id, _ = sync_run(client, run, settings, outcome=task_run.outcome)
            done.append((row.id, task_run.id, mlflow_run_id))
    return done
