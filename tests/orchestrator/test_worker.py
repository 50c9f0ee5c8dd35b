"""The worker loop against a real PostgreSQL, with a fake runner and a fake publisher."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import pytest

from orchestrator_fakes import FakePublisher, FakeRunner
from pytrain.db import TaskQueue
from pytrain.errors import PublishError, SchemaOutOfDateError
from pytrain.orchestrator import Orchestrator, default_worker_id
from pytrain.runners import Outcome, RunResult
from pytrain.sources import read_manifest
from pytrain.spec import TaskSpec, task_dir_name

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}


def in_thread(worker: Orchestrator, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def test_worker_prepares_runs_publishes_and_records_task(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit({**TASK, "include_other": True, "seed": 3})
    runner, publisher = FakeRunner(), FakePublisher()
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=publisher)
    assert worker.run(exit_when_idle=True) == 1

    row = queue.get(task_id)
    assert row["status"] == "succeeded", row["error"]
    assert (row["version"], row["metrics"], row["error"], row["attempts"]) == (1, {"test_accuracy": 0.7}, None, 0)
    assert row["progress"] == {"event": "done", "epoch": 1, "epochs": 1, "train_loss": 0.5, "val_accuracy": 0.8, "test_accuracy": 0.7}
    assert row["worker_id"] == "test-worker"
    assert row["finished_at"] >= row["started_at"]
    task_dir = settings.model_tasks_dir / task_dir_name(task_id, "kitchen", row["uid"])
    assert row["task_dir"] == str(task_dir) and task_dir.name == f"task-{task_id}-kitchen-{row['uid'].hex[:8]}"

    spec = TaskSpec.load(task_dir)
    assert spec.class_list == ["Other", "cooking", "drinking"]
    assert (spec.architecture, spec.num_frames, spec.height, spec.width, spec.epochs, spec.seed) == ("tiny", 20, 224, 224, 50, 3)
    assert spec.split_counts == {
        "train": {"Other": 2, "cooking": 4, "drinking": 3},
        "val": {"Other": 1, "cooking": 1, "drinking": 1},
        "test": {"Other": 1, "cooking": 1, "drinking": 1},
    }
    manifest = read_manifest(task_dir)
    assert len(manifest) == 15
    assert all((settings.sources_dir / r.path).is_file() for r in manifest)

    [(published_dir, record)] = publisher.calls
    assert published_dir == task_dir
    assert (record["id"], record["model_name"], record["metrics"]) == (task_id, "kitchen", {"test_accuracy": 0.7})


def test_publish_error_fails_task_with_reason(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    publisher = FakePublisher(PublishError("model_repo is read-only", hint="check PYTRAIN_MODEL_REPO_DIR"))
    Orchestrator(settings, engine=engine, runner=FakeRunner(), publisher=publisher).run(exit_when_idle=True)
    row = queue.get(task_id)
    assert row["status"] == "failed"
    assert row["error"] == "publishing failed: model_repo is read-only (hint: check PYTRAIN_MODEL_REPO_DIR)"
    assert row["metrics"] == {"test_accuracy": 0.7}
    assert row["version"] is None


def test_task_that_does_not_resolve_fails_without_running(settings, engine, synced):
    queue = TaskQueue(engine)
    bad_class = queue.submit({**TASK, "classes": ["cooking", "sleeping"]})
    unregistered = queue.submit({**TASK, "sources": ["dataset1", "dataset9"]})
    one_class = queue.submit({**TASK, "classes": ["cooking"]})
    runner = FakeRunner()
    Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True)
    assert runner.runs == []
    errors = {task_id: queue.get(task_id)["error"] for task_id in (bad_class, unregistered, one_class)}
    assert all(queue.get(t)["status"] == "failed" for t in errors)
    assert errors[bad_class].startswith(f"cannot prepare task {bad_class}: class(es) ['sleeping'] have no folder")
    assert errors[unregistered].startswith(f"cannot prepare task {unregistered}: dataset(s) ['dataset9'] are not registered")
    assert "fewer than 2 classes" in errors[one_class]


def test_failed_run_is_recorded_with_message_and_log(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    Orchestrator(settings, engine=engine, runner=FakeRunner("fail"), publisher=FakePublisher()).run(exit_when_idle=True)
    row = queue.get(task_id)
    assert row["status"] == "failed"
    assert row["error"] == f"training exited with code 2: boom (log: {settings.model_tasks_dir / task_dir_name(task_id, 'kitchen', row['uid'])}/train.log)"


def test_a_run_that_finds_its_folder_locked_requeues_the_task_without_an_attempt_for_a_lease(settings, engine, synced):
    class LockedRunner(FakeRunner):
        def run(self, task, cancel, stop=None):
            self.runs.append(task.task_id)
            return RunResult(Outcome.LOCKED, 75, f"training did not start: task folder {task.task_dir} is in use by another run")

    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    worker = Orchestrator(settings, engine=engine, runner=LockedRunner(), publisher=FakePublisher())
    worker.start()
    try:
        assert worker.run_once()
        row = queue.get(task_id)
        assert (row.status, row.attempts, row.run_id, row.worker_id) == ("queued", 0, None, None)
        assert row.error.endswith(f"is in use by another run; re-queued until that run has ended (next try in {settings.lease_seconds:g} s)")
        [run] = queue.runs(task_id)
        assert (run.outcome, run.error) == ("requeued", row.error)
        assert row.lease_expires_at > run.finished_at  # not claimable until then
        assert worker.run_once() is False  # the backoff: not claimed again at once
        assert worker.runner.runs == [task_id]
    finally:
        worker.close()


def test_runner_crash_fails_the_task_not_the_worker(settings, engine, synced):
    queue = TaskQueue(engine)
    first, second = queue.submit(TASK), queue.submit(TASK)
    worker = Orchestrator(settings, engine=engine, runner=FakeRunner("raise"), publisher=FakePublisher())
    assert worker.run(exit_when_idle=True) == 2
    for task_id in (first, second):
        row = queue.get(task_id)
        assert row["status"] == "failed"
        assert row["error"].startswith("runner fake crashed: RuntimeError: bug in the runner")


def test_cancelling_a_running_task_stops_it_within_seconds(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner("wait")
    thread = in_thread(Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()), exit_when_idle=True)
    assert runner.started.wait(10)
    started = time.monotonic()
    assert queue.cancel(task_id) is True
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3  # heartbeat every 0.2 s
    row = queue.get(task_id)
    assert (row["status"], row["error"], row["lease_expires_at"]) == ("cancelled", "cancelled while running", None)
    assert row["finished_at"] is not None


def test_stop_requeues_the_running_task_without_counting_an_attempt(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner("wait")
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    thread = in_thread(worker)
    assert runner.started.wait(10)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)
    assert row["error"] == "interrupted: worker test-worker shut down during the run; re-queued"


@pytest.mark.parametrize("mode, write", [("wait", "requeue"), ("succeed", "success_transaction")])
def test_heartbeat_after_the_worker_records_the_outcome_does_not_report_the_run_lost(settings, engine, synced, caplog, mode, write):
    """A beat landing just after the worker's own final write (re-queue on SIGTERM, the success's
    commit) must not log "lost the run (lease expired)": the worker ended the run, no lease expired."""
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner(mode)
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    original = getattr(worker.queue, write)
    beats: list[tuple[threading.Thread, object]] = []

    def beat_now() -> None:  # the heartbeat thread waking up right after the write
        heartbeat = worker._heartbeat
        beater = threading.Thread(target=heartbeat.beat)
        beater.start()
        beats.append((beater, heartbeat))

    def write_then_beat(*args, **kwargs):
        result = original(*args, **kwargs)
        beat_now()
        return result

    @contextmanager
    def commit_then_beat(*args, **kwargs):
        with original(*args, **kwargs) as record:
            yield record
        beat_now()  # committed; the gate has not yet ended the heartbeat

    setattr(worker.queue, write, write_then_beat if mode == "wait" else commit_then_beat)
    caplog.set_level("INFO", logger="pytrain.orchestrator.worker")
    thread = in_thread(worker, exit_when_idle=True)
    assert runner.started.wait(10)
    if mode == "wait":
        worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    for beater, _ in beats:
        beater.join(10)
    assert [heartbeat.state for _, heartbeat in beats] == ["ok"]
    assert queue.get(task_id)["status"] == ("queued" if mode == "wait" else "succeeded")
    assert not [r for r in caplog.records if "no longer holds the task" in r.getMessage()]


def test_stop_with_finish_running_lets_the_task_finish_and_claims_no_more(settings, engine, synced):
    queue = TaskQueue(engine)
    first, second = queue.submit(TASK), queue.submit(TASK)
    runner = FakeRunner("succeed", hold=0.5)
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    thread = in_thread(worker)
    assert runner.started.wait(10)
    worker.stop(interrupt_running=False)
    thread.join(10)
    assert not thread.is_alive()
    assert (queue.get(first)["status"], queue.get(second)["status"]) == ("succeeded", "queued")


def test_idle_worker_wakes_on_notify_before_the_polling_interval(settings, engine, synced):
    slow_poll = settings.model_copy(update={"poll_seconds": 30.0})
    queue = TaskQueue(engine)
    runner = FakeRunner()
    worker = Orchestrator(slow_poll, engine=engine, runner=runner, publisher=FakePublisher())
    thread = in_thread(worker, max_tasks=1)
    time.sleep(1.0)  # the worker found nothing and is waiting
    submitted = time.monotonic()
    queue.submit(TASK)
    assert runner.started.wait(5)
    assert time.monotonic() - submitted < 2
    thread.join(10)
    assert not thread.is_alive()


def test_two_workers_racing_over_many_tasks_run_each_task_once(settings, engine, synced):
    queue = TaskQueue(engine)
    ids = [queue.submit({**TASK, "model_name": f"m{i}"}) for i in range(24)]
    runners = [FakeRunner(), FakeRunner()]
    workers = [
        Orchestrator(settings, engine=engine, runner=runners[i], publisher=FakePublisher(), worker_id=f"host{i}-gpu0")
        for i in range(2)
    ]
    threads = [in_thread(w, exit_when_idle=True) for w in workers]
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    runs = runners[0].runs + runners[1].runs
    assert sorted(runs) == ids  # every task run, none twice
    assert runners[0].runs and runners[1].runs  # both workers took part
    assert queue.counts() == {"succeeded": 24}
    by_worker = {t: queue.get(t)["worker_id"] for t in ids}
    assert {t for t, w in by_worker.items() if w == "host0-gpu0"} == set(runners[0].runs)


def test_worker_refuses_a_database_without_schema(settings, empty_database_url):
    from sqlalchemy import create_engine

    engine = create_engine(empty_database_url)
    try:
        worker = Orchestrator(settings, engine=engine, runner=FakeRunner(), publisher=FakePublisher())
        with pytest.raises(SchemaOutOfDateError) as info:
            worker.run(exit_when_idle=True)
        assert "pytrain db upgrade" in str(info.value)
    finally:
        engine.dispose()


def test_default_worker_id_is_stable_and_names_the_gpus():
    import socket

    assert default_worker_id("0,1") == f"{socket.gethostname()}-gpu0_1"
    assert default_worker_id(None) == f"{socket.gethostname()}-cpu"
    assert default_worker_id("0,1") == default_worker_id("0,1")


def test_heartbeat_logs_each_new_epoch_once(settings, engine, synced, caplog):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner("wait")
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    caplog.set_level(logging.INFO, logger="pytrain.orchestrator.progress")
    thread = in_thread(worker)
    try:
        assert runner.started.wait(10)
        time.sleep(settings.heartbeat_seconds * 5)  # several beats over the same epoch
    finally:
        worker.stop()
        thread.join(10)
    lines = [r.getMessage() for r in caplog.records if r.name == "pytrain.orchestrator.progress"]
    assert lines == [f"task {task_id}: epoch 1/9, loss 2.000"]  # pytrain.spec.format_progress


def test_running_task_shows_live_progress_from_the_heartbeat(settings, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner("wait")
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    thread = in_thread(worker)
    try:
        assert runner.started.wait(10)
        deadline = time.monotonic() + 5
        while queue.get(task_id)["progress"] == {} and time.monotonic() < deadline:
            time.sleep(0.05)
        row = queue.get(task_id)
        assert row["status"] == "running"
        assert row["progress"] == {"event": "epoch", "epoch": 1, "epochs": 9, "train_loss": 2.0}
    finally:
        worker.stop()
        thread.join(10)


def test_worker_that_lost_its_lease_stops_its_run_and_leaves_the_row_alone(settings, engine, synced):
    from sqlalchemy import text

    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = FakeRunner("wait")
    thread = in_thread(Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()), max_tasks=1)
    assert runner.started.wait(10)
    # Another worker sees the lease as expired (as if this worker had stalled) and re-queues the task.
    with engine.begin() as conn:
        conn.execute(text("UPDATE training_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": task_id})
    assert [row["id"] for row in queue.requeue_lost(3)] == [task_id]
    thread.join(10)
    assert not thread.is_alive()  # the run was stopped: it must not train alongside the next claim
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["finished_at"]) == ("queued", 1, None)


def test_worker_fails_a_task_whose_last_allowed_run_was_lost(settings, engine, synced):
    from sqlalchemy import text

    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    queue.claim("crashed-host-gpu0", 30)
    with engine.begin() as conn:  # two runs were lost before; the third just lost its lease
        conn.execute(text("UPDATE training_tasks SET attempts = 2, lease_expires_at = now() - interval '1 second' WHERE id = :id"),
                     {"id": task_id})
    runner = FakeRunner()
    assert Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True) == 0
    assert runner.runs == []
    row = queue.get(task_id)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["error"].endswith("(run 3 of 3 lost); giving up (PYTRAIN_MAX_ATTEMPTS reached)")


def test_sigterm_while_idle_stops_the_worker_and_says_no_task_was_running(settings, engine, caplog):
    import os
    import signal

    worker = Orchestrator(settings, engine=engine, runner=FakeRunner(), publisher=FakePublisher())
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    caplog.set_level("INFO", logger="pytrain.orchestrator.worker")
    try:
        worker.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs in the main thread between bytecodes
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert worker._stop.is_set()
    assert [r.getMessage() for r in caplog.records if "SIGTERM" in r.getMessage()] == ["SIGTERM: stopping (no task running)"]
    assert worker.run() == 0  # claims nothing once stopped
