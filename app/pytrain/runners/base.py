"""The runner interface: how the orchestrator hands a prepared task to something that trains it.

A runner runs ``python -m pytrain.training --task-dir <task_dir> --sources-root <root>`` somewhere
(a local subprocess, an NGC container) and blocks until it ends. It does not touch the database:
the orchestrator's heartbeat thread renews the lease, reads ``progress.jsonl`` from the task folder
into the task row and sets ``cancel`` when the task is cancelled. A runner must return within a few
seconds of ``cancel`` being set, and must leave nothing running behind it in every case.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol, runtime_checkable

from pytrain.spec import TaskSpec


class Outcome(str, Enum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"  # the worker is shutting down; the task goes back to the queue


@dataclass(frozen=True)
class PreparedTask:
    """A claimed task whose folder holds ``task.json`` and ``manifest.csv``.

    Attributes:
        spec: the task spec written to ``task_dir``.
        task_dir: absolute path of ``model_tasks/<task_dir_name>/`` on this host.
        sources_root: absolute path of the sources root on this host.
        timeout_seconds: kill the run after this long; ``None`` for no limit.
        gpus: GPU ids for the run (``"0,1"``, ``"all"``) or ``None`` for CPU.
    """

    spec: TaskSpec
    task_dir: Path
    sources_root: Path
    timeout_seconds: float | None = None
    gpus: str | None = None

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
        message: one readable line for the task row's ``error`` (empty on success).
        stderr_tail: last lines of the run's output, for errors.
    """

    outcome: Outcome
    exit_code: int | None = None
    message: str = ""
    stderr_tail: str = ""
    details: dict = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    """Runs one prepared task to its end. Implementations: ``LocalRunner``, ``DockerRunner``."""

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
