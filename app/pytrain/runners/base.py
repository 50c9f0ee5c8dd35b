"""The runner contract: how the orchestrator hands a prepared task to something that trains it.

A runner runs ``python -m pytrain.training --task-dir <task_dir> --sources-root <root>`` somewhere
(a local subprocess, an NGC container) and blocks until it ends. It does not touch the database:
the orchestrator's heartbeat thread renews the lease, reads ``progress.jsonl`` from the task folder
into the task row and sets ``cancel`` when the task is cancelled. A runner must return within a few
seconds of ``cancel`` being set, and must leave nothing running behind it in every case.

What every runner shares lives here, written once:

- :class:`Runner`, the protocol (``name``, ``run``, ``cleanup_orphans``);
- :func:`supervise`, the loop that watches a started run (:class:`RunHandle`) for its end,
  ``cancel``, ``stop`` and the timeout, stops it, and builds the :class:`RunResult`;
- :func:`run_result`, the one mapping from how a run ended to an :class:`~pytrain.outcome.Outcome`
  and a message;
- :func:`parse_gpus`, the pure parser of ``PYTRAIN_GPUS`` / ``--gpus`` (:class:`GpuSelection`);
- :func:`torchrun_args`, how several GPUs start several training ranks;
- :func:`error_with_tail`, the task row's ``error``: the message, then the end of the output;
- :func:`is_secret_variable`, the environment variables a training process never sees, and
  :func:`training_environment`, what a training process started on a host inherits;
- :func:`tail` and :func:`oom_marker`, the end of a run's log and the out-of-memory evidence in it.

A new runner (Slurm, Ray, Kubernetes) implements :class:`RunHandle` for its kind of run, calls
:func:`supervise` from ``run`` and registers a factory in :data:`pytrain.runners.RUNNERS`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pytrain.errors import ConfigurationError, RunnerError
from pytrain.outcome import Outcome
from pytrain.settings import Settings
from pytrain.spec import TaskSpec
from pytrain.training.run_lock import RUN_LOCKED_EXIT_CODE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTask:
    """A claimed task whose folder holds ``task.json`` and ``manifest.csv``.

    Attributes:
        spec: the task spec written to ``task_dir``.
        task_dir: absolute path of ``model_tasks/<task_dir_name>/`` on this host.
        sources_root: absolute path of the sources root on this host.
        timeout_seconds: kill the run after this long; ``None`` for no limit.
        gpus: GPU ids for the run (``"0,1"``, ``"all"``) or ``None`` for CPU.
        run_id: the ``task_runs`` row of this run, when a worker claimed it (a Ray job's
            submission id carries it); ``None`` for a run started by hand.
    """

    spec: TaskSpec
    task_dir: Path
    sources_root: Path
    timeout_seconds: float | None = None
    gpus: str | None = None
    run_id: int | None = None

    @property
    def task_id(self) -> int:
        """The ``training_tasks`` row id."""
        return self.spec.task_id

    @property
    def log_path(self) -> Path:
        """``<task_dir>/train.log``: the run's stdout and stderr."""
        from pytrain.spec import TRAIN_LOG

        return self.task_dir / TRAIN_LOG


@dataclass(frozen=True)
class RunResult:
    """What a runner reports when a run ends.

    Attributes:
        outcome: how it ended.
        exit_code: process/container exit code (``None`` if it never started).
        message: one readable line for the task row's ``error`` (empty on success); built by
            :func:`run_result`.
        stderr_tail: last lines of the run's output, for errors; the worker puts them into the
            row's ``error`` after the message (:func:`error_with_tail`).
        details: runner facts for logs and the CLI (``seconds``, ``log``, ``image``, ``container``).
    """

    outcome: Outcome
    exit_code: int | None = None
    message: str = ""
    stderr_tail: str = ""
    details: dict = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    """Runs one prepared task to its end. Implementations: ``LocalRunner``, ``DockerRunner``.

    Attributes:
        name: the name it is registered under (``PYTRAIN_RUNNER``); shown in errors and logs.
    """

    name: str

    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Run ``task`` and block until it ends.

        Args:
            task: the prepared task.
            cancel: set by the orchestrator when the task was cancelled; the runner stops the run
                within seconds and returns ``Outcome.CANCELLED``.
            stop: set when the worker shuts down and the task should be interrupted and re-queued
                (``Outcome.INTERRUPTED``); ``None`` means "let it finish".

        Returns:
            The run's :class:`RunResult`. Never raises for a failed *training*; raises
            :class:`pytrain.errors.RunnerError` only when the runner itself cannot work.
        """
        ...

    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """Stop and remove runs left behind by a crashed worker (called once when a worker starts).

        Args:
            active_task_ids: tasks that other workers run right now; their runs are left alone.

        Returns:
            The ids of the tasks whose runs were killed or removed (empty when there were none).

        Raises:
            RunnerError: the runner cannot look for its runs (e.g. the Docker engine is down).
        """
        ...


@runtime_checkable
class ClusterRunner(Runner, Protocol):
    """A runner whose runs may span several nodes and outlive their worker (a Slurm job).

    Two things differ from a :class:`Runner`, and the worker asks ``isinstance(runner,
    ClusterRunner)`` for them: only a cluster runner takes tasks with ``nodes`` > 1
    (:func:`check_nodes`); and a restarted worker passes the tasks it still held when it crashed
    to ``cleanup_orphans`` as active too, so their runs go on, and the next ``run`` of each
    re-attaches to its run (:meth:`find_run`) instead of starting a second one.
    """

    def find_run(self, task: PreparedTask) -> str | None:
        """The id of a live run of ``task`` (left by a crashed worker) that ``run`` would re-attach to, or ``None``."""
        ...


def check_nodes(runner: Runner, task: PreparedTask) -> None:
    """Refuse a task with ``nodes`` > 1 on a runner that trains on one host.

    Raises:
        ConfigurationError: ``task.spec.nodes`` > 1 and ``runner`` is not a :class:`ClusterRunner`.
    """
    nodes = task.spec.nodes
    if nodes > 1 and not isinstance(runner, ClusterRunner):
        raise ConfigurationError(
            f"task {task.task_id} asks for nodes = {nodes}, but the {runner.name} runner trains on one host",
            hint="set nodes = 1, or run it with PYTRAIN_RUNNER=slurm or ray",
        )


class RunHandle(Protocol):
    """One started run (a process group, a container) as :func:`supervise` sees it.

    Attributes:
        subject: what ran, as the failure message names it (``"training"``, ``"training container"``).
    """

    subject: str

    def wait(self, seconds: float) -> int | None:
        """Wait up to ``seconds`` for the run to end; its exit code, or ``None`` while it runs."""
        ...

    def stop(self, grace_seconds: float) -> None:
        """Ask the run to end (SIGTERM), kill it after ``grace_seconds``; return once it has ended."""
        ...

    def output_tail(self) -> str:
        """The last lines of the run's stderr (or of its combined output), for the task row's ``error``."""
        ...

    def oom_evidence(self, exit_code: int | None) -> str | None:
        """Why the run looks killed for lack of memory (``"limit 16g"``), or ``None`` when it does not."""
        ...


def poll_until_ended(look: Callable[[], int | None], seconds: float, poll_seconds: float) -> int | None:
    """A cluster run's :meth:`RunHandle.wait`: call ``look()`` (the run's exit code, or ``None``
    while it runs) every ``poll_seconds`` until it answers or ``seconds`` have passed; always once."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        code = look()
        if code is not None or time.monotonic() >= deadline:
            return code
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


class ClusterJob:
    """What the :class:`RunHandle` of a cluster's job (a Slurm job, a Ray job) shares: it reads the
    job's state from the cluster every ``poll_seconds``; a cluster that does not answer for a while
    (its controller restarts) is waited out, and a job the cluster has forgotten ends the wait.

    A subclass sets ``subject`` and implements :meth:`_read` (the job's description, with an
    ``ended`` property) and :meth:`_exit_code`.

    Attributes:
        info: the job as last read (``None`` before the first read).
        gone: the cluster no longer knows the job.
    """

    def __init__(self, subject: str, poll_seconds: float) -> None:
        self.subject = subject
        self.poll_seconds = poll_seconds
        self.info = None
        self.gone = False

    def _read(self):
        """The job's description, or ``None`` when the cluster does not know it; ``RunnerError`` when it does not answer."""
        raise NotImplementedError

    def _exit_code(self, info) -> int:
        """The exit code of an ended job."""
        raise NotImplementedError

    def _look(self) -> int | None:
        """The job's exit code once it has ended (1 when the cluster forgot it), else ``None``."""
        try:
            info = self._read()
        except RunnerError as exc:  # the controller restarts: the job goes on; look again next poll
            log.warning("%s: cannot read its state (%s); still waiting", self.subject, exc)
            return None
        if info is None:
            self.gone = True
            return 1
        self.info = info
        return self._exit_code(info) if info.ended else None

    def wait(self, seconds: float) -> int | None:
        """:meth:`RunHandle.wait`: look every ``poll_seconds`` for ``seconds`` at most."""
        return poll_until_ended(self._look, seconds, self.poll_seconds)


def stop_orphan_runs(runs: Mapping[str, int], active_task_ids: set[int], *, stop: Callable[[str], None],
                     wait_gone: Callable[[set[str], float], set[str]], gone_seconds: float, what: str) -> set[int]:
    """A cluster runner's :meth:`Runner.cleanup_orphans`: stop a crashed worker's live runs
    (``runs``: run id -> task id, the worker's own) whose tasks are not in ``active_task_ids``, then
    wait until they are gone (``wait_gone(ids, seconds)``, at most ``gone_seconds``).

    Args:
        what: the kind of run, for the log (``"Slurm job"``, ``"Ray job"``).

    Returns:
        The ids of the tasks whose runs were stopped.
    """
    stopped = {run: task_id for run, task_id in runs.items() if task_id not in active_task_ids}
    for run, task_id in stopped.items():
        log.warning("task %s: stopping %s %s left by a crashed worker", task_id, what, run)
        stop(run)
    if stopped:  # return once they are gone, as the other runners do (a cluster's stop only asks)
        wait_gone(set(stopped), gone_seconds)
    return set(stopped.values())


def _stop_reason(cancel: threading.Event, stop: threading.Event | None, started: float, timeout_seconds: float | None) -> Outcome | None:
    """Whether the run must be stopped now, and why (cancel wins over stop, stop over the timeout)."""
    if cancel.is_set():
        return Outcome.CANCELLED
    if stop is not None and stop.is_set():
        return Outcome.INTERRUPTED
    if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
        return Outcome.TIMED_OUT
    return None


def supervise(
    handle: RunHandle,
    task: PreparedTask,
    cancel: threading.Event,
    stop: threading.Event | None,
    *,
    timeout_seconds: float | None,
    grace_seconds: float,
    poll_seconds: float,
    details: dict | None = None,
) -> RunResult:
    """Watch a started run until it ends, stopping it on ``cancel``, ``stop`` or the timeout.

    The run is checked every ``poll_seconds``; once it must stop, ``handle.stop(grace_seconds)``
    ends it, so the call returns within ``poll_seconds + grace_seconds`` (plus the engine's own
    latency) of ``cancel`` being set. Removing what is left of the run (a container, stray
    children) is the runner's job, in a ``finally`` around this call.

    Args:
        handle: the started run.
        task: the task it runs (for its id in log lines).
        cancel, stop: see :meth:`Runner.run`.
        timeout_seconds: stop the run after this long (seconds); ``None`` for no limit.
        grace_seconds: time between SIGTERM and SIGKILL when stopping it (seconds).
        poll_seconds: how often ``cancel``, ``stop`` and the timeout are checked (seconds).
        details: the runner's own facts for :attr:`RunResult.details`; ``seconds`` (the run's
            wall time) is added.

    Returns:
        The run's :class:`RunResult` (see :func:`run_result`).
    """
    started = time.monotonic()
    stopped_by: Outcome | None = None
    exit_code = handle.wait(0)
    while exit_code is None:
        stopped_by = _stop_reason(cancel, stop, started, timeout_seconds)
        if stopped_by is not None:
            log.info("task %s: stopping the run (%s)", task.task_id, stopped_by.value)
            handle.stop(grace_seconds)
            exit_code = handle.wait(0)
            break
        exit_code = handle.wait(poll_seconds)
    details = {**(details or {}), "seconds": round(time.monotonic() - started, 3)}
    if stopped_by is None and exit_code == 0:
        return run_result(None, 0, subject=handle.subject, details=details)
    return run_result(
        stopped_by, exit_code, subject=handle.subject, tail=handle.output_tail(),
        oom_evidence=handle.oom_evidence(exit_code), timeout_seconds=timeout_seconds, details=details,
    )


def run_result(
    stopped_by: Outcome | None,
    exit_code: int | None,
    *,
    subject: str = "training",
    tail: str = "",
    oom_evidence: str | None = None,
    timeout_seconds: float | None = None,
    details: dict | None = None,
) -> RunResult:
    """The one mapping from how a run ended to its :class:`RunResult`.

    In order: stopped by the runner -> ``CANCELLED`` / ``INTERRUPTED`` / ``TIMED_OUT``; exit code 0
    -> ``SUCCEEDED``; :data:`~pytrain.training.run_lock.RUN_LOCKED_EXIT_CODE` (another run holds
    the task folder) -> ``LOCKED``; evidence of an out-of-memory kill -> ``OUT_OF_MEMORY`` (with a
    hint); anything else -> ``FAILED`` naming the exit code and the last line of ``tail``.

    Args:
        stopped_by: ``CANCELLED``, ``INTERRUPTED`` or ``TIMED_OUT`` when the runner stopped the run;
            ``None`` when it ended by itself.
        exit_code: its exit code (negative: killed by that signal); ``None`` if unknown.
        subject: what ran, for the failure message (``"training"``, ``"training container"``).
        tail: the last lines of its output (empty on success).
        oom_evidence: what shows it ran out of memory (``"limit 16g"``), or ``None``.
        timeout_seconds: the limit it exceeded, for ``TIMED_OUT`` (seconds).
        details: passed through to :attr:`RunResult.details`.
    """
    details = dict(details or {})
    if stopped_by is Outcome.CANCELLED:
        return RunResult(Outcome.CANCELLED, exit_code, "cancelled", tail, details)
    if stopped_by is Outcome.INTERRUPTED:
        return RunResult(Outcome.INTERRUPTED, exit_code, "interrupted: the worker is shutting down", tail, details)
    if stopped_by is Outcome.TIMED_OUT:
        limit = f"{timeout_seconds:g} s" if timeout_seconds is not None else "its time limit"
        return RunResult(Outcome.TIMED_OUT, exit_code, f"timed out after {limit} (PYTRAIN_TASK_TIMEOUT_SECONDS)", tail, details)
    if exit_code == 0:
        return RunResult(Outcome.SUCCEEDED, 0, "", "", details)
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    if exit_code == RUN_LOCKED_EXIT_CODE:
        held = last.removeprefix("error: ") or "another run holds the task folder"
        return RunResult(Outcome.LOCKED, exit_code, f"{subject} did not start: {held}", tail, details)
    if oom_evidence:
        message = f"out of memory ({oom_evidence}); lower batch_size, num_frames or the frame size"
        return RunResult(Outcome.OUT_OF_MEMORY, exit_code, message, tail, details)
    ended = f"exited with code {exit_code}" if exit_code is not None else "ended without an exit code"
    return RunResult(Outcome.FAILED, exit_code, f"{subject} {ended}" + (f": {last}" if last else ""), tail, details)


def error_with_tail(message: str, tail: str, *, max_chars: int) -> str:
    """The task row's ``error``: ``message`` first, then as much of the end of ``tail`` as fits.

    The end of the output is what explains a failure (the exception is printed last), so a tail
    too long for ``max_chars`` loses its first lines, never the message. A tail the message
    already quotes whole (a one-line stderr) is not repeated.

    Args:
        message: one readable line.
        tail: the run's last output lines (may be empty).
        max_chars: the most characters the result may have.
    """
    tail = tail.strip()
    if not tail or tail in message:
        return message[:max_chars]
    room = max_chars - len(message) - 1
    if room <= 0:
        return message[:max_chars]
    return f"{message}\n{tail[-room:]}"


#: ``_``-separated parts of a variable name that make it a secret (``NGC_API_KEY``, ``HF_TOKEN``,
#: ``DB_PASSWORD``, ``PYTRAIN_TRITON_CONTROL_KEY``, ``MY_SECRET``).
SECRET_NAME_PARTS = frozenset({"KEY", "KEYS", "TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS", "PASSWD",
                               "PASSPHRASE", "CREDENTIAL", "CREDENTIALS", "DSN"})
#: Name prefixes of connection and cloud-credential variables: libpq's ``PG*`` (``PGPASSWORD``,
#: ``PGHOST``, ``PGUSER``...), ``AWS_*``, ``AZURE_*``, ``GOOGLE_APPLICATION_CREDENTIALS``.
SECRET_NAME_PREFIXES = ("PG", "AWS_", "AZURE_", "GOOGLE_APPLICATION_CREDENTIALS")
#: Name suffixes of database URLs (``DATABASE_URL``, ``PYTRAIN_DATABASE_URL``, ``PYTRAIN_TEST_DATABASE_URL``).
SECRET_NAME_SUFFIXES = ("DATABASE_URL", "DATABASE_URI")


def is_secret_variable(name: str) -> bool:
    """Whether a training process must not see the environment variable ``name`` (the one rule).

    Training needs neither the database nor Triton nor any credential, so every variable that
    looks like one is withheld: a name part in :data:`SECRET_NAME_PARTS`, a prefix in
    :data:`SECRET_NAME_PREFIXES` or a suffix in :data:`SECRET_NAME_SUFFIXES` (case-insensitive).
    """
    upper = name.upper()
    return (not SECRET_NAME_PARTS.isdisjoint(upper.split("_"))
            or upper.startswith(SECRET_NAME_PREFIXES) or upper.endswith(SECRET_NAME_SUFFIXES))


def without_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` less every variable :func:`is_secret_variable` names."""
    return {name: value for name, value in environment.items() if not is_secret_variable(name)}


def check_no_secrets(environment: Mapping[str, str], where: str) -> dict[str, str]:
    """``environment`` as a dict, when none of its variables is a secret (:func:`is_secret_variable`).

    Raises:
        ConfigurationError: names the secret-looking variables (never their values) and ``where``.
    """
    secrets = sorted(name for name in environment if is_secret_variable(name))
    if secrets:
        raise ConfigurationError(
            f"{where}: {', '.join(secrets)} look like secrets, which a training process never gets",
            hint="training needs no database, Triton or cloud credentials; leave these variables out",
        )
    return dict(environment)


def training_environment(settings: Settings) -> dict[str, str]:
    """The environment a training process started on a host (the local runner's child, a Slurm
    job) inherits: this process's, less every secret-looking and database variable
    (:func:`is_secret_variable`: training needs neither the database nor
    Triton nor credentials), unbuffered output, ``TORCH_HOME`` = the weights folder
    (``settings.torch_home``), from which ``pretrained`` tasks load, and the shared clip cache
    (:func:`clip_cache_environment`)."""
    env = without_secrets(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TORCH_HOME"] = str(settings.torch_home)
    env.update(clip_cache_environment(settings))
    return env


def clip_cache_environment(settings: Settings, folder: str | None = None) -> dict[str, str]:
    """The variables that point training at the host's shared clip cache
    (:mod:`pytrain.training.clip_cache`): ``settings.clip_cache_dir`` (or ``folder``, where a
    container sees it) and its cap."""
    from pytrain.training.clip_cache import CACHE_DIR_ENV, CACHE_GB_ENV

    return {CACHE_DIR_ENV: folder or str(settings.clip_cache_dir), CACHE_GB_ENV: repr(settings.clip_cache_gb)}


#: What PyTorch and Python write when an allocation fails (the local and slurm runners look for them).
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "DefaultCPUAllocator: can't allocate memory")


def oom_marker(output: str, markers: Sequence[str] = OOM_MARKERS) -> str | None:
    """The first of ``markers`` that ``output`` (a run's log tail) contains, or ``None``."""
    return next((marker for marker in markers if marker in output), None)


def tail(path: Path, *, lines: int = 20, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


#: The training entrypoint every runner starts: ``python -m pytrain.training``.
TRAINING_MODULE = "pytrain.training"


def torchrun_args(nproc: int | None) -> list[str] | None:
    """torchrun's arguments that start :data:`TRAINING_MODULE` once per GPU of this host, or ``None``
    when one process trains (one GPU or the CPU). Written once for every runner: the docker runner
    puts them after ``torchrun``, the local runner after ``python -m torch.distributed.run``.

    ``--standalone`` is a single-node rendezvous on a free local port, so nothing else is set up.

    Args:
        nproc: :attr:`GpuSelection.count`: ranks to start, ``-1`` for every GPU (torchrun's
            ``gpu``), ``None`` for CPU.
    """
    if nproc is None or nproc == 1:
        return None
    per_node = "gpu" if nproc < 0 else str(nproc)
    return ["--standalone", f"--nproc_per_node={per_node}", "-m", TRAINING_MODULE]


_GPU_ID = re.compile(r"\d+|GPU-[0-9a-f-]+", re.IGNORECASE)


@dataclass(frozen=True)
class GpuSelection:
    """The GPUs a run may use, parsed from ``PYTRAIN_GPUS`` / ``--gpus`` by :func:`parse_gpus`.

    Attributes:
        ids: device indexes or UUIDs (``("0", "1")``); empty for "all" and for none.
        all: every GPU the host has.
    """

    ids: tuple[str, ...] = ()
    all: bool = False

    @property
    def none(self) -> bool:
        """No GPU: run on the CPU."""
        return not self.all and not self.ids

    @property
    def count(self) -> int | None:
        """How many processes to start: ``len(ids)``, ``-1`` for all (unknown until the run starts), ``None`` for CPU."""
        if self.all:
            return -1
        return len(self.ids) or None


def parse_gpus(gpus: str | None) -> GpuSelection:
    """Parse ``"0,1"`` / ``"GPU-<uuid>"`` / ``"all"`` / ``"none"`` / ``None`` (pure: no Docker, no CUDA).

    Raises:
        ConfigurationError: ``gpus`` is neither ``all``/``none`` nor a comma-separated list of ids.
    """
    text = str(gpus).strip().lower() if gpus is not None else ""
    if text in ("", "none"):
        return GpuSelection()
    if text == "all":
        return GpuSelection(all=True)
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    if not ids or not all(_GPU_ID.fullmatch(part) for part in ids):
        raise ConfigurationError(f"invalid GPU list {gpus!r}", hint="use 'all', or ids like '0' or '0,1' (PYTRAIN_GPUS / --gpus)")
    return GpuSelection(ids=ids)
