"""The ray runner on a real Ray cluster (a head and worker nodes a, b: ``tests/fixtures/ray.py``),
through the real orchestrator on a real PostgreSQL.

- a task with ``nodes = 2`` trains the tiny model on real mp4 clips, one process on each worker
  node, is published, and the real tritonserver answers with it;
- cancelling a running two-node task: its job is stopped and the task cancelled within 10 s;
- an orchestrator killed with SIGKILL: its restart re-attaches to the still-running job (one job,
  one start, succeeded);
- an orchestrator cut off from the database stops its job (the fence) before its lease expires;
- worker node b stopped during a two-node training: the task is re-queued, and once b is back it
  resumes from its checkpoint;
- a raw row whose ``options.ray`` would reach the cluster with a hostile value fails naming it,
  and no job is submitted.

Exit 1, out of memory, the timeout, orphans and the interrupt are the runner-contract tests
(``tests/orchestrator/test_runner_contract.py``, parametrised with ``ray``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
from fixtures.cluster_tasks import PLACEHOLDER_ROW, TRAIN_ROW, NoPublish, hold_code, in_thread, reattach_and_release, task_folder, train_two_node_task
from fixtures.processes import orchestrator_env, pid_alive, wait_for

from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.runners import Outcome, PreparedTask
from pytrain.runners.ray import RayCluster, RayRunner
from pytrain.spec import TaskSpec

pytestmark = pytest.mark.ray

# Stand-ins for the training entrypoint (run as `python -c CODE --task-dir D --sources-root R` in the
# task folder on a worker node). HOLD says it started (one line per start) and ends 0 with a
# metrics.json once "release" exists; HANG ignores SIGTERM (the worst case for a stop).
HOLD = hold_code("PYTRAIN_NODE_NAME")
HANG = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(f\"started-{os.environ.get('RANK', '0')}\", 'w').write(str(os.getpid())); time.sleep(300)")


def jobs_of(cluster, queue: TaskQueue, task_id: int) -> list:
    """The jobs of the task (its id and uid: every test's database numbers its tasks from 1)."""
    prefix = f"pytrain-task-{task_id}-{queue.get(task_id).uid}-"
    return [job for job in RayCluster(cluster.address).jobs() if job.submission_id.startswith(prefix)]


def live_jobs(cluster, queue: TaskQueue, task_id: int) -> list[str]:
    """Submission ids of the task's jobs that have not ended."""
    return [job.submission_id for job in jobs_of(cluster, queue, task_id) if not job.ended]


def stub_runner(settings, code: str) -> RayRunner:
    return RayRunner(settings, command=[sys.executable, "-c", code], poll_seconds=0.2, grace_seconds=1.0)


# -- training on two nodes ------------------------------------------------------------------------
@pytest.mark.triton
def test_two_node_task_trains_on_both_worker_nodes_is_published_and_served(clips, engine, triton_server, ray_cluster):
    row, folder = train_two_node_task(clips, engine, triton_server, lambda settings: RayRunner(settings, poll_seconds=0.5), "ray_e2e")
    assert sorted(row["metrics"]["nodes"]) == sorted(ray_cluster.wait_nodes("a", "b").values())  # one rank on each worker node
    assert "2 node(s) x 1 process(es)" in (folder / "train.log").read_text()
    assert live_jobs(ray_cluster, TaskQueue(engine), row["id"]) == []


def test_cancelling_a_two_node_run_stops_its_job_and_cancels_the_task_within_10_seconds(placeholders, engine, ray_cluster):
    queue = TaskQueue(engine)
    task_id = queue.submit({**PLACEHOLDER_ROW, "nodes": 2})
    thread = in_thread(Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, HANG), publisher=NoPublish()),
                       max_tasks=1)
    folder = task_folder(queue, task_id)
    wait_for(lambda: len(list(folder.glob("started-*"))) == 2, timeout=90, what="both ranks to start")
    pids = [int(path.read_text()) for path in folder.glob("started-*")]
    [job] = live_jobs(ray_cluster, queue, task_id)
    cancelled_at = time.monotonic()
    assert queue.cancel(task_id)
    wait_for(lambda: queue.get(task_id)["status"] == "cancelled" and not live_jobs(ray_cluster, queue, task_id), timeout=10, step=0.1,
             what=f"job {job} stopped and the task cancelled")
    took = time.monotonic() - cancelled_at
    print(f"\ncancel -> Ray job {job} stopped, task cancelled in {took:.1f} s")
    thread.join(30)
    assert not thread.is_alive()
    assert queue.get(task_id)["error"] == "cancelled while running"
    assert RayCluster(ray_cluster.address).job(job).status == "STOPPED"
    assert not [pid for pid in pids if pid_alive(pid)]  # both ranks (they ignore SIGTERM) are gone


# -- an orchestrator killed mid-run -------------------------------------------------------------------
WORKER = """
import sys
from pytrain.orchestrator import Orchestrator
from pytrain.runners.ray import RayRunner
from pytrain.settings import Settings

settings = Settings()
runner = RayRunner(settings, command=[sys.executable, "-c", sys.argv[1]], poll_seconds=0.2)
Orchestrator(settings, runner=runner, publisher=lambda *a, **k: None).run()
"""


def test_restarted_orchestrator_reattaches_to_its_running_job(placeholders, engine, ray_cluster):
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    env = orchestrator_env(placeholders, placeholders.worker_id, lease_seconds=20, heartbeat_seconds=0.5, poll_seconds=0.2,
                           PYTRAIN_RUNNER="ray", PYTRAIN_RAY_ADDRESS=ray_cluster.address, PYTRAIN_RAY_PYTHON=sys.executable,
                           PYTRAIN_RAY_RESOURCES=json.dumps(placeholders.ray_resources))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, HOLD], env=env)
    try:
        folder = task_folder(queue, task_id)
        wait_for((folder / "starts").exists, timeout=90, what="HOLD to start")
        [job] = live_jobs(ray_cluster, queue, task_id)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert queue.get(task_id)["status"] == "running" and live_jobs(ray_cluster, queue, task_id) == [job]  # the job outlives its orchestrator

    results = reattach_and_release(placeholders, engine, stub_runner(placeholders, HOLD), queue, task_id, folder, timeout=60)
    assert [(r.details["job_id"], r.details["reattached"]) for r in results] == [(job, True)]
    assert len((folder / "starts").read_text().splitlines()) == 1  # started once
    assert (folder / "train.log").read_text().count("Running entrypoint") == 1  # its log appended once
    assert live_jobs(ray_cluster, queue, task_id) == []


# -- fencing ---------------------------------------------------------------------------------------------
def test_a_worker_cut_off_from_the_database_stops_its_job_before_its_lease_expires(placeholders, engine, ray_cluster):
    """The fence (docs/adr/0011-run-fencing.md) stops the Ray job, and its ranks, before another
    worker could claim the task: within the lease, after lease minus margin without a renewal."""
    from fixtures.network import TcpProxy
    from pydantic import SecretStr

    queue = TaskQueue(engine)
    task_id = queue.submit({**PLACEHOLDER_ROW, "nodes": 2})
    proxy = TcpProxy(placeholders.database_url.get_secret_value())
    fenced = placeholders.model_copy(update={"database_url": SecretStr(proxy.url), "lease_seconds": 12.0, "fence_margin_seconds": 6.0})
    worker = Orchestrator(fenced, runner=stub_runner(fenced, HANG), publisher=NoPublish())
    thread = in_thread(worker, max_tasks=1)
    try:
        folder = task_folder(queue, task_id)
        wait_for(lambda: len(list(folder.glob("started-*"))) == 2, timeout=90, what="both ranks to start")
        pids = [int(path.read_text()) for path in folder.glob("started-*")]
        [job] = live_jobs(ray_cluster, queue, task_id)
        proxy.close()
        wait_for(lambda: RayCluster(ray_cluster.address).job(job).ended, timeout=30, step=0.1, what=f"job {job} stopped")
        stopped_at = datetime.now(timezone.utc)
    finally:
        proxy.close()
        worker.stop()
    row = queue.get(task_id)
    print(f"\nfenced: Ray job stopped {(stopped_at - row.heartbeat_at).total_seconds():.1f} s after the last renewal "
          f"(fence {fenced.fence_seconds:g} s, lease {fenced.lease_seconds:g} s)")
    assert fenced.fence_seconds - 0.5 <= (stopped_at - row.heartbeat_at).total_seconds()  # the fence, not anything earlier
    assert stopped_at < row.lease_expires_at  # before anyone else could claim the task
    assert RayCluster(ray_cluster.address).job(job).status == "STOPPED"
    assert not [pid for pid in pids if pid_alive(pid)]
    assert (row.status, row.worker_id) == ("running", fenced.worker_id)  # the cut-off worker could not write
    thread.join(30)


# -- a node lost during a run -------------------------------------------------------------------------
def test_a_worker_node_stopped_mid_run_requeues_the_task_and_it_resumes_from_its_checkpoint(clips, engine, ray_cluster):
    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "ray_resume", "nodes": 2, **TRAIN_ROW})  # 2 epochs: node b stops after the first
    worker = Orchestrator(clips, engine=engine, runner=RayRunner(clips, poll_seconds=0.5), publisher=NoPublish())
    thread = in_thread(worker, max_tasks=2)
    folder = task_folder(queue, task_id)
    wait_for((folder / "checkpoint_last.pt").exists, timeout=180, step=0.5, what="the first epoch's checkpoint")
    [job] = live_jobs(ray_cluster, queue, task_id)
    lost = ray_cluster.node_id("b")
    stopped_at = time.monotonic()
    ray_cluster.stop_node("b")  # as `ray stop` on node b
    first = wait_for(lambda: (run := queue.runs(task_id)[0]).outcome and run, timeout=60, what="the first run to end")
    print(f"\nnode b stopped -> task re-queued in {time.monotonic() - stopped_at:.1f} s")
    assert first.outcome is Outcome.REQUEUED, first
    assert f"Ray job {job} lost a node: task {task_id}: node {lost} was lost during the run" in first.error, first.error

    ray_cluster.start_node("b").communicate(timeout=120)  # the node comes back (a new node id); the queued task is placed again
    thread.join(240)
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert row["status"] == "succeeded", f"{row['error']}\n{(folder / 'train.log').read_text()[-3000:]}"
    starts = [json.loads(line) for line in (folder / "progress.jsonl").read_text().splitlines() if '"start"' in line]
    assert [s["resumed_from_epoch"] for s in starts][0] == 0 and starts[-1]["resumed_from_epoch"] >= 1, starts
    assert row["metrics"]["world_size"] == 2 and len(set(row["metrics"]["nodes"])) == 2
    assert live_jobs(ray_cluster, queue, task_id) == []


def test_a_node_that_cannot_start_the_training_fails_the_run_at_once_naming_why(ray_settings):
    """A node task that raises (here: no such program; on a real cluster, a task folder the node
    does not mount) is a failure of the run, not a lost node: no wait for Ray to see a node die."""
    spec = TaskSpec(task_id=4243, model_name="kitchen", class_list=["a", "b"], uid=str(uuid.uuid4()))
    task = PreparedTask(spec=spec, task_dir=ray_settings.model_tasks_dir / "task-4243-kitchen", sources_root=ray_settings.sources_dir)
    runner = RayRunner(ray_settings, command=["/nonexistent/python"], poll_seconds=0.2, grace_seconds=1.0)
    result = runner.run(task, threading.Event())
    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 1), result
    assert "could not start the training: FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/python'" in result.message
    assert result.details["seconds"] < 25  # the 30 s wait for a dead node was not taken


# -- hostile values ----------------------------------------------------------------------------------------
def test_a_raw_row_with_a_hostile_ray_value_fails_naming_it_and_submits_no_job(placeholders, engine, ray_cluster):
    """The row is inserted with plain SQL (``pytrain submit`` refuses it: tests/orchestrator/test_hostile_options.py)."""
    from sqlalchemy import text

    value = "--index-url=http://attacker.example/simple torch"
    with engine.begin() as conn:
        task_id = conn.execute(text("INSERT INTO training_tasks (model_name, sources, classes, architecture, options) "
                                    "VALUES ('kitchen', '{dataset1}', '{cooking,drinking}', 'tiny', CAST(:options AS jsonb)) RETURNING id"),
                               {"options": json.dumps({"ray": {"pip": [value]}})}).scalar_one()
    worker = Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, "print('trained')"), publisher=NoPublish())
    assert worker.run(exit_when_idle=True) == 1
    queue = TaskQueue(engine)
    row = queue.get(task_id)
    assert row["status"] == "failed", row["error"]
    assert f"task option ray.pip={[value]!r}: must be a pip requirement specifier" in row["error"]
    assert jobs_of(ray_cluster, queue, task_id) == []
