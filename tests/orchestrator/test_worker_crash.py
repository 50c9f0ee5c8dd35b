"""A worker killed with SIGKILL mid-task, for real: a worker process running the LocalRunner with a
stub training entrypoint that hangs on its first run and succeeds on the next."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from fixtures.processes import orchestrator_env
from orchestrator_fakes import FakePublisher
from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner
from pytrain.spec import task_dir_name
from fixtures.processes import pid_alive
from test_local_runner import STUB, wait_for

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}

WORKER = """
import sys
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner
from pytrain.settings import Settings

settings = Settings()
runner = LocalRunner(settings, command=[sys.executable, sys.argv[1], "hang-then-succeed"], grace_seconds=1.0)
worker = Orchestrator(settings, runner=runner, publisher=lambda *a, **k: None)
worker.install_signal_handlers()
worker.run()
"""


def start_doomed_worker(settings, worker_id: str) -> subprocess.Popen:
    env = orchestrator_env(settings, worker_id, lease_seconds=1.5, heartbeat_seconds=0.2, poll_seconds=0.2)
    return subprocess.Popen([sys.executable, "-c", WORKER, STUB], env=env)


def kill_worker_mid_task(settings, queue: TaskQueue, task_id: int, worker_id: str) -> int:
    """Start a worker, wait until its run hangs, SIGKILL the worker. Returns the orphaned run's pid."""
    proc = start_doomed_worker(settings, worker_id)
    hanging = settings.model_tasks_dir / task_dir_name(task_id, "kitchen", queue.get(task_id).uid) / "hanging"
    try:
        wait_for(hanging.exists, timeout=30)
        assert queue.get(task_id)["worker_id"] == worker_id
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    orphan = int(hanging.read_text())
    assert pid_alive(orphan)  # its own session: the worker's death does not stop it
    return orphan


def rescuer(settings, engine, worker_id: str) -> Orchestrator:
    runner = LocalRunner(settings, command=[sys.executable, STUB, "hang-then-succeed"], grace_seconds=1.0)
    return Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher(), worker_id=worker_id)


def test_killed_workers_task_is_requeued_after_its_lease_and_run_by_another(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    orphan = kill_worker_mid_task(settings, queue, task_id, "doomed-host-gpu0")
    assert queue.get(task_id)["status"] == "running"
    wait_for(lambda: queue.requeue_lost(settings.max_attempts) != [], timeout=10)  # the 1.5 s lease runs out
    row = queue.get(task_id)
    assert (row["status"], row["attempts"]) == ("queued", 1)
    assert row["error"].startswith("worker doomed-host-gpu0 stopped renewing its lease")

    assert rescuer(settings, engine, "other-host-gpu0").run(exit_when_idle=True) == 1
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["worker_id"], row["version"]) == ("succeeded", 1, "other-host-gpu0", 1)
    wait_for(lambda: not pid_alive(orphan), timeout=5)  # the lost run never trained alongside the new one


def test_restarted_worker_kills_its_orphaned_run_and_requeues_the_task_at_once(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    orphan = kill_worker_mid_task(settings, queue, task_id, "host-gpu0")
    worker = rescuer(settings.model_copy(update={"lease_seconds": 600.0}), engine, "host-gpu0")
    worker.start()  # no waiting for the lease: it knows the task was its own
    wait_for(lambda: not pid_alive(orphan), timeout=5)
    row = queue.get(task_id)
    assert (row["status"], row["attempts"]) == ("queued", 1)
    assert row["error"] == "worker host-gpu0 restarted while running this task (run 1 of 3 lost); re-queued"
    assert worker.run(exit_when_idle=True) == 1
    assert queue.get(task_id)["status"] == "succeeded"
    assert not (Path(settings.model_tasks_dir) / task_dir_name(task_id, "kitchen", queue.get(task_id).uid) / "runner.pid").exists()


def test_sigterm_interrupts_the_run_requeues_the_task_and_exits(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    proc = start_doomed_worker(settings, "host-gpu0")
    task_dir = settings.model_tasks_dir / task_dir_name(task_id, "kitchen", queue.get(task_id).uid)
    try:
        wait_for((task_dir / "hanging").exists, timeout=30)
        orphan = int((task_dir / "hanging").read_text())
        grandchild = int((task_dir / "grandchild.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)
    assert row["error"] == "interrupted: worker host-gpu0 shut down during the run; re-queued"
    wait_for(lambda: not pid_alive(orphan) and not pid_alive(grandchild), timeout=5)  # nothing left running
