"""Runs of a task (``task_runs``), the run id as fencing token, ``retry``, and the worker id lock,
on a real PostgreSQL. Budget: under 1 s per test (about 10 s for the file)."""

from __future__ import annotations

import os
import socket

import pytest
from sqlalchemy import text

from pytrain.db import TaskQueue, WorkerLock
from pytrain.errors import ConfigurationError, TaskNotFoundError
from pytrain.outcome import Outcome

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}


def expire_lease(engine, task_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE training_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": task_id})


def test_claim_starts_a_run_and_stores_its_id_in_the_task(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    row = queue.get(task_id)
    assert row.run_id == run.run_id
    [only] = queue.runs(task_id)
    assert (only.id, only.task_id, only.worker_id, only.outcome, only.finished_at) == (run.run_id, task_id, "host-a", None, None)
    assert only.started_at == row.started_at


def test_a_stale_run_can_neither_renew_nor_finish_nor_move_the_folder(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    stale = queue.claim("host-a", 30)
    expire_lease(engine, task_id)
    queue.requeue_lost(max_attempts=3)
    fresh = queue.claim("host-a", 30)  # the same worker id: only the run id tells the runs apart
    assert fresh.run_id != stale.run_id
    assert queue.heartbeat(stale, 30) == "lost"
    assert queue.set_task_dir(stale, "/elsewhere") is False
    assert queue.finish(stale, "failed", error="stale") is False
    assert queue.requeue(stale, "stale") is False
    assert queue.finish_succeeded(stale, publish=lambda: pytest.fail("a stale run must not publish")) == "lost"
    row = queue.get(task_id)
    assert (row.status, row.run_id, row.error, row.task_dir) == ("running", fresh.run_id, None, None)
    assert queue.heartbeat(fresh, 30) == "ok" and queue.set_task_dir(fresh, "/here") is True


def test_requeue_lost_ends_the_lost_run_as_requeued_and_the_last_as_failed(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    for _ in range(2):
        queue.claim("host-a", 30)
        expire_lease(engine, task_id)
        queue.requeue_lost(max_attempts=2)
    runs = queue.runs(task_id)
    assert [r.outcome for r in runs] == ["requeued", "failed"]
    assert runs[0].error.startswith("worker host-a stopped renewing its lease") and runs[0].error.endswith("re-queued")
    assert runs[1].error.endswith("giving up (PYTRAIN_MAX_ATTEMPTS reached)")
    assert all(r.finished_at is not None for r in runs)
    row = queue.get(task_id)
    assert (row.status, row.run_id) == ("failed", runs[1].id)


def test_a_run_cancelled_while_its_worker_is_gone_ends_when_the_lease_expires(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    queue.claim("host-a", 30)
    queue.cancel(task_id)  # the worker never comes back to record it
    queue.requeue_lost(max_attempts=3)
    assert [r.outcome for r in queue.runs(task_id)] == [None]  # its lease runs: the worker may still record it
    expire_lease(engine, task_id)
    queue.requeue_lost(max_attempts=3)
    [run] = queue.runs(task_id)
    assert (run.outcome, run.error) == ("cancelled", "cancelled while running; worker host-a stopped renewing its lease")
    row = queue.get(task_id)
    assert (row.status, row.lease_expires_at) == ("cancelled", None) and row.finished_at is not None


def test_finish_and_requeue_end_the_runs_row(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    first = queue.claim("host-a", 30)
    assert queue.requeue(first, "interrupted: shutting down")
    assert queue.get(task_id).run_id is None  # a queued task has no current run
    second = queue.claim("host-b", 30)
    assert queue.finish(second, "failed", error="boom")
    assert [(r.worker_id, r.outcome, r.error) for r in queue.runs(task_id)] == [
        ("host-a", "requeued", "interrupted: shutting down"), ("host-b", "failed", "boom")]


def test_success_is_published_and_recorded_in_one_locked_transaction(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    seen = []

    def publish():
        # While publishing, the row is locked: another session cannot re-queue or cancel it.
        with engine.connect() as other:
            other.execute(text("SET lock_timeout = '100ms'"))
            with pytest.raises(Exception, match="lock timeout"):
                other.execute(text("UPDATE training_tasks SET status = 'cancelled' WHERE id = :id"), {"id": task_id})
        seen.append(queue.get(task_id).status)  # another connection: the success is not visible yet
        return 4, {"test_accuracy": 0.9, "served_versions": [4]}

    assert queue.finish_succeeded(run, publish, metrics={"test_accuracy": 0.9}) == "succeeded"
    assert seen == ["running"]
    row = queue.get(task_id)
    assert (row.status, row.version, row.metrics) == ("succeeded", 4, {"test_accuracy": 0.9, "served_versions": [4]})
    [ended] = queue.runs(task_id)
    assert (ended.outcome, ended.version, ended.error) == ("succeeded", 4, None)


def test_a_task_cancelled_before_publishing_is_recorded_cancelled_unpublished(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    queue.cancel(task_id)
    assert queue.finish_succeeded(run, publish=lambda: pytest.fail("must not publish")) == "cancelled"
    assert queue.get(task_id).status == "cancelled"
    assert [(r.outcome, r.error) for r in queue.runs(task_id)] == [("cancelled", "cancelled before publishing")]


def test_a_failing_publish_records_nothing_and_releases_the_lock(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    with pytest.raises(RuntimeError, match="disk full"):
        queue.finish_succeeded(run, publish=lambda: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert queue.finish(run, "failed", error="publishing failed: disk full")  # not blocked by a leftover lock
    assert [r.outcome for r in queue.runs(task_id)] == ["failed"]


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_queues_a_failed_or_cancelled_task_as_a_new_run_keeping_its_history(engine, status):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    if status == "failed":
        expire_lease(engine, task_id)
        queue.requeue_lost(max_attempts=1)
    else:
        queue.cancel(task_id)
        queue.finish(run, "cancelled", error="cancelled while running")
    assert queue.get(task_id).status == status
    queue.retry(task_id)
    row = queue.get(task_id)
    assert (row.status, row.attempts, row.error, row.finished_at, row.run_id, row.worker_id) == ("queued", 0, None, None, None, None)
    again = queue.claim("host-b", 30)
    assert [(r.worker_id, r.outcome) for r in queue.runs(task_id)] == [("host-a", status), ("host-b", None)]
    assert again.run_id == queue.runs(task_id)[1].id


def test_retry_refuses_a_cancelled_task_whose_run_is_still_stopping_until_the_run_ended(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    queue.cancel(task_id)  # the worker has not stopped the run yet: no outcome in task_runs
    with pytest.raises(ConfigurationError, match=f"task {task_id} is cancelled, but its run on worker host-a is still stopping: "
                                                 "try again in a few seconds") as info:
        queue.retry(task_id)
    assert "its worker records the end within seconds, or the run ends when its lease expires (" in info.value.hint
    row = queue.get(task_id)
    assert (row.status, row.run_id) == ("cancelled", run.run_id)  # untouched: the old run still holds it
    assert queue.finish(run, "cancelled", error="cancelled while running")  # the worker records the end
    queue.retry(task_id)
    assert queue.get(task_id).status == "queued"
    assert [(r.outcome, r.error) for r in queue.runs(task_id)] == [("cancelled", "cancelled while running")]


def test_retry_ends_a_cancelled_run_whose_worker_is_gone_once_its_lease_expired(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    queue.claim("host-a", 30)
    queue.cancel(task_id)
    expire_lease(engine, task_id)  # the worker never came back to record the cancel
    queue.retry(task_id)
    assert queue.get(task_id).status == "queued"
    [ended] = queue.runs(task_id)
    assert (ended.outcome, ended.error) == ("cancelled", "cancelled while running; worker host-a stopped renewing its lease")


def test_a_task_requeued_with_a_backoff_is_not_claimed_before_it_ends_and_keeps_its_attempts(engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    assert queue.requeue(run, "task folder in use by another run; re-queued", backoff_seconds=3600)
    row = queue.get(task_id)
    assert (row.status, row.attempts, row.run_id) == ("queued", 0, None)
    assert queue.claim("host-b", 30) is None  # not before the backoff ends
    with engine.begin() as conn:  # an hour later
        conn.execute(text("UPDATE training_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": task_id})
    again = queue.claim("host-b", 30)
    assert again is not None and again.task_id == task_id
    assert [(r.worker_id, r.outcome) for r in queue.runs(task_id)] == [("host-a", "requeued"), ("host-b", None)]


@pytest.mark.parametrize("status, hint", [("queued", "waiting for a worker"), ("running", "pytrain cancel"),
                                          ("succeeded", "submit a new task")])
def test_retry_refuses_other_statuses_naming_the_status(engine, status, hint):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    if status != "queued":
        run = queue.claim("host-a", 30)
        if status == "succeeded":
            queue.finish_succeeded(run, publish=lambda: (1, None))
    with pytest.raises(ConfigurationError, match=f"task {task_id} is {status}: only a failed or cancelled task can be retried") as info:
        queue.retry(task_id)
    assert hint in info.value.hint
    assert queue.get(task_id).status == status
    with pytest.raises(TaskNotFoundError):
        queue.retry(999)


def test_a_second_holder_of_a_worker_id_is_refused_naming_the_first(engine):
    first, second, other = WorkerLock(engine, "host-gpu0"), WorkerLock(engine, "host-gpu0"), WorkerLock(engine, "host-gpu1")
    first.acquire()
    try:
        other.acquire()  # another id: no conflict
        with pytest.raises(ConfigurationError) as info:
            second.acquire()
        assert info.value.message.startswith(
            f"worker id 'host-gpu0' is already in use by a running orchestrator: pytrain worker {socket.gethostname()} pid {os.getpid()}")
        assert "PYTRAIN_WORKER_ID" in info.value.hint
        assert not second.held
    finally:
        first.release()
        other.release()
    second.acquire()  # released with its connection
    second.release()


def test_a_worker_lock_records_its_runner_and_gpus_for_as_long_as_it_is_held(engine):
    """The Workers page's source: a live lock names its id, runner and GPUs; a released one is not
    live, and the next holder of the id (another runner) replaces the row."""
    queue = TaskQueue(engine)
    first = WorkerLock(engine, "host-gpu0_1", runner="docker", gpus="0,1")
    old = WorkerLock(engine, "host-cpu")  # an orchestrator that records nothing (no runner given)
    first.acquire()
    old.acquire()
    try:
        live = {w["worker_id"]: (w["runner"], w["gpus"]) for w in queue.workers()["live"]}
        assert live == {"host-gpu0_1": ("docker", "0,1"), None: (None, None)}
    finally:
        first.release()
        old.release()
    assert queue.workers()["live"] == []
    second = WorkerLock(engine, "host-gpu0_1", runner="local", gpus=None)
    second.acquire()
    try:
        assert [(w["worker_id"], w["runner"], w["gpus"]) for w in queue.workers()["live"]] == [("host-gpu0_1", "local", None)]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM workers")).scalar() == 1
    finally:
        second.release()


def test_a_worker_lock_dropped_by_the_server_is_taken_again(engine, pg_admin_url):
    lock = WorkerLock(engine, "host-gpu0")
    lock.acquire()
    with engine.begin() as conn:  # the server drops the lock's session (as a restart would)
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name LIKE 'pytrain worker %' AND datname = current_database()"))
    lock.ensure()
    assert lock.held
    with pytest.raises(ConfigurationError):
        WorkerLock(engine, "host-gpu0").acquire()
    lock.release()


def test_the_fence_comes_a_margin_before_the_lease_and_after_a_heartbeat():
    from pydantic import ValidationError

    from pytrain.settings import Settings

    assert Settings(lease_seconds=60, heartbeat_seconds=5).fence_seconds == 50  # margin: 2 heartbeats
    assert Settings(lease_seconds=300, heartbeat_seconds=5).fence_seconds == 270  # margin: 10 % of the lease
    assert Settings(lease_seconds=60, heartbeat_seconds=5, fence_margin_seconds=15).fence_seconds == 45
    with pytest.raises(ValidationError, match=r"minus the fencing margin \(56 s, PYTRAIN_FENCE_MARGIN_SECONDS\) must exceed"):
        Settings(lease_seconds=60, heartbeat_seconds=5, fence_margin_seconds=56)


def test_the_queue_speaks_the_one_outcome_enum(engine):
    """Heartbeats, recorded runs and finish_succeeded answer with :class:`pytrain.outcome.Outcome`
    members (their values are the strings the database holds)."""
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    run = queue.claim("host-a", 30)
    assert queue.heartbeat(run, 30) is Outcome.OK
    assert queue.finish(run, Outcome.FAILED, error="boom") is True
    assert queue.heartbeat(run, 30) is Outcome.LOST
    assert queue.finish_succeeded(run, publish=lambda: pytest.fail("an ended run must not publish")) is Outcome.LOST
    [ended] = queue.runs(task_id)
    assert ended.outcome is Outcome.FAILED and queue.get(task_id).status == "failed"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT outcome FROM task_runs WHERE id = :id"), {"id": run.run_id}).scalar() == "failed"
