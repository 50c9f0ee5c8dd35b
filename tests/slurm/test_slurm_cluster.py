"""The slurm runner on a real two-node Slurm cluster (n1, n2: ``scripts/start_slurm.sh``), through
the real orchestrator on a real PostgreSQL.

- a task with ``nodes = 2`` trains the tiny model on real mp4 clips with one torchrun per node,
  is published, and the real tritonserver answers with it;
- cancelling a running two-node training: its job leaves ``squeue`` within 10 s;
- a job that exits 1, one over its memory limit, one over its time limit (the runner's and
  Slurm's own): each failed with its reason, run once;
- an operator's ``scancel`` fails the task naming it; a node set down during the run re-queues it;
- an orchestrator killed with SIGKILL: its restart re-attaches to the still-running job (one job,
  one start), or cancels the job of a task cancelled meanwhile; another orchestrator that claims
  the task once the dead one's lease expired re-attaches the same way; a job being cancelled (a
  fenced worker's) is waited out and replaced, never re-attached to;
- a raw row whose ``options.slurm.partition`` would inject a shell command fails naming it, and
  nothing runs.

Budgets (2 shared cores): the two-node training ~60 s, its cancel ~25 s, Slurm's own time limit
~75 s (whole minutes, checked every 30 s: marked slow), every other test < 15 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from fixtures.cluster_tasks import PLACEHOLDER_ROW, TRAIN_ROW, NoPublish, hold_code, in_thread, reattach_and_release, task_folder, train_two_node_task
from fixtures.processes import wait_for
from fixtures.slurm import live_jobs

from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.runners import Outcome, PreparedTask
from pytrain.runners.slurm import SlurmRunner
from pytrain.spec import TaskSpec

pytestmark = pytest.mark.slurm

# Stand-ins for the training entrypoint (run as `python -c CODE --task-dir D --sources-root R` in the job's
# folder). HOLD says it started (one line per start) and ends 0 with a metrics.json once "release" exists.
HOLD = hold_code("SLURM_JOB_ID")
FAIL = "import sys; print('working', flush=True); print('boom: dataset is empty', file=sys.stderr); sys.exit(1)"
ALLOCATE = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"
SLEEP = "import time; open('started', 'w').write('1'); time.sleep(300)"
# Ignores SIGTERM: after scancel its job stays COMPLETING for ~8 s (KillWait, then the step's teardown).
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open('started', 'w').write('1'); time.sleep(300)"


def jobs_of(task_id: int) -> dict[str, str]:
    """Live jobs of a task: ``{job id: "name|state|comment"}``."""
    return {job: what for job, what in live_jobs(f"pytrain-task-{task_id}").items() if what.startswith(f"pytrain-task-{task_id}|")}


def running_job(task_id: int) -> str:
    """The id of the task's job once it is RUNNING."""
    return wait_for(lambda: next((job for job, what in jobs_of(task_id).items() if "|RUNNING|" in what), None),
                    timeout=60, what=f"a running job of task {task_id}")


def stub_runner(settings, code: str) -> SlurmRunner:
    return SlurmRunner(settings, command=[sys.executable, "-c", code], poll_seconds=0.2, grace_seconds=1.0)


# -- training on two nodes ------------------------------------------------------------------------
@pytest.mark.triton
def test_two_node_task_trains_on_n1_and_n2_is_published_and_served(clips, engine, triton_server):
    row, folder = train_two_node_task(clips, engine, triton_server, lambda settings: SlurmRunner(settings, poll_seconds=0.5), "slurm_e2e")
    assert sorted(row["metrics"]["nodes"]) == ["n1", "n2"]
    script = (folder / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=2\n" in script and "-m torch.distributed.run --nnodes=$SLURM_JOB_NUM_NODES" in script
    assert jobs_of(row["id"]) == {}


def test_cancelling_a_two_node_training_removes_its_job_within_10_seconds(clips, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "slurm_cancel", "nodes": 2, **TRAIN_ROW, "epochs": 200})
    worker = Orchestrator(clips, engine=engine, runner=SlurmRunner(clips, poll_seconds=0.5))
    thread = in_thread(worker, max_tasks=1)
    job = running_job(task_id)
    progress = task_folder(queue, task_id) / "progress.jsonl"
    wait_for(lambda: progress.exists() and '"epoch"' in progress.read_text(), timeout=120, step=0.5, what="a trained epoch")
    cancelled_at = time.monotonic()
    assert queue.cancel(task_id)
    wait_for(lambda: job not in live_jobs(), timeout=10, what=f"job {job} gone from squeue")
    gone = time.monotonic() - cancelled_at
    thread.join(30)
    print(f"\ncancel -> job {job} gone from squeue in {gone:.1f} s")
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert (row["status"], row["error"]) == ("cancelled", "cancelled while running")


# -- failures: recorded with their reason, run once ---------------------------------------------------
@pytest.mark.parametrize(("code", "overrides", "expected"), [
    (FAIL, {}, "exited with code 1: boom: dataset is empty"),
    # cgroup v1: "oom-kill event"; OverMemoryKill (no memory controller): "Exceeded job memory limit".
    (ALLOCATE, {"slurm_mem": "200M"}, "out of memory (the job's output says '"),
    (SLEEP, {"task_timeout_seconds": 3.0}, "timed out after 3 s (PYTRAIN_TASK_TIMEOUT_SECONDS)"),
], ids=["exit-1", "memory-limit", "time-limit"])
def test_a_failed_job_is_recorded_with_its_reason_and_not_retried(placeholders, engine, code, overrides, expected):
    settings = placeholders.model_copy(update=overrides)
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    assert Orchestrator(settings, engine=engine, runner=stub_runner(settings, code)).run(exit_when_idle=True) == 1
    row = queue.get(task_id)
    assert row["status"] == "failed" and expected in row["error"], row["error"]
    assert (row["attempts"], len(queue.runs(task_id))) == (0, 1)  # one run, no retry
    assert jobs_of(task_id) == {}


@pytest.mark.slow
def test_slurms_own_time_limit_is_recorded_as_timed_out(placeholders, engine):
    """No task timeout for the runner to enforce; the job's --time=1 (an extra sbatch line) ends it:
    Slurm's TIMEOUT state (after 60-90 s: Slurm checks limits every 30 s)."""
    settings = placeholders.model_copy(update={"slurm_extra_sbatch": "--time=1"})
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    started = time.monotonic()
    assert Orchestrator(settings, engine=engine, runner=stub_runner(settings, SLEEP)).run(exit_when_idle=True) == 1
    print(f"\nSlurm TIMEOUT after {time.monotonic() - started:.1f} s")
    row = queue.get(task_id)
    assert row["status"] == "failed" and "reached its time limit" in row["error"], row["error"]
    assert len(queue.runs(task_id)) == 1


def test_an_operators_scancel_fails_the_task_naming_the_operator(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    thread = in_thread(Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, SLEEP)), max_tasks=1)
    job = running_job(task_id)
    subprocess.run(["scancel", job], check=True, timeout=30)
    thread.join(30)
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert row["status"] == "failed"
    assert row["error"].startswith(f"Slurm job {job} was cancelled by an operator (scancel outside PyTrain)"), row["error"]


def test_a_node_failure_during_the_run_requeues_the_task(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit({**PLACEHOLDER_ROW, "nodes": 2})
    thread = in_thread(Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, SLEEP)), max_tasks=1)
    job = running_job(task_id)
    wait_for((task_folder(queue, task_id) / "started").exists, timeout=30, what="the program to start")
    subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=pytrain-test"], check=True, timeout=30)
    thread.join(30)
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert (row["status"], row["attempts"]) == ("queued", 0), row["error"]
    assert row["error"].startswith(f"Slurm job {job} ended NODE_FAIL on n[1-2], NodeDown; re-queued"), row["error"]


def test_local_runner_refuses_a_two_node_task_at_claim(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit({**PLACEHOLDER_ROW, "nodes": 2})
    local = placeholders.model_copy(update={"runner": "local"})
    assert Orchestrator(local, engine=engine, publisher=NoPublish()).run(exit_when_idle=True) == 1
    row = queue.get(task_id)
    assert row["status"] == "failed"
    assert f"task {task_id} asks for nodes = 2, but the local runner trains on one host" in row["error"], row["error"]


# -- an orchestrator killed mid-run --------------------------------------------------------------------
WORKER = """
import sys
from pytrain.orchestrator import Orchestrator
from pytrain.runners.slurm import SlurmRunner
from pytrain.settings import Settings

settings = Settings()
runner = SlurmRunner(settings, command=[sys.executable, "-c", sys.argv[1]], poll_seconds=0.2)
worker = Orchestrator(settings, runner=runner, publisher=lambda *a, **k: None)
worker.run()
"""


def kill_worker_mid_run(settings, queue: TaskQueue, task_id: int, *, worker_id: str | None = None, lease_seconds: float = 20) -> str:
    """Start an orchestrator process, wait until its job runs HOLD, SIGKILL it; the job id."""
    env = {**os.environ, "PYTRAIN_DATABASE_URL": settings.database_url.get_secret_value(), "PYTRAIN_RUNNER": "slurm",
           "PYTRAIN_WORKER_ID": worker_id or settings.worker_id, "PYTRAIN_SOURCES_DIR": str(settings.sources_dir),
           "PYTRAIN_MODEL_TASKS_DIR": str(settings.model_tasks_dir), "PYTRAIN_DATA_DIR": str(settings.data_dir),
           "PYTRAIN_LEASE_SECONDS": str(lease_seconds), "PYTRAIN_HEARTBEAT_SECONDS": "0.5", "PYTRAIN_POLL_SECONDS": "0.2"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, HOLD], env=env)
    try:
        job = running_job(task_id)
        wait_for((task_folder(queue, task_id) / "starts").exists, timeout=30, what="HOLD to start")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return job


def test_restarted_orchestrator_reattaches_to_its_running_job(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    job = kill_worker_mid_run(placeholders, queue, task_id)
    folder = task_folder(queue, task_id)
    assert queue.get(task_id)["status"] == "running" and job in jobs_of(task_id)  # the job outlives its orchestrator

    results = reattach_and_release(placeholders, engine, stub_runner(placeholders, HOLD), queue, task_id, folder, timeout=30)
    assert [(r.details["job_id"], r.details["reattached"]) for r in results] == [(job, True)]
    assert len((folder / "starts").read_text().splitlines()) == 1  # never started twice
    assert jobs_of(task_id) == {}


def test_another_orchestrator_reattaches_once_the_dead_ones_lease_expired(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    dead = f"{placeholders.worker_id}-dead"
    job = kill_worker_mid_run(placeholders, queue, task_id, worker_id=dead, lease_seconds=2)
    folder = task_folder(queue, task_id)
    runner = stub_runner(placeholders, HOLD)  # another worker id: placeholders.worker_id
    thread = in_thread(Orchestrator(placeholders, engine=engine, runner=runner, publisher=NoPublish()), max_tasks=1)
    wait_for(lambda: jobs_of(task_id).get(job, "").endswith(f"worker={placeholders.worker_id}"), timeout=30,
             what="the job taken over by the other worker")
    (folder / "release").write_text("")
    thread.join(30)
    assert not thread.is_alive()
    row = queue.get(task_id)
    assert (row["status"], row["worker_id"], row["attempts"]) == ("succeeded", placeholders.worker_id, 1), row["error"]
    assert len((folder / "starts").read_text().splitlines()) == 1  # one job, started once
    assert jobs_of(task_id) == {}


def test_restarted_orchestrator_cancels_the_job_of_a_task_cancelled_meanwhile(placeholders, engine):
    queue = TaskQueue(engine)
    task_id = queue.submit(PLACEHOLDER_ROW)
    job = kill_worker_mid_run(placeholders, queue, task_id)
    assert queue.cancel(task_id)
    worker = Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, HOLD), publisher=NoPublish())
    worker.start()
    try:
        assert job not in live_jobs()
    finally:
        worker.close()
    assert queue.get(task_id)["status"] == "cancelled"


def test_a_job_being_cancelled_is_waited_out_and_replaced_not_reattached_to(placeholders):
    """A fenced worker stops its run (scancel); squeue shows the job COMPLETING for seconds. The
    worker that claims the task next must not take that job over (it would end CANCELLED, "cancelled
    by an operator"): it waits until the job has left the queue, then submits a new one."""
    spec = TaskSpec(task_id=4242, model_name="kitchen", class_list=["a", "b"], uid=str(uuid.uuid4()))
    task = PreparedTask(spec=spec, task_dir=placeholders.model_tasks_dir / "task-4242-kitchen", sources_root=placeholders.sources_dir,
                        timeout_seconds=None)
    fence = threading.Event()
    fenced = threading.Thread(target=stub_runner(placeholders, STUBBORN).run, args=(task, fence), daemon=True)
    fenced.start()
    old = running_job(4242)
    wait_for((task.task_dir / "started").exists, timeout=30, what="the first job's program to start")
    fence.set()  # the fenced worker's stop: scancel, then it waits for the job to leave the queue
    wait_for(lambda: "|COMPLETING|" in jobs_of(4242).get(old, ""), timeout=30, what=f"job {old} COMPLETING")

    result = stub_runner(placeholders, "print('the second run', flush=True)").run(task, threading.Event())
    assert (result.outcome, result.details["reattached"]) == (Outcome.SUCCEEDED, False), result
    assert result.details["job_id"] != old
    assert "the second run" in task.log_path.read_text()
    fenced.join(30)
    assert not fenced.is_alive() and jobs_of(4242) == {}


def test_a_raw_row_with_a_hostile_partition_fails_naming_it_and_runs_nothing(placeholders, engine, tmp_path):
    """The row of the issue, inserted with plain SQL: before the check, sbatch stopped reading
    #SBATCH lines at the newline, the node ran the `touch`, and the task succeeded."""
    from sqlalchemy import text

    pwned = tmp_path / "pwned"
    value = f"debug\ntouch {pwned}\n#"
    with engine.begin() as conn:
        task_id = conn.execute(text("INSERT INTO training_tasks (model_name, sources, classes, architecture, options) "
                                    "VALUES ('kitchen', '{dataset1}', '{cooking,drinking}', 'tiny', CAST(:options AS jsonb)) RETURNING id"),
                               {"options": json.dumps({"slurm": {"partition": value}})}).scalar_one()
    worker = Orchestrator(placeholders, engine=engine, runner=stub_runner(placeholders, "print('trained')"), publisher=NoPublish())
    assert worker.run(exit_when_idle=True) == 1
    assert not pwned.exists()  # (it did appear before: the node ran the line)
    row = TaskQueue(engine).get(task_id)
    assert row["status"] == "failed", row["error"]
    assert f"task option slurm.partition={value!r}: must be a Slurm partition name" in row["error"]
    assert jobs_of(task_id) == {}
