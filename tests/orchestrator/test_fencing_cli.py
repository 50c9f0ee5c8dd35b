"""``pytrain retry ID`` and the runs in ``pytrain show ID``, in-process through ``pytrain.cli.main``.
Budget: about 1 s per test."""

from __future__ import annotations

import json

from sqlalchemy import text

from pytrain.db import TaskQueue
from test_cli import cli  # noqa: F401  (the fixture: PYTRAIN_* pointing at the test's database)

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}


def test_retry_queues_a_failed_task_again_and_show_lists_both_runs(cli, engine):  # noqa: F811
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    queue.finish(queue.claim("host-a", 30), "failed", error="training exited with code 3")
    code, out, err = cli("retry", str(task_id))
    assert (code, out.strip(), err) == (0, f"task {task_id} queued again (1 earlier run kept in its history)", "")
    row = queue.get(task_id)
    assert (row.status, row.attempts, row.error) == ("queued", 0, None)
    queue.claim("host-b", 30)

    code, out, _ = cli("show", str(task_id))
    assert code == 0
    runs = json.loads(out)["runs"]
    assert [(r["worker_id"], r["outcome"], r["error"]) for r in runs] == [
        ("host-a", "failed", "training exited with code 3"), ("host-b", None, None)]
    assert runs[0]["finished_at"] is not None and runs[1]["finished_at"] is None and runs[0]["started_at"] < runs[1]["started_at"]


def test_retry_refuses_a_running_task_with_one_clear_line_and_exit_1(cli, engine):  # noqa: F811
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    queue.claim("host-a", 30)
    code, out, err = cli("retry", str(task_id))
    assert (code, out) == (1, "")
    assert err.strip() == (f"error: task {task_id} is running: only a failed or cancelled task can be retried "
                           "(hint: cancel it first (`pytrain cancel ID`), or wait for it to end)")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM training_tasks WHERE id = :id"), {"id": task_id}).scalar() == "running"
    assert cli("retry", "999")[0] == 1
