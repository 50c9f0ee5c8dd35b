from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from pytrain.db import TaskQueue, TaskRequest
from pytrain.errors import ConfigurationError, TaskNotFoundError

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}


@pytest.fixture
def queue(engine) -> TaskQueue:
    return TaskQueue(engine)


def age(engine, task_id: int, seconds: float) -> None:
    """Move a task's lease ``seconds`` into the past (as if its worker stopped heartbeating)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE training_tasks SET lease_expires_at = now() - make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds, "id": task_id},
        )


def test_claim_takes_highest_priority_then_oldest(queue):
    low_old = queue.submit({**TASK, "priority": 0})
    high = queue.submit({**TASK, "priority": 5})
    low_new = queue.submit({**TASK, "priority": 0})
    high_new = queue.submit({**TASK, "priority": 5})
    order = [queue.claim("w", 30).task_id for _ in range(4)]
    assert order == [high, high_new, low_old, low_new]
    assert queue.claim("w", 30) is None


def test_list_filters_by_model_and_status_newest_first(queue):
    kitchen_old, garage, kitchen_new = (queue.submit({**TASK, "model_name": m}) for m in ("kitchen", "garage", "kitchen"))
    assert queue.cancel(kitchen_new)
    assert [r.id for r in queue.list(model="kitchen")] == [kitchen_new, kitchen_old]
    assert [r.id for r in queue.list(model="kitchen", status="queued")] == [kitchen_old]
    assert [r.id for r in queue.list(status="queued")] == [garage, kitchen_old]
    assert [r.id for r in queue.list(model="kitchen", limit=1)] == [kitchen_new]
    assert queue.list(model="nothing") == []


def test_claim_marks_task_running_with_worker_and_lease(queue):
    task_id = queue.submit(TASK)
    run = queue.claim("worker-a", 30)
    row = queue.get(task_id)
    assert row["status"] == "running"
    assert row["worker_id"] == "worker-a"
    assert row["started_at"] == run.started_at
    assert 29 <= (row["lease_expires_at"] - row["started_at"]).total_seconds() <= 30.001


def test_claim_skips_locked_task(queue, engine):
    first = queue.submit(TASK)
    second = queue.submit(TASK)
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text("SELECT id FROM training_tasks WHERE id = :id FOR UPDATE"), {"id": first})
            run = queue.claim("w", 30)  # does not wait for the lock
            assert run.task_id == second
    assert queue.claim("w", 30).task_id == first


def test_cancelled_and_finished_tasks_are_never_claimed(queue):
    cancelled = queue.submit(TASK)
    assert queue.cancel(cancelled) is True
    assert queue.claim("w", 30) is None
    row = queue.get(cancelled)
    assert (row["status"], row["error"]) == ("cancelled", "cancelled before it started")
    assert row["finished_at"] is not None


def test_racing_workers_never_claim_a_task_twice(queue):
    ids = {queue.submit(TASK) for _ in range(60)}
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}
    start = threading.Barrier(4)

    def work(worker: str) -> None:
        start.wait()
        while (run := queue.claim(worker, 30)) is not None:
            claimed[worker].append(run.task_id)

    threads = [threading.Thread(target=work, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [task_id for ids_ in claimed.values() for task_id in ids_]
    assert sorted(everything) == sorted(ids)  # each task exactly once
    assert queue.counts() == {"running": 60}


def test_heartbeat_renews_lease_and_stores_progress(queue):
    queue.submit(TASK)
    run = queue.claim("w", 1)
    before = queue.get(run.task_id)["lease_expires_at"]
    time.sleep(0.05)
    assert queue.heartbeat(run, 30, {"event": "epoch", "epoch": 2, "epochs": 5}) == "ok"
    row = queue.get(run.task_id)
    assert row["progress"] == {"event": "epoch", "epoch": 2, "epochs": 5}
    assert (row["lease_expires_at"] - before).total_seconds() > 28
    assert queue.heartbeat(run, 30, None) == "ok"  # no new progress keeps the old one
    assert queue.get(run.task_id)["progress"]["epoch"] == 2


def test_heartbeat_reports_cancellation(queue):
    queue.submit(TASK)
    run = queue.claim("w", 30)
    assert queue.cancel(run.task_id) is True
    assert queue.heartbeat(run, 30) == "cancelled"
    assert queue.finish(run, "cancelled", error="cancelled while running") is True
    row = queue.get(run.task_id)
    assert (row["status"], row["lease_expires_at"]) == ("cancelled", None)
    assert row["finished_at"] is not None


def test_finish_cannot_overwrite_a_cancellation_with_success(queue):
    queue.submit(TASK)
    run = queue.claim("w", 30)
    queue.cancel(run.task_id)
    assert queue.finish(run, "succeeded", version=1) is False
    assert queue.get(run.task_id)["status"] == "cancelled"


def test_expired_lease_is_requeued_with_attempts_incremented(queue, engine):
    queue.submit(TASK)
    run = queue.claim("dead-worker", 30)
    assert queue.requeue_lost(3) == []  # lease still valid
    age(engine, run.task_id, 1)
    [requeued] = queue.requeue_lost(3)
    assert (requeued["id"], requeued["status"], requeued["attempts"]) == (run.task_id, "queued", 1)
    row = queue.get(run.task_id)
    assert (row["status"], row["attempts"], row["worker_id"], row["lease_expires_at"]) == ("queued", 1, None, None)
    assert row["error"].startswith("worker dead-worker stopped renewing its lease (expired ")
    assert row["error"].endswith("(run 1 of 3 lost); re-queued")


def test_lost_run_can_no_longer_heartbeat_or_finish(queue, engine):
    queue.submit(TASK)
    old = queue.claim("w", 30)
    age(engine, old.task_id, 1)
    queue.requeue_lost(3)
    new = queue.claim("w", 30)  # the same worker id claims it again: a new run
    assert new.task_id == old.task_id and new.started_at != old.started_at
    assert queue.heartbeat(old, 30) == "lost"
    assert queue.finish(old, "failed", error="late") is False
    assert queue.heartbeat(new, 30) == "ok"
    assert queue.get(new.task_id)["status"] == "running"


def test_task_fails_after_max_attempts_lost_runs(queue, engine):
    task_id = queue.submit(TASK)
    for attempt in (1, 2):
        queue.claim(f"w{attempt}", 30)
        age(engine, task_id, 1)
        assert queue.requeue_lost(3)[0]["status"] == "queued"
    queue.claim("w3", 30)
    age(engine, task_id, 1)
    [failed] = queue.requeue_lost(3)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    row = queue.get(task_id)
    assert row["status"] == "failed"
    assert row["finished_at"] is not None
    assert row["worker_id"] == "w3"
    assert "worker w3 stopped renewing its lease" in row["error"]
    assert row["error"].endswith("(run 3 of 3 lost); giving up (PYTRAIN_MAX_ATTEMPTS reached)")
    assert queue.claim("w", 30) is None


def test_restarted_worker_requeues_its_own_running_tasks_at_once(queue):
    mine = queue.submit(TASK)
    other = queue.submit(TASK)
    queue.claim("host-gpu0", 300)
    queue.claim("host-gpu1", 300)
    [row] = queue.requeue_lost(3, own_worker_id="host-gpu0")
    assert (row["id"], row["status"], row["attempts"]) == (mine, "queued", 1)
    assert row["error"] == "worker host-gpu0 restarted while running this task (run 1 of 3 lost); re-queued"
    assert queue.get(other)["status"] == "running"
    assert queue.running_elsewhere("host-gpu0") == {other}


def test_clean_requeue_does_not_count_an_attempt(queue):
    task_id = queue.submit(TASK)
    run = queue.claim("w", 30)
    assert queue.requeue(run, "interrupted") is True
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["error"], row["worker_id"]) == ("queued", 0, "interrupted", None)


def test_finish_records_metrics_version_and_clears_lease(queue):
    queue.submit(TASK)
    run = queue.claim("w", 30)
    assert queue.finish(run, "succeeded", metrics={"test_accuracy": 0.9}, version=2, progress={"epoch": 5}) is True
    row = queue.get(run.task_id)
    assert (row["status"], row["metrics"], row["version"], row["progress"], row["lease_expires_at"]) == (
        "succeeded", {"test_accuracy": 0.9}, 2, {"epoch": 5}, None)


def test_cancel_of_finished_task_changes_nothing(queue):
    queue.submit(TASK)
    run = queue.claim("w", 30)
    queue.finish(run, "failed", error="boom")
    assert queue.cancel(run.task_id) is False
    assert queue.get(run.task_id)["status"] == "failed"


def test_unknown_task_raises_not_found(queue):
    with pytest.raises(TaskNotFoundError, match="no training task with id 999"):
        queue.get(999)
    with pytest.raises(TaskNotFoundError):
        queue.cancel(999)


def test_submit_rejected_by_check_constraint_names_it(queue):
    with pytest.raises(ConfigurationError, match="ck_training_tasks_epochs_range"):
        queue.submit({**TASK, "epochs": 0})
    assert queue.counts() == {}


def test_task_request_validates_before_insert_naming_each_bad_value():
    with pytest.raises(ConfigurationError) as info:
        TaskRequest.parse({**TASK, "model_name": "bad name"})
    assert info.value.message == "invalid task: model_name='bad name': String should match pattern '^[A-Za-z0-9_-]{1,64}$'"
    assert info.value.hint == "see `pytrain submit --help` and the column table in docs/user-guide/tasks.md"
    assert info.value.__cause__ is None  # the message already says all pydantic's would
    with pytest.raises(ConfigurationError) as info:
        TaskRequest.parse({**TASK, "train_fraction": 0.5})
    assert info.value.message == "invalid task: train/val/test fractions [0.5, 0.2, 0.2] must sum to 1"
    with pytest.raises(ConfigurationError) as info:
        TaskRequest.parse({**TASK, "epochs": 0})
    assert info.value.message == "invalid task: epochs=0: Input should be greater than or equal to 1"
    request = TaskRequest.parse({**TASK, "classes": ["cooking", " drinking", "cooking"], "epochs": 3})
    assert request.columns() == {**TASK, "epochs": 3}  # unset fields are left to the database
