"""``pytrain compare``: runs side by side, from PyTrain's own records (works with tracking on or off).

A run is a ``training_tasks`` row and its task folder. Its parameters are the row's columns that
training reads (:attr:`pytrain.task_columns.TaskColumn.training`) and its ``options`` resolved with
their defaults (:class:`pytrain.task_options.TrainConfig`), so an option left out and one given with
its default value are the same parameter. Its figures come from the task folder: the per-epoch
curve from ``progress.jsonl`` (:func:`pytrain.spec.read_progress_records`), the final figures from
``metrics.json`` (:func:`pytrain.spec.read_metrics`); when the folder is gone, from the row's
``metrics`` and ``progress`` columns. A task that never ran has no figures (``None``), not an error.

The comparison itself (:func:`summarize`, :func:`compare_runs`) is pure: rows and records in, a
:class:`Comparison` out; :func:`load_runs` reads them from the database and the folders, and
:mod:`pytrain.cli.compare` prints it.

Example::

    pytrain compare 12 14 15                      # these tasks
    pytrain compare --model kitchen --last 4      # kitchen's newest 4 tasks
    pytrain compare --last 3 --json               # the newest 3 tasks, as JSON
    pytrain compare 12 14 --plot curves.png       # their validation curves, overlaid
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError, PyTrainError
from pytrain.spec import MetricsRecord, ProgressRecord, fold_progress, read_metrics, read_progress_records, task_dir_name
from pytrain.task_columns import TASK_COLUMNS
from pytrain.task_options import RUNNER_OPTIONS, TrainConfig

log = logging.getLogger(__name__)

#: The runs compared when neither task ids nor ``--last`` are given.
DEFAULT_LAST = 5
#: The columns that are parameters of a run, in table order: those training reads
#: (``priority`` orders the queue; ``options`` is spread into its keys).
PARAM_COLUMNS = tuple(c.name for c in TASK_COLUMNS if c.training)
#: The figures of one epoch a curve may show (``progress.jsonl``'s ``epoch`` record's keys).
CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
#: How many differing parameters a plot's legend names per run.
LABEL_PARAMS = 3


@dataclass(frozen=True)
class RunSummary:
    """One run as ``pytrain compare`` shows it. ``None``: not known (the task never ran, or the
    run did not get that far).

    Attributes:
        task_id, model_name, status: the row's.
        params: ``{name: value}`` of every parameter (:func:`run_params`).
        best_val_accuracy: the highest validation accuracy of an epoch (0..1); best_epoch: that
            epoch (the first of equals).
        test_accuracy: the exported checkpoint's test accuracy (0..1).
        epochs_run: epochs trained, all runs of the task together.
        wall_time_s: seconds from the start of the run to its metrics (else from the row's
            ``started_at`` to ``finished_at``).
        version: the published model version.
        history: one ``{"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}`` per
            epoch, in epoch order (a figure missing is ``None``).
    """

    task_id: int
    model_name: str
    status: str
    params: dict[str, Any]
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy: float | None = None
    epochs_run: int | None = None
    wall_time_s: float | None = None
    version: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """Runs and the parameters that differ between them.

    Attributes:
        runs: the runs, in the order asked for (task ids as given, else newest first).
        differing: the names of the parameters whose values are not all equal, in
            :data:`PARAM_COLUMNS` order, then the options' order.
    """

    runs: list[RunSummary]
    differing: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``pytrain compare --json``: ``{"differing": [...], "runs": [{"task_id", "model_name",
        "status", "params": {differing name: value}, "best_val_accuracy", "best_epoch", "test_accuracy",
        "epochs_run", "wall_time_s", "version", "history"}]}`` (the table's data, plus the curves)."""
        return {"differing": list(self.differing), "runs": [self._run_dict(run) for run in self.runs]}

    def label(self, run: RunSummary) -> str:
        """``task 3 (learning_rate=0.01, architecture=tiny)``: the run and its first
        :data:`LABEL_PARAMS` differing parameters (a plot's legend)."""
        shown = ", ".join(f"{name}={format_value(run.params.get(name))}" for name in self.differing[:LABEL_PARAMS])
        return f"task {run.task_id}" + (f" ({shown})" if shown else "")

    def curves(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """``[(label, history)]`` of every run, for :func:`pytrain.training.plots.plot_comparison`."""
        return [(self.label(run), run.history) for run in self.runs]

    def _run_dict(self, run: RunSummary) -> dict[str, Any]:
        return {
            "task_id": run.task_id, "model_name": run.model_name, "status": run.status,
            "params": {name: run.params.get(name) for name in self.differing},
            "best_val_accuracy": run.best_val_accuracy, "best_epoch": run.best_epoch, "test_accuracy": run.test_accuracy,
            "epochs_run": run.epochs_run, "wall_time_s": run.wall_time_s, "version": run.version, "history": run.history,
        }


def format_value(value: Any) -> str:
    """A parameter for people: lists comma-joined, ``None`` blank, numbers as Python writes them."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def run_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of a task row: the :data:`PARAM_COLUMNS`, then each training option
    resolved with its default (:meth:`TrainConfig.to_options`), then the runner options
    (``slurm``; ``None`` when not given). Options and columns never share a name (a test checks it).

    A row whose ``options`` :class:`TrainConfig` refuses (written by an older PyTrain) keeps the
    values it has, laid over the defaults.
    """
    options = row.get("options") or {}
    try:
        resolved = TrainConfig.from_options(options).to_options()
    except ConfigurationError:
        resolved = {**TrainConfig().to_options(), **{k: v for k, v in options.items() if k not in RUNNER_OPTIONS}}
    params = {name: row.get(name) for name in PARAM_COLUMNS}
    params.update(resolved)
    params.update((name, options.get(name)) for name in RUNNER_OPTIONS)
    return params


def differing_params(params: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names whose values are not all equal across ``params`` (a name one run lacks counts as
    ``None``), in the first mapping's order, then any others in the order met."""
    names = list(dict.fromkeys(name for p in params for name in p))
    return [name for name in names if any(p.get(name) != params[0].get(name) for p in params[1:])]


def epoch_history(records: Iterable[ProgressRecord]) -> list[dict[str, Any]]:
    """One row per epoch from ``progress.jsonl``'s ``epoch`` records, in epoch order; when a resumed
    run wrote an epoch again, its last record counts. Keys: ``epoch`` and :data:`CURVE_KEYS` (a
    figure not in the record, or not finite, is ``None``)."""
    by_epoch = {r.epoch: r for r in records if r.event == "epoch" and r.epoch is not None}
    return [{"epoch": epoch, **{key: _number(getattr(by_epoch[epoch], key)) for key in CURVE_KEYS}} for epoch in sorted(by_epoch)]


def _metrics_history(metrics: MetricsRecord | None) -> list[dict[str, Any]]:
    """``metrics.json``'s history as :func:`epoch_history` rows (rows without an epoch left out)."""
    rows = [h for h in (metrics.history or []) if isinstance(h, dict) and isinstance(h.get("epoch"), int)] if metrics else []
    return [{"epoch": h["epoch"], **{key: _number(h.get(key)) for key in CURVE_KEYS}} for h in sorted(rows, key=lambda h: h["epoch"])]


def _number(value: Any) -> float | None:
    """A finite figure, else ``None`` (a test accuracy without test clips is NaN: JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _best(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """``(best validation accuracy, its epoch)``, the first epoch of equals; ``(None, None)`` without one."""
    scored = [(h["val_accuracy"], h["epoch"]) for h in history if _number(h.get("val_accuracy")) is not None]
    if not scored:
        return None, None
    best = max(accuracy for accuracy, _ in scored)
    return best, min(epoch for accuracy, epoch in scored if accuracy == best)


def _row_progress(row: Mapping[str, Any]) -> ProgressRecord:
    """The row's ``progress`` column as a record (empty when it is not one)."""
    try:
        return ProgressRecord.from_dict(row.get("progress") or {})
    except ConfigurationError as exc:
        log.warning("task %s: the row's progress is not a progress record (%s)", row.get("id"), exc)
        return ProgressRecord()


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def summarize(row: Mapping[str, Any], records: Sequence[ProgressRecord], metrics: MetricsRecord | None) -> RunSummary:
    """One run from its row, its ``progress.jsonl`` records and its metrics record (pure).

    The curve is the records' epochs, else ``metrics``' history, else the one epoch the row's
    ``progress`` holds. Final figures: ``metrics`` first, then the latest progress.

    Args:
        row: the ``training_tasks`` row (a :class:`pytrain.db.TaskRow` or a mapping of its columns).
        records: the task folder's progress records (``[]``: none, or the folder is gone).
        metrics: ``metrics.json`` (or the row's ``metrics``), ``None`` when training did not finish.
    """
    latest = fold_progress(records) or _row_progress(row)
    history = epoch_history(records) or _metrics_history(metrics) or epoch_history([latest])
    best, best_epoch = _best(history)
    metrics = metrics or MetricsRecord()
    started, finished = row.get("started_at"), row.get("finished_at")
    elapsed = (finished - started).total_seconds() if started is not None and finished is not None else None
    return RunSummary(
        task_id=int(row["id"]), model_name=str(row["model_name"]), status=str(row.get("status") or ""),
        params=run_params(row), best_val_accuracy=best, best_epoch=best_epoch,
        test_accuracy=_number(_first(metrics.test_accuracy, latest.test_accuracy)),
        epochs_run=_first(metrics.epochs_run, latest.epochs_run, history[-1]["epoch"] if history else None),
        wall_time_s=_number(_first(metrics.wall_time_s, elapsed)), version=row.get("version"), history=history,
    )


def compare_runs(runs: Sequence[RunSummary], *, selection: str = "the tasks given") -> Comparison:
    """The :class:`Comparison` of ``runs`` (pure).

    Args:
        selection: what was asked for, for the error (``the newest 5 tasks of model 'kitchen'``).

    Raises:
        ConfigurationError: fewer than two runs, naming the selection and the tasks there are.
    """
    if len(runs) < 2:
        found = ", ".join(f"task {r.task_id}" for r in runs) or "no task"
        raise ConfigurationError(f"fewer than two runs to compare: {selection} found {found}",
                                 hint="give two or more task ids, or --last N (N >= 2); `pytrain tasks` lists them")
    return Comparison(runs=list(runs), differing=differing_params([r.params for r in runs]))


def task_folder(row: Mapping[str, Any], model_tasks_dir: Path) -> Path:
    """The row's task folder: ``task_dir`` as the orchestrator recorded it, else where it would be
    (``<model_tasks_dir>/``:func:`pytrain.spec.task_dir_name`)."""
    if row.get("task_dir"):
        return Path(row["task_dir"])
    return Path(model_tasks_dir) / task_dir_name(int(row["id"]), str(row["model_name"]), row["uid"])


def read_run(row: Mapping[str, Any], model_tasks_dir: Path) -> RunSummary:
    """:func:`summarize` of a row with its task folder's records; a folder that is gone or cannot be
    read (logged) falls back on the row's ``metrics`` and ``progress`` columns."""
    folder = task_folder(row, model_tasks_dir)
    records: list[ProgressRecord] = []
    metrics = None
    try:
        records = read_progress_records(folder)
        metrics = read_metrics(folder)
    except (OSError, PyTrainError) as exc:
        log.warning("task %s: %s cannot be read (%s); using the row's metrics and progress", row["id"], folder, exc)
    if metrics is None and row.get("metrics"):
        try:
            metrics = MetricsRecord.from_dict(row["metrics"])
        except ConfigurationError as exc:
            log.warning("task %s: the row's metrics are not a metrics record (%s)", row["id"], exc)
    return summarize(row, records, metrics)


def select_rows(queue: Any, task_ids: Sequence[int], *, model: str | None = None, last: int | None = None) -> list[Any]:
    """The task rows to compare: ``task_ids`` in the order given (repeats once), else the newest
    ``last`` (default :data:`DEFAULT_LAST`) tasks, of ``model`` when given, newest first.

    Args:
        queue: a :class:`pytrain.db.TaskQueue`.

    Raises:
        ConfigurationError: task ids given together with ``model`` or ``last``.
        TaskNotFoundError: a task id with no row (the message names it).
    """
    if task_ids:
        if model is not None or last is not None:
            raise ConfigurationError("give task ids or --model/--last, not both", hint="e.g. `pytrain compare 3 4` or `pytrain compare --model kitchen --last 3`")
        return [queue.get(task_id) for task_id in dict.fromkeys(task_ids)]
    return queue.list(model=model, limit=last or DEFAULT_LAST)


def load_runs(queue: Any, model_tasks_dir: Path, task_ids: Sequence[int], *, model: str | None = None,
              last: int | None = None) -> Comparison:
    """The :class:`Comparison` of the selected tasks (:func:`select_rows`), read from the database and
    their task folders (:func:`read_run`).

    Raises:
        ConfigurationError, TaskNotFoundError: see :func:`select_rows` and :func:`compare_runs`.
    """
    rows = select_rows(queue, task_ids, model=model, last=last)
    selection = "the tasks given" if task_ids else \
        f"the newest {last or DEFAULT_LAST} tasks" + (f" of model {model!r}" if model is not None else "")
    return compare_runs([read_run(row, model_tasks_dir) for row in rows], selection=selection)
