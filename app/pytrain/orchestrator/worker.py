"""The worker loop: claim a task, prepare it, hand it to a runner, record the outcome.

One :class:`Orchestrator` per GPU host (or GPU set); any number can share one database. The queue
operations are in :class:`pytrain.db.TaskQueue`; this module only decides what to do and when.

Life of a worker:

1. Start: check the schema (refuse an old one), take the worker id's lock in the database (a
   second live orchestrator with the same id refuses to start; :class:`pytrain.db.WorkerLock`),
   kill runs a crashed predecessor with the same worker id left behind
   (``runner.cleanup_orphans``), re-queue the tasks still marked running under this worker id.
2. Loop: re-queue tasks whose lease expired (any worker's), claim the next task
   (``FOR UPDATE SKIP LOCKED``), run it; when the queue is empty, wait for a ``NOTIFY`` on
   ``pytrain_tasks`` or the polling interval, whichever comes first. An unexpected exception
   while handling one task (a bug, an ``OSError``) fails that task with the exception's type and
   message and logs the traceback; the worker goes on (only a database error leaves the task to
   its lease).
3. While a task runs, a heartbeat thread renews its lease every ``heartbeat_seconds``, copies
   ``progress.jsonl`` into the row and sets the runner's ``cancel`` event when the task was
   cancelled (or the run was lost: its lease expired and someone else re-queued it). A fence
   thread stops the run itself (``cancel``) when the lease has not been renewed for
   ``settings.fence_seconds`` (lease minus margin), so a worker cut off from the database, or
   frozen, never trains past its lease alongside the run that replaces it.
4. Success: the heartbeat (and the fence) go on while the publisher stages the version; only
   placing it (renames, milliseconds) happens in the transaction that locks the task row, checks
   the run still holds it and records the success (:meth:`pytrain.db.TaskQueue.success_transaction`,
   the publisher's ``gate``), so ``pytrain cancel`` never waits for a publish. Triton loads the
   model after the commit. A database that drops meanwhile is retried: the retry finds the version
   this run placed (publishing is idempotent per run: task uid and run id in ``history.jsonl``).
5. A sweep's trial (:mod:`pytrain.sweeps`): each new epoch's validation metric is reported to its
   Optuna trial from the heartbeat; when the pruner says stop, the run is stopped like a cancel
   and recorded ``pruned``. A successful trial is recorded unpublished (its sweep publishes the
   best at its end), and once the trial's task ended the sweep is settled: Optuna is told, and
   new trials are created up to ``--parallel``.
6. Stop (SIGTERM/SIGINT, :meth:`Orchestrator.stop`): no new claims; the running task is
   interrupted and re-queued (default) or allowed to finish.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine

from pytrain.db import Claim, RunEnded, SourceRegistry, TaskQueue, VideoCatalog, WorkerLock, check_schema, get_engine
from pytrain.db.engine import check_database_password
from pytrain.errors import ConfigurationError, DatabaseError, PyTrainError, RunnerError, SchemaOutOfDateError
from pytrain.orchestrator.prepare import prepare_task, read_progress
from pytrain.outcome import Outcome
from pytrain.runners import ClusterRunner, PreparedTask, Runner, RunResult, check_nodes, error_with_tail, get_runner
from pytrain.settings import Settings, get_settings, with_overrides
from pytrain.spec import METRICS, ProgressRecord, PublishedTaskRow, format_progress, read_metrics, read_progress_record
from pytrain.sweeps.store import SweepStore, TrialRef
from pytrain.tracking import RunTracker, TrackedRun
from pytrain.tracking.logged import read_epochs
from pytrain.tracking.tracker import with_task_dir

if TYPE_CHECKING:  # publishing is imported when first needed (:func:`_load_publisher`)
    from pytrain.publish.repository import Gate, PublishedModel

log = logging.getLogger(__name__)
# Per-epoch lines of running tasks: on for `pytrain orchestrate`, silenced by the demo (it draws a bar).
progress_log = logging.getLogger("pytrain.orchestrator.progress")

class Publisher(Protocol):
    """What the worker calls to publish a trained task (default :func:`pytrain.publish.publish_task`).

    It enters ``gate()`` around placing the version and calls the ``record(published)`` the gate
    yields: that is what records the success (a publisher that never does fails the task).
    """

    def __call__(self, task_dir: Path, *, settings: Settings, task_record: dict[str, Any],
                 gate: Gate | None = None) -> PublishedModel:
        """Publish ``task_dir``'s model as the next version of its Triton model.

        Args:
            task_dir: the task folder of the successful run.
            settings: the worker's settings.
            task_record: the task row as :class:`~pytrain.spec.PublishedTaskRow` writes it.
            gate: ``gate() -> context manager yielding record(published)``.

        Returns:
            The placed version (its number, served versions and serving note are recorded).

        Raises:
            RunEnded: the gate found the task cancelled or the run no longer holding it.
            DatabaseError: recording failed (the worker retries; the publish must be idempotent per run).
            PyTrainError: publishing failed (the task fails with the message).
        """
        ...

_MAX_ERROR_CHARS = 4000
#: How often an idle worker settles the running sweeps (seconds): a trial failed by an expired
#: lease, or a sweep whose creator died before its first trials, is topped up within this.
IDLE_SETTLE_SECONDS = 10.0


def default_worker_id(gpus: str | None) -> str:
    """``<hostname>-gpu<ids>`` (``<hostname>-cpu`` without GPUs): the same across restarts of a worker.

    Being stable is what lets a restarted worker find and re-queue the tasks it was running when
    it crashed.
    """
    host = socket.gethostname()
    if not gpus:
        return f"{host}-cpu"
    return f"{host}-gpu{gpus.replace(',', '_').replace(' ', '')}"


def _load_publisher() -> Publisher:
    from pytrain.publish import publish_task  # imported lazily: publishing is another part

    return publish_task


class _Heartbeat(threading.Thread):
    """Renews a run's lease, copies its progress into the row, notices cancellation, and fences.

    ``state`` (an :class:`~pytrain.outcome.Outcome`): ``OK``; ``CANCELLED`` (a user cancelled the
    task); ``LOST`` (a heartbeat found the run no longer holds the task); ``FENCED`` (the lease was
    not renewed for ``settings.fence_seconds``: the worker stopped its run itself). Any state but
    ``OK`` sets ``cancel``, which the runner obeys within its poll + grace time. ``PRUNED``: the
    task is a sweep's trial and ``prune(task_dir)``, asked at each new epoch, said stop.

    Progress is a side channel: a ``progress.jsonl`` that cannot be read (an I/O error, a
    directory in its place) is a warning, at most one per :attr:`PROGRESS_WARNING_SECONDS`, and
    the lease is renewed without progress; a heartbeat that died on it would fence a healthy run.

    Args:
        claimed_at: ``time.monotonic()`` taken before the claim was sent: the lease runs from a
            moment after it, so fencing counts from here.
    """

    #: The least time between two warnings about an unreadable ``progress.jsonl`` (seconds).
    PROGRESS_WARNING_SECONDS = 60.0

    def __init__(self, queue: TaskQueue, run: Claim, settings: Settings, cancel: threading.Event,
                 claimed_at: float | None = None, on_epoch: Callable[[Path | None], None] | None = None,
                 prune: Callable[[Path], bool] | None = None) -> None:
        super().__init__(name=f"heartbeat-task-{run.task_id}", daemon=True)
        self.queue = queue
        self.run_ = run
        self.settings = settings
        self.cancel = cancel
        self.task_dir: Path | None = None
        self.state = Outcome.OK  # OK | CANCELLED | LOST | FENCED | PRUNED
        #: ``time.monotonic()`` when the last successful renewal was sent (before the database set the lease).
        self.renewed_at = time.monotonic() if claimed_at is None else claimed_at
        self._done = threading.Event()
        self._lock = threading.Lock()  # held during a beat (a database call)
        self._state_lock = threading.Lock()  # never held across a database call: the fence must not wait on one
        self._ended = False
        self._logged_epoch: int | None = None
        self._on_epoch = on_epoch  # called with the task folder at each new epoch (experiment tracking)
        self._prune = prune  # a sweep's trial: asked at each new epoch whether its pruner stops the run
        self._progress_warned_at: float | None = None  # time.monotonic() of the last warning
        self._fence = threading.Thread(target=self._watch, name=f"fence-task-{run.task_id}", daemon=True)

    def start(self) -> None:
        """Start beating, and the fence that watches the renewals."""
        super().start()
        self._fence.start()

    def beat(self) -> None:
        """Renew the lease, copy progress into the row, and set ``cancel`` if the run was cancelled or lost."""
        with self._lock:
            if self._ended or self.state is Outcome.FENCED:
                return
            self._beat()

    def _beat(self) -> None:
        record = self._read_progress()
        sent = time.monotonic()
        try:
            state = self.queue.heartbeat(self.run_, self.settings.lease_seconds, None if record is None else record.to_dict())
        except DatabaseError as exc:  # a database hiccup: try again at the next beat (the fence bounds how long)
            log.warning("task %s: heartbeat failed (%.1f s since the last renewal): %s",
                        self.run_.task_id, time.monotonic() - self.renewed_at, exc)
            return
        self._log_epoch(record)
        if state is Outcome.OK:
            with self._state_lock:
                if self.state is Outcome.OK:
                    self.renewed_at = sent
            return
        if state is Outcome.CANCELLED:
            self._set_state(Outcome.CANCELLED, "task %s was cancelled; stopping its run")
        else:
            self._set_state(Outcome.LOST, "task %s: the run no longer holds the task (re-queued or claimed by another worker); stopping it")

    def _read_progress(self) -> ProgressRecord | None:
        """The run's latest progress, or ``None`` (no task folder yet, no record, or unreadable:
        warned about, rate-limited). Never raises."""
        if self.task_dir is None:
            return None
        try:
            return read_progress_record(self.task_dir)
        except Exception as exc:  # OSError, or anything else: never let progress kill the heartbeat
            now = time.monotonic()
            if self._progress_warned_at is None or now - self._progress_warned_at >= self.PROGRESS_WARNING_SECONDS:
                self._progress_warned_at = now
                log.warning("task %s: cannot read the run's progress in %s (%s: %s); the lease is renewed without it "
                            "(this warning repeats at most every %g s)", self.run_.task_id, self.task_dir,
                            type(exc).__name__, exc, self.PROGRESS_WARNING_SECONDS)
            return None

    def _set_state(self, state: Outcome, message: str) -> None:
        with self._state_lock:
            if self.state is not Outcome.OK or self._ended:
                return
            self.state = state
        (log.info if state in (Outcome.CANCELLED, Outcome.PRUNED) else log.warning)(message, self.run_.task_id)
        self.cancel.set()

    def _watch(self) -> None:
        """The fence: stop the run once the lease has gone unrenewed for ``settings.fence_seconds``."""
        step = min(0.25, self.settings.heartbeat_seconds / 2)
        while not self._done.wait(step):
            with self._state_lock:
                if self.state is not Outcome.OK or self._ended:
                    return
                overdue = time.monotonic() - self.renewed_at >= self.settings.fence_seconds
            if overdue:
                self._set_state(Outcome.FENCED, "task %s: lease not renewed for PYTRAIN_LEASE_SECONDS minus the fencing margin "
                                f"({self.settings.fence_seconds:g} s); stopping the run before another worker may claim it")
                return

    def _log_epoch(self, record: ProgressRecord | None) -> None:
        """Log one progress line (:func:`pytrain.spec.format_progress`) per new epoch."""
        if record is None or record.epoch is None or record.epoch == self._logged_epoch:
            return
        self._logged_epoch = record.epoch
        progress_log.info("task %s: %s", self.run_.task_id, format_progress(record))
        if self._on_epoch is not None:
            self._on_epoch(self.task_dir)
        if self._prune is not None and self.task_dir is not None and self._prune(self.task_dir):
            self._set_state(Outcome.PRUNED, f"task %s: its sweep's pruner stopped it after epoch {record.epoch}; stopping its run")

    def run(self) -> None:
        """Beat every ``heartbeat_seconds`` until stopped, cancelled or lost."""
        while not self._done.wait(self.settings.heartbeat_seconds):
            self.beat()
            if self.state is not Outcome.OK:
                return

    def end(self) -> None:
        """No beat and no fencing from now on: the worker is about to record the run's outcome. A
        beat after that write would find the run no longer running and wrongly report it lost."""
        with self._lock:  # waits for a beat in flight
            self._end_now()

    def _end_now(self) -> None:
        with self._state_lock:
            self._ended = True

    @contextmanager
    def writing_outcome(self) -> Iterator[None]:
        """No beat while the block writes the run's outcome (it waits for one in flight); ended
        afterwards, as :meth:`end`. When the block raises :class:`DatabaseError` nothing was
        written: beating and fencing go on while the worker retries."""
        with self._lock:
            try:
                yield
            except DatabaseError:
                raise
            except BaseException:
                self._end_now()
                raise
            self._end_now()

    def stop(self) -> None:
        """Stop beating and fencing, and wait for both threads (a beat stuck on a dead connection
        is not waited for beyond a heartbeat: the thread is a daemon and its run is fenced)."""
        self._done.set()
        self._fence.join()
        self.join(timeout=max(1.0, self.settings.heartbeat_seconds))


class _SuccessGate:
    """The publisher's ``gate`` (see :class:`Publisher`): while the version is placed, no beat, the
    task row locked and the run checked (:meth:`pytrain.db.TaskQueue.success_transaction`); the
    ``record(published)`` it yields writes the success, with the served versions when the publish
    changed them; the commit follows. ``recorded``: whether a success was committed."""

    def __init__(self, queue: TaskQueue, run: Claim, heartbeat: _Heartbeat, metrics: dict[str, Any],
                 progress: dict[str, Any] | None) -> None:
        self.queue, self.run, self.heartbeat, self.metrics, self.progress = queue, run, heartbeat, metrics, progress
        self.recorded = False

    @contextmanager
    def __call__(self) -> Iterator[Callable[[PublishedModel], None]]:
        with self.heartbeat.writing_outcome(), \
                self.queue.success_transaction(self.run, metrics=self.metrics, progress=self.progress) as record:
            yield lambda published: record(int(published.version), self._served(published))
        self.recorded = True  # committed (success_transaction refuses a block that recorded nothing)

    def _served(self, published: PublishedModel) -> dict[str, Any] | None:
        """The metrics to record when the publish changed what is served (a class or clip-size
        change: older versions are no longer served), else ``None``."""
        if not published.serving_note:
            return None
        return {**self.metrics, "served_versions": list(published.served_versions), "serving_note": published.serving_note}


class Orchestrator:
    """A worker that trains queued tasks.

    Args:
        settings: PyTrain settings (default: the process settings).
        engine: the database (default: :func:`pytrain.db.get_engine` of ``settings``).
        runner: the runner (default: :func:`pytrain.runners.get_runner` of ``settings``).
        publisher: called after a successful run as ``publisher(task_dir, settings=...,
            task_record=..., gate=...)``; it places the version inside ``gate()`` and records it
            with the ``record`` the gate yields (see :class:`Publisher`); default
            :func:`pytrain.publish.publish_task` (imported when first needed).
        worker_id: this worker's id (default ``settings.worker_id`` or :func:`default_worker_id`).
        gpus: GPU ids for the runs (default ``settings.gpus``).

    Raises:
        ConfigurationError, DatabaseError: from the engine or the runner.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: Engine | None = None,
        runner: Runner | None = None,
        publisher: Publisher | None = None,
        worker_id: str | None = None,
        gpus: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.gpus = gpus if gpus is not None else self.settings.gpus
        self.worker_id = worker_id or self.settings.worker_id or default_worker_id(self.gpus)
        self.engine = engine or get_engine(self.settings)
        self.queue = TaskQueue(self.engine)
        # The runner sees this worker's id and GPUs even when they came as arguments.
        self.runner = runner or get_runner(with_overrides(self.settings, worker_id=self.worker_id, gpus=self.gpus))
        self._publisher = publisher
        self._stop = threading.Event()  # no new claims
        self._interrupt = threading.Event()  # interrupt the running task and re-queue it
        self._started = False
        # One live orchestrator per worker id; its runner and GPUs recorded for the console's Workers page.
        self._identity = WorkerLock(self.engine, self.worker_id, runner=self.runner.name, gpus=self.gpus)
        self.current: Claim | None = None
        self._heartbeat: _Heartbeat | None = None  # the running task's
        self.tracker = RunTracker(self.settings)  # MLflow, a side channel (pytrain.tracking)
        self.sweeps = SweepStore(self.engine, self.settings)  # trials of sweeps (pytrain.sweeps)
        self._trial: TrialRef | None = None  # the running task's trial, when it is one
        self._sweeps_settled_at: float | None = None  # time.monotonic() of the last idle settle

    # -- control ---------------------------------------------------------------------------
    def stop(self, *, interrupt_running: bool = True) -> None:
        """Stop claiming tasks; thread- and signal-safe.

        Args:
            interrupt_running: interrupt the running task and put it back in the queue (it resumes
                from its last checkpoint on the next claim); ``False`` lets it finish first.
        """
        self._stop.set()
        if interrupt_running:
            self._interrupt.set()

    def install_signal_handlers(self, *, finish_running: bool = False) -> None:
        """SIGTERM/SIGINT stop the worker (see :meth:`stop`); a second signal interrupts the running task."""

        def handler(signum: int, _frame: object) -> None:
            if self._stop.is_set():
                log.warning("second %s: interrupting the running task", signal.Signals(signum).name)
                self._interrupt.set()
                return
            if self.current is None:
                log.info("%s: stopping (no task running)", signal.Signals(signum).name)
            else:
                log.info("%s: stopping after %s task %s", signal.Signals(signum).name,
                         "finishing" if finish_running else "re-queueing", self.current.task_id)
            self.stop(interrupt_running=not finish_running)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = _load_publisher()
        return self._publisher

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> None:
        """Check the schema, clean up after a crashed predecessor, re-queue its tasks.

        Raises:
            SchemaOutOfDateError: the schema is missing or old (hint: ``pytrain db upgrade``).
            ConfigurationError: another live orchestrator uses this worker id (named in the message),
                or the database is reached over the network with a guessable password
                (:func:`~pytrain.db.engine.check_database_password`).
        """
        check_database_password(self.engine.url)
        check_schema(self.engine)
        self._identity.acquire()  # before touching any run: a duplicate must not kill the other's runs
        active = self.queue.running_elsewhere(self.worker_id)
        if isinstance(self.runner, ClusterRunner):
            # Its runs (Slurm jobs) outlive a crashed worker: those of the tasks this worker id still
            # holds go on; the tasks are re-queued below, and their next run re-attaches to them.
            active |= self.queue.running_here(self.worker_id)
        orphans = self.runner.cleanup_orphans(active)
        if orphans:
            log.info("stopped runs left behind by a crashed worker: tasks %s", sorted(orphans))
        self.queue.requeue_lost(self.settings.max_attempts, own_worker_id=self.worker_id)
        self._started = True
        log.info("worker %s started (runner %s, gpus %s)", self.worker_id, self.runner.name, self.gpus or "none")

    def run(self, *, exit_when_idle: bool = False, max_tasks: int | None = None) -> int:
        """Work until stopped (or, with ``exit_when_idle``, until no task is queued).

        Args:
            exit_when_idle: return as soon as the queue has no queued task.
            max_tasks: return after this many tasks.

        Returns:
            The number of tasks this worker ran to an end (any outcome).

        Raises:
            SchemaOutOfDateError, ConfigurationError: see :meth:`start`; the worker id's lock is
                released when this returns.
        """
        if not self._started:
            self.start()
        done = 0
        try:
            if not self.queue.listen():
                log.warning("no NOTIFY: polling the queue every %.1f s", self.settings.poll_seconds)
            while not self._stop.is_set():
                if max_tasks is not None and done >= max_tasks:
                    break
                try:
                    self._identity.ensure()  # a server restart dropped the lock: take it again (or refuse)
                    ran = self.run_once()
                    idle = not ran and exit_when_idle and self.queue.counts().get("queued", 0) == 0
                except (SchemaOutOfDateError, ConfigurationError):
                    raise
                except DatabaseError as exc:  # the server restarts, the network drops: keep trying
                    log.warning("database unavailable (%s); retrying in %.1f s", exc, self.settings.poll_seconds)
                    self._stop.wait(self.settings.poll_seconds)
                    continue
                if ran:
                    done += 1
                    continue
                if idle:
                    log.info("no queued task left; exiting")
                    break
                self._wait_for_work(self.settings.poll_seconds)
        finally:
            self.queue.unlisten()
            self.close()
        return done

    def close(self) -> None:
        """Release the worker id's lock (idempotent); :meth:`run` calls it when it returns."""
        self._identity.release()
        self._started = False
        self.tracker.close()

    def run_once(self) -> bool:
        """Re-queue lost runs, then claim and run one task. Returns whether a task was run.

        An exception while handling the task, other than a :class:`DatabaseError`, fails the task
        with its type and message (traceback logged) instead of leaving this method.

        Raises:
            DatabaseError: the database failed (the task, if claimed, comes back when its lease expires).
        """
        self.queue.requeue_lost(self.settings.max_attempts)
        if self._stop.is_set():
            return False
        claimed_at = time.monotonic()  # before the claim: the lease runs from a moment after this
        run = self.queue.claim(self.worker_id, self.settings.lease_seconds)
        if run is None:
            self._settle_sweeps_when_idle()
            return False
        self.current = run
        try:
            status = self.process(run, claimed_at=claimed_at)
        except DatabaseError:
            raise  # the run loop waits for the database; the lease brings the task back
        except Exception as exc:  # a bug while handling one task fails that task, not the worker
            log.exception("task %s: the worker crashed while handling it", run.task_id)
            status = self._fail(run, f"worker {self.worker_id} crashed while handling the task: {type(exc).__name__}: {exc}")
        finally:
            self.current = None
        log.info("task %s (%s): %s", run.task_id, run.task.model_name, status)
        return True

    # -- one task --------------------------------------------------------------------------
    def process(self, run: Claim, *, claimed_at: float | None = None) -> Outcome:
        """Prepare, run and record one claimed task.

        Args:
            run: the claimed run.
            claimed_at: ``time.monotonic()`` before the claim was sent (fencing counts from it;
                default: now).

        Returns:
            How the run ended as this worker recorded it: ``Outcome.SUCCEEDED``, ``FAILED``,
            ``CANCELLED``, ``PRUNED`` (a sweep's trial its pruner stopped), ``REQUEUED``
            (interrupted, lost by the cluster, or its folder held by another run: the task is
            queued again), or ``LOST`` (the run was taken away, or fenced:
            stopped by this worker because its lease could not be renewed in time).
        """
        cancel = threading.Event()
        tracked = TrackedRun.from_row(run.task, run_id=run.run_id, worker_id=self.worker_id, runner=self.runner.name, task_dir=None)
        trial = self._trial = self.sweeps.trial_of(run.task_id)
        heartbeat = _Heartbeat(self.queue, run, self.settings, cancel, claimed_at,
                               on_epoch=lambda task_dir: self.tracker.update(with_task_dir(tracked, task_dir)),
                               prune=None if trial is None else (lambda task_dir: self._should_prune(trial, task_dir)))
        heartbeat.start()
        self._heartbeat = heartbeat
        outcome = Outcome.FAILED  # what the tracker records when _process raises
        try:
            outcome = self._process(run, cancel, heartbeat)
            return outcome
        finally:
            self._heartbeat = self._trial = None
            heartbeat.stop()
            self.tracker.finish(with_task_dir(tracked, heartbeat.task_dir), outcome)
            if trial is not None:
                self._settle_sweep(trial)

    def _process(self, run: Claim, cancel: threading.Event, heartbeat: _Heartbeat) -> Outcome:
        task_id = run.task_id
        try:
            prepared = prepare_task(run.task, self.settings, registered=SourceRegistry(self.engine).names(), gpus=self.gpus,
                                    videos=VideoCatalog(self.engine).verdicts(run.task["sources"]))
            prepared = dataclasses.replace(prepared, run_id=run.run_id)  # a Ray job's submission id names its run
            check_nodes(self.runner, prepared)  # nodes > 1 only on a cluster runner (slurm, ray)
        except DatabaseError:
            raise
        except PyTrainError as exc:
            return self._fail(run, f"cannot prepare task {task_id}: {exc}")
        except Exception as exc:  # a bug, or an OSError nobody foresaw: this task fails, the worker goes on
            log.exception("task %s: preparing it crashed", task_id)
            return self._fail(run, f"cannot prepare task {task_id}: {type(exc).__name__}: {exc}")
        if not self.queue.set_task_dir(run, str(prepared.task_dir)):
            log.warning("task %s: the run no longer holds the task; not starting it", task_id)
            return Outcome.LOST
        heartbeat.task_dir = prepared.task_dir

        result = self._run(prepared, cancel)
        heartbeat.beat()  # the final progress, and a last look at cancellation
        progress = read_progress(prepared.task_dir)

        if heartbeat.state is Outcome.FENCED:
            return self._after_fencing(run)
        if heartbeat.state is Outcome.LOST:
            return Outcome.LOST
        if heartbeat.state is Outcome.PRUNED and result.outcome is not Outcome.SUCCEEDED:  # a run that ended first stands
            return self._record_pruned(run, heartbeat, progress)
        if heartbeat.state is Outcome.CANCELLED or result.outcome is Outcome.CANCELLED:
            if self.queue.status(task_id) == "cancelled":
                heartbeat.end()
                self.queue.finish(run, Outcome.CANCELLED, error="cancelled while running", progress=progress)
                return Outcome.CANCELLED
            return self._fail(run, "the run was stopped unexpectedly (cancel without a cancelled task)", progress)
        if result.outcome is Outcome.INTERRUPTED:
            heartbeat.end()
            self.queue.requeue(run, f"interrupted: worker {self.worker_id} shut down during the run; re-queued")
            return Outcome.REQUEUED
        if result.outcome is Outcome.REQUEUED:  # the cluster lost the run (a node failed, a preemption)
            heartbeat.end()
            self.queue.requeue(run, f"{result.message}; re-queued")
            return Outcome.REQUEUED
        if result.outcome is Outcome.LOCKED:
            return self._requeue_locked(run, result, heartbeat)
        if result.outcome is not Outcome.SUCCEEDED:
            message = result.message or f"run ended with {result.outcome.value}"
            if result.exit_code is not None and "exit" not in message:
                message += f" (exit code {result.exit_code})"
            # The docs (operations/orchestrator.md, "Runners") promise the stderr tail in `error`: the message first, then the tail's end.
            error = error_with_tail(f"{message} (log: {prepared.log_path})", result.stderr_tail, max_chars=_MAX_ERROR_CHARS)
            return self._fail(run, error, progress)
        return self._succeed(run, prepared, progress, heartbeat)

    def _run(self, prepared: PreparedTask, cancel: threading.Event) -> RunResult:
        """The runner's run of the prepared task; a runner that raises gives a ``FAILED`` result
        naming it (a bug in a runner must not kill the worker; the task says why)."""
        try:
            return self.runner.run(prepared, cancel, self._interrupt)
        except RunnerError as exc:
            return RunResult(Outcome.FAILED, exc.exit_code, f"runner {self.runner.name}: {exc}", exc.stderr_tail)
        except PyTrainError as exc:  # e.g. a ConfigurationError in the task's GPU list or limits
            return RunResult(Outcome.FAILED, None, f"runner {self.runner.name}: {exc}")
        except Exception as exc:
            log.exception("task %s: runner %s crashed", prepared.task_id, self.runner.name)
            return RunResult(Outcome.FAILED, None, f"runner {self.runner.name} crashed: {type(exc).__name__}: {exc}")

    def _requeue_locked(self, run: Claim, result: RunResult, heartbeat: _Heartbeat) -> Outcome:
        """Another run still holds the task folder (a worker that died or was paused left it running
        where this runner cannot stop it): not a failure of the task. It goes back to the queue
        without counting an attempt, claimable again after ``lease_seconds``: by then a paused
        worker has fenced its run, and an orphan gets another lease to end."""
        heartbeat.end()
        backoff = self.settings.lease_seconds
        log.warning("task %s: %s; re-queued, claimable again in %g s", run.task_id, result.message, backoff)
        self.queue.requeue(run, f"{result.message}; re-queued until that run has ended (next try in {backoff:g} s)",
                           backoff_seconds=backoff)
        return Outcome.REQUEUED

    def _after_fencing(self, run: Claim) -> Outcome:
        """The run was stopped by the fence: give the task back if the database is there and the
        run still holds it (nobody claimed it meanwhile); else its lease expires and any worker
        re-queues it. Either way this worker records nothing else."""
        reason = f"worker {self.worker_id} could not renew its lease in time; it stopped the run (fenced) and re-queued the task"
        try:
            requeued = self.queue.requeue(run, reason)
        except DatabaseError as exc:
            log.warning("task %s: fenced; cannot re-queue it (%s): its lease will expire", run.task_id, exc)
            return Outcome.LOST
        log.warning("task %s: fenced; %s", run.task_id, "re-queued" if requeued else "another worker holds it now")
        return Outcome.LOST

    def _succeed(self, run: Claim, prepared: PreparedTask, progress: dict[str, Any] | None, heartbeat: _Heartbeat) -> Outcome:
        try:
            read = read_metrics(prepared.task_dir)
        except ConfigurationError as exc:  # not JSON, or a key of the wrong type
            return self._fail(run, exc.message, progress)
        if read is None:
            return self._fail(run, f"training reported success but wrote no {prepared.task_dir / METRICS}", progress)
        metrics = read.to_dict()
        if self._trial is not None and self._trial.publish != "all":  # its sweep publishes the best trial at its end
            return self._succeed_unpublished(run, metrics, progress, heartbeat)
        record = PublishedTaskRow.from_row({**run.task, "status": "running", "metrics": metrics, "progress": progress or {},
                                            "task_dir": str(prepared.task_dir)}).to_dict()
        gate = _SuccessGate(self.queue, run, heartbeat, metrics, progress)
        # The database may drop while recording (a restart): retry until it is back, for at most a
        # lease after the last renewal (the heartbeat goes on meanwhile; each retry re-checks that
        # the run still holds the task, and finds the version this run placed already).
        while True:
            try:
                self.publisher(prepared.task_dir, settings=self.settings, task_record=record, gate=gate)
            except RunEnded as ended:
                if ended.status is Outcome.LOST:
                    log.warning("task %s: training finished, but the run no longer holds the task: not published", run.task_id)
                return ended.status
            except DatabaseError as exc:
                remaining = heartbeat.renewed_at + self.settings.lease_seconds - time.monotonic()
                if remaining <= 0:
                    log.error("task %s: cannot record the success (%s); giving up: its lease has expired", run.task_id, exc)
                    heartbeat.end()
                    return Outcome.LOST
                log.warning("task %s: recording the success failed (%s); retrying (%.0f s left)", run.task_id, exc, remaining)
                time.sleep(min(1.0, remaining))
                continue
            except PyTrainError as exc:
                return self._fail(run, f"publishing failed: {exc}", progress, metrics=metrics)
            except Exception as exc:
                log.exception("task %s: publishing crashed", run.task_id)
                return self._fail(run, f"publishing crashed: {type(exc).__name__}: {exc}", progress, metrics=metrics)
            if not gate.recorded:  # a publisher that never entered the gate recorded nothing
                return self._fail(run, "the publisher returned without recording a version", progress, metrics=metrics)
            return Outcome.SUCCEEDED

    def _succeed_unpublished(self, run: Claim, metrics: dict[str, Any], progress: dict[str, Any] | None,
                             heartbeat: _Heartbeat) -> Outcome:
        """Record a sweep trial's success without publishing (its model stays in the task folder
        until its sweep publishes it or ``pytrain sweep clean`` removes it). A task cancelled
        meanwhile is recorded cancelled; a run that no longer holds its task records nothing."""
        with heartbeat.writing_outcome():
            if self.queue.finish(run, Outcome.SUCCEEDED, metrics=metrics, progress=progress):
                return Outcome.SUCCEEDED
            if self.queue.finish(run, Outcome.CANCELLED, error="cancelled before its success was recorded", progress=progress):
                return Outcome.CANCELLED
        log.warning("task %s: training finished, but the run no longer holds the task", run.task_id)
        return Outcome.LOST

    def _record_pruned(self, run: Claim, heartbeat: _Heartbeat, progress: dict[str, Any] | None) -> Outcome:
        """Record a trial its sweep's pruner stopped: status ``pruned`` (a cancel that came first stands)."""
        epoch = (progress or {}).get("epoch")
        heartbeat.end()
        if self.queue.finish(run, Outcome.PRUNED, error=f"pruned by its sweep after epoch {epoch}", progress=progress):
            return Outcome.PRUNED
        if self.queue.status(run.task_id) == "cancelled":
            self.queue.finish(run, Outcome.CANCELLED, error="cancelled while running", progress=progress)
            return Outcome.CANCELLED
        return Outcome.LOST

    # -- sweeps ----------------------------------------------------------------------------
    def _should_prune(self, trial: TrialRef, task_dir: Path) -> bool:
        """Report the run's epochs to its trial; whether the pruner stops it. A failure (Optuna, the
        database) is logged and the run goes on: pruning saves time, it must never fail a trial."""
        try:
            records, _ = read_epochs(task_dir)
            return self.sweeps.report_epochs(trial, records)
        except Exception as exc:
            log.warning("task %s: cannot report its epochs to sweep %s trial %s: %s", self.current.task_id if self.current else "?",
                        trial.name, trial.number, exc)
            return False

    def _settle_sweep(self, trial: TrialRef) -> None:
        """After a trial's task ended: tell its study and top the sweep up (:meth:`SweepStore.settle`).
        A failure is logged: the next trial end, or an idle worker, settles it again."""
        try:
            self.sweeps.settle(trial.sweep_id)
        except Exception as exc:
            log.warning("sweep %s: cannot settle it after trial %s: %s", trial.name, trial.number, exc)

    def _settle_sweeps_when_idle(self) -> None:
        """With nothing to claim, settle the running sweeps, at most every :data:`IDLE_SETTLE_SECONDS`."""
        now = time.monotonic()
        if self._sweeps_settled_at is not None and now - self._sweeps_settled_at < IDLE_SETTLE_SECONDS:
            return
        self._sweeps_settled_at = now
        try:
            self.sweeps.settle_running()
        except DatabaseError:
            raise  # the run loop waits for the database
        except Exception as exc:  # a bug in settling must not stop the worker: trials are ordinary tasks
            log.warning("cannot settle the running sweeps: %s: %s", type(exc).__name__, exc)

    def _fail(self, run: Claim, message: str, progress: dict[str, Any] | None = None, *, metrics: dict | None = None) -> Outcome:
        log.error("task %s failed: %s", run.task_id, message)
        self._end_heartbeat()
        self.queue.finish(run, Outcome.FAILED, error=message[:_MAX_ERROR_CHARS], progress=progress, metrics=metrics)
        return Outcome.FAILED

    def _end_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.end()

    # -- waking up -------------------------------------------------------------------------
    def _wait_for_work(self, seconds: float) -> bool:
        """Sleep until a NOTIFY arrives, ``seconds`` pass, or the worker stops. Returns whether notified."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step = min(remaining, 0.5)  # wake up often enough to notice stop()
            if not self.queue.listening:
                self._stop.wait(step)
            elif self.queue.wait_for_notify(step):
                return True
        return False
