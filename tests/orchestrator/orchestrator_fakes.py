"""Fakes for the worker tests: a runner that does not train and a publisher that publishes nothing.

Named ``orchestrator_fakes`` (not ``fakes``) so it cannot clash with another part's test helpers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from pytrain.runners import Outcome, RunResult

LAYOUT = {"dataset1": {"cooking_bread": 3, "cooking_soup": 3, "drinking_water": 5, "eating": 4}}


class FakeRunner:
    """A runner that does not train: it writes progress and metrics, or waits to be stopped.

    Args:
        mode: ``succeed``, ``wait`` (until cancel/stop), ``fail``, ``raise``.
        hold: seconds a ``succeed`` run takes.
    """

    name = "fake"

    def __init__(self, mode: str = "succeed", hold: float = 0.0) -> None:
        self.mode = mode
        self.hold = hold
        self.runs: list[int] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def run(self, task, cancel, stop=None):
        with self._lock:
            self.runs.append(task.task_id)
        self.started.set()
        if self.mode == "raise":
            raise RuntimeError("bug in the runner")
        if self.mode == "fail":
            return RunResult(Outcome.FAILED, 2, "training exited with code 2: boom", "boom")
        if self.mode == "wait":
            with open(task.task_dir / "progress.jsonl", "a") as progress:  # live progress for the heartbeat
                progress.write(json.dumps({"event": "epoch", "epoch": 1, "epochs": 9, "train_loss": 2.0}) + "\n")
            return self.wait_until_stopped(cancel, stop)
        with open(task.task_dir / "progress.jsonl", "a") as progress:
            progress.write(json.dumps({"event": "epoch", "epoch": 1, "epochs": 1, "train_loss": 0.5, "val_accuracy": 0.8}) + "\n")
            progress.write(json.dumps({"event": "done", "test_accuracy": 0.7}) + "\n")
        (task.task_dir / "metrics.json").write_text(json.dumps({"test_accuracy": 0.7}))
        if self.hold:
            time.sleep(self.hold)
        return RunResult(Outcome.SUCCEEDED, 0)

    @staticmethod
    def wait_until_stopped(cancel, stop=None, timeout: float = 30.0) -> RunResult:
        """The ``wait`` mode's run: until ``cancel`` (cancelled) or ``stop`` (interrupted) is set.

        Raises:
            AssertionError: neither was set within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cancel.is_set():
                return RunResult(Outcome.CANCELLED, -15, "cancelled")
            if stop is not None and stop.is_set():
                return RunResult(Outcome.INTERRUPTED, -15, "interrupted")
            time.sleep(0.02)
        raise AssertionError("the fake run was never stopped")

    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """A fake run leaves nothing behind (the worker calls this on start)."""
        return set()


@dataclass
class Published:
    version: int
    served_versions: tuple[int, ...] = ()
    serving_note: str = ""


class FakePublisher:
    """Records calls; "places" versions 1, 2, ... per model inside the worker's ``gate`` (which
    records the success, as :func:`pytrain.publish.publish_task` does); raises ``error`` when given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def __call__(self, task_dir, *, settings, task_record, gate):
        with self._lock:
            self.calls.append((task_dir, task_record))
            if self.error is not None:
                raise self.error
            published = Published(version=sum(1 for _, r in self.calls if r["model_name"] == task_record["model_name"]))
        with gate() as record:
            record(published)
        return published
