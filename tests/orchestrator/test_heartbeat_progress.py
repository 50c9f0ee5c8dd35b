"""A ``progress.jsonl`` the heartbeat cannot read never stops the heartbeat (and so never fences a
healthy run): invalid UTF-8 is skipped like any bad line, an unreadable file is a rate-limited
warning and the lease is still renewed.

A real PostgreSQL and the real worker; the runner is a fake that spoils ``progress.jsonl`` and
waits. Lease 3 s, heartbeat 0.2 s, so the fence fires 2.6 s after the last renewal; each test
runs about 4 s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator_fakes import FakePublisher, FakeRunner
from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.spec import PROGRESS

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}
EPOCH = {"event": "epoch", "epoch": 1, "epochs": 9, "train_loss": 2.0}


class SpoilingRunner(FakeRunner):
    """Writes ``progress.jsonl`` with ``spoil(path)``, then waits until cancelled or stopped."""

    def __init__(self, spoil: Callable[[Path], None]) -> None:
        super().__init__("wait")
        self.spoil = spoil

    def run(self, task, cancel, stop=None):
        self.spoil(Path(task.task_dir) / PROGRESS)
        self.started.set()
        return self.wait_until_stopped(cancel, stop, timeout=60)


def invalid_utf8(path: Path) -> None:
    path.write_bytes(json.dumps(EPOCH).encode() + b"\n" + b'{"event": "epoch", "epoch": 2, "note": "\xff\xfe"}\n')


def a_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("spoil", [invalid_utf8, a_directory])
def test_a_bad_progress_file_does_not_stop_the_heartbeat(settings, engine, synced, caplog, spoil):
    settings = settings.model_copy(update={"lease_seconds": 3.0, "heartbeat_seconds": 0.2})
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = SpoilingRunner(spoil)
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    caplog.set_level(logging.WARNING, logger="pytrain.orchestrator")
    thread = threading.Thread(target=worker.run, kwargs={"max_tasks": 1}, daemon=True)
    thread.start()
    try:
        assert runner.started.wait(10)
        first = queue.get(task_id)["heartbeat_at"]
        # renewals go on past the fence (a dead heartbeat would have fenced the run by then)
        deadline = time.monotonic() + 30
        while (queue.get(task_id)["heartbeat_at"] - first).total_seconds() < settings.fence_seconds + 0.5:
            assert time.monotonic() < deadline, "the lease stopped being renewed"
            assert thread.is_alive()
            time.sleep(0.1)
        row = queue.get(task_id)
        assert (row["status"], worker._heartbeat.state) == ("running", "ok")
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert queue.get(task_id)["status"] == "queued"  # interrupted by the stop, re-queued: not fenced, not failed
    warnings = [r.getMessage() for r in caplog.records if "cannot read the run's progress" in r.getMessage()]
    if spoil is invalid_utf8:
        assert row["progress"] == EPOCH  # the line with bad bytes is skipped, the good one is read
        assert warnings == []
    else:
        assert len(warnings) == 1, warnings  # about 15 beats, one warning (at most one per minute)
        assert f"task {task_id}: cannot read the run's progress in " in warnings[0] and "IsADirectoryError" in warnings[0]
