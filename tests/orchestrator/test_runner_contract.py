"""The runner contract (:class:`pytrain.runners.base.Runner`): every registered runner passes these.

Each case runs a few lines of Python in place of the training entrypoint, through the real
runner: ``local`` as a subprocess, ``docker`` in a container of the real training image (marked
``docker``; it needs the engine and the session's image), ``slurm`` as a job on the real two-node
cluster, ``ray`` as a Ray job on the real three-node Ray cluster (``tests/fixtures/ray.py``). Success, exit 1, out of memory, cancel
within 5 s, the timeout, orphans; the interrupt and the stderr tail go through the real
:class:`~pytrain.orchestrator.Orchestrator` on a real PostgreSQL, since their promise is about the
task row. At the end, unit tests of the shared pieces: the outcome mapping, the ``error`` text,
the GPU parser and the registry.

A new runner joins by adding a :class:`Kind` to ``KINDS``.

Run: ``.venv/bin/python -m pytest tests/orchestrator/test_runner_contract.py -q`` (``-m "not docker"``
for the local runner alone).
"""

from __future__ import annotations

import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fakes import FakePublisher
from pytrain.db import TaskQueue
from pytrain.errors import ConfigurationError
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner, Outcome, PreparedTask, Runner
from pytrain.settings import Settings
from pytrain.spec import MANIFEST, TaskSpec, task_dir_name
from fixtures.processes import pid_alive
from test_local_runner import wait_for

GRACE_SECONDS = 1.0  # SIGTERM -> SIGKILL; the hanging programs ignore SIGTERM, so every stop needs it
START_SECONDS = 60  # a container can take a while to start on a loaded CI machine

# Ignores SIGTERM (the worst case for a stop), says it started, and waits to be stopped.
HANG = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("started", flush=True)
open("started", "w").write(str(os.getpid()))
time.sleep(300)
"""
FAIL = "import sys; print('working', flush=True); print('boom: dataset is empty', file=sys.stderr); sys.exit(1)"
# 25 distinct lines of stderr, the exception last: more than one line must reach the row.
TRACEBACK = """
import sys
for i in range(25):
    print(f"stderr line {i}", file=sys.stderr)
print("ValueError: no clip could be decoded", file=sys.stderr)
sys.exit(1)
"""
ALLOCATE = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"


def _host_memlock() -> int:
    """NVIDIA's memlock=-1 where the host allows it; else the host's hard limit (CI sandboxes)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


@dataclass
class Kind:
    """How the contract tests build one kind of runner and see what its runs leave behind.

    Attributes:
        settings: the test's settings, with what this runner needs.
        make: ``make(settings, code)`` -> a runner whose entrypoint is ``python -c code``.
        running: ``running(task_dir)`` -> whether a run of that task folder is still alive.
        oom_code: a program that runs out of memory in a way this runner can see.
        oom_settings: settings overrides for that program (a container memory limit).
        cancel_seconds: how soon after ``cancel`` a run that ignores SIGTERM must be gone.
        timeout_seconds: the task timeout of the timeout test: long enough for a run of this kind
            to have started and said so on a loaded machine (the limit counts from the submission,
            so a shorter one may stop a run that never started, and the test would check nothing).
    """

    settings: Settings
    make: Callable[[Settings, str], Runner]
    running: Callable[[Path], bool]
    oom_code: str
    oom_settings: dict[str, Any] = field(default_factory=dict)
    cancel_seconds: float = 5.0
    timeout_seconds: float = 3.0

    def runner(self, code: str, **overrides: Any) -> Runner:
        return self.make(self.settings.model_copy(update=overrides), code)


def _local(request: pytest.FixtureRequest, settings: Settings) -> Kind:
    def make(s: Settings, code: str) -> Runner:
        return LocalRunner(s, command=[sys.executable, "-c", code], grace_seconds=GRACE_SECONDS, poll_seconds=0.05)

    def running(task_dir: Path) -> bool:
        started = task_dir / "started"
        return started.exists() and pid_alive(int(started.read_text()))

    # Without a cgroup of its own, a local run sees memory run out as its allocator's MemoryError:
    # an address-space limit makes that happen at 1 GiB instead of at the machine's end.
    oom = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n" + ALLOCATE
    return Kind(settings, make, running, oom)


def _docker(request: pytest.FixtureRequest, settings: Settings) -> Kind:
    from pytrain.runners.docker import LABEL_TASK_ID, DockerRunner

    client = request.getfixturevalue("docker_client")
    image = request.getfixturevalue("train_image").tag
    request.getfixturevalue("docker_tracker")  # fails the test if a container is left behind

    def make(s: Settings, code: str) -> Runner:
        return DockerRunner(s, client=client, image=image, memlock_bytes=_host_memlock(), entrypoint=["python", "-c", code],
                            command=[], stop_grace_seconds=GRACE_SECONDS)

    def running(task_dir: Path) -> bool:
        task_id = task_dir.name.split("-")[1]
        return bool(client.containers.list(filters={"label": f"{LABEL_TASK_ID}={task_id}"}))

    settings = settings.model_copy(update={"shm_size": "64m", "container_memory": None, "gpus": None})
    # A container starts in ~1-2 s on a loaded machine.
    return Kind(settings, make, running, ALLOCATE, {"container_memory": "64m"}, timeout_seconds=10.0)


def _slurm(request: pytest.FixtureRequest, settings: Settings) -> Kind:
    from fixtures.slurm import live_jobs

    from pytrain.runners.slurm import SlurmRunner

    request.getfixturevalue("slurm_cluster")  # skips without a cluster

    def make(s: Settings, code: str) -> Runner:
        return SlurmRunner(s, command=[sys.executable, "-c", code], grace_seconds=GRACE_SECONDS, poll_seconds=0.2)

    def running(task_dir: Path) -> bool:
        name = f"pytrain-task-{task_dir.name.split('-')[1]}|"
        return any(what.startswith(name) for what in live_jobs().values())

    # The test cluster enforces --mem with cgroup v1 (or by sampling, OverMemoryKill): the job ends
    # FAILED with slurmstepd's "oom-kill event" (or "Exceeded job memory limit") in its output.
    # HANG ignores SIGTERM: slurmstepd kills it after KillWait (2 s) and tearing the step down takes
    # ~7.7 s more here (measured); a run that obeys SIGTERM leaves squeue in ~0.3 s. The issue's
    # promise for Slurm is "gone from squeue within 10 s". From sbatch to the program's first line
    # took 1.0-2.8 s here under load (a 1 s timeout stopped jobs that had not started yet).
    # The cluster is shared by every session on the host: a worker id of this test's own keeps
    # cleanup_orphans from seeing (and cancelling) another session's jobs, as tests/slurm does.
    settings = settings.model_copy(update={"slurm_mem": "500M", "worker_id": f"contract-{time.monotonic_ns()}"})
    return Kind(settings, make, running, ALLOCATE, {"slurm_mem": "200M"}, cancel_seconds=10.0, timeout_seconds=10.0)


def _ray(request: pytest.FixtureRequest, settings: Settings) -> Kind:
    from pytrain.runners.ray import RayRunner

    cluster = request.getfixturevalue("ray_cluster")  # skips without Ray

    def make(s: Settings, code: str) -> Runner:
        return RayRunner(s, command=[sys.executable, "-c", code], grace_seconds=GRACE_SECONDS, poll_seconds=0.2)

    def running(task_dir: Path) -> bool:  # every Ray node runs on this host: the run's pid tells
        started = task_dir / "started"
        return started.exists() and pid_alive(int(started.read_text()))

    # A job is placed on a worker node (one CPU each) and its driver started in ~3 s here. Ray's own
    # memory monitor acts only near the node's end, so the program limits its address space as in
    # the local case and dies of MemoryError. The cluster is the session's: a worker id of this
    # test's own keeps cleanup_orphans from stopping another test's jobs.
    oom = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n" + ALLOCATE
    settings = settings.model_copy(update={"ray_address": cluster.address, "ray_python": sys.executable,
                                           "ray_resources": {"pytrain_worker": 1.0}, "worker_id": f"contract-{time.monotonic_ns()}"})
    return Kind(settings, make, running, oom, cancel_seconds=10.0, timeout_seconds=10.0)


KINDS = {"local": _local, "docker": _docker, "slurm": _slurm, "ray": _ray}


@pytest.fixture(params=[pytest.param("local"), pytest.param("docker", marks=pytest.mark.docker),
                        pytest.param("slurm", marks=pytest.mark.slurm), pytest.param("ray", marks=pytest.mark.ray)])
def kind(request: pytest.FixtureRequest, settings: Settings) -> Kind:
    return KINDS[request.param](request, settings)


def _task(settings: Settings, task_id: int, *, timeout: float | None = None) -> PreparedTask:
    """A prepared task as the orchestrator leaves it: ``task.json`` and ``manifest.csv`` in its folder."""
    # A uid of its own: a Slurm job is re-attached to by task id and uid, and other sessions on the
    # host run tasks with the same ids on the same cluster.
    spec = TaskSpec(task_id=task_id, model_name=f"m{task_id}", class_list=["a", "b"], uid=str(uuid.uuid4()))
    task_dir = settings.model_tasks_dir / f"task-{task_id}-m{task_id}"
    task_dir.mkdir(parents=True, exist_ok=True)
    spec.save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    return PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir, timeout_seconds=timeout)


class Background:
    """``runner.run`` in a thread; ``result`` is its RunResult, ``error`` what it raised."""

    def __init__(self, runner: Runner, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> None:
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(runner, task, cancel, stop), daemon=True)
        self.thread.start()

    def _run(self, runner: Runner, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None) -> None:
        try:
            self.result = runner.run(task, cancel, stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _wait_started(task_dir: Path) -> None:
    wait_for((task_dir / "started").exists, timeout=START_SECONDS)


# -- the contract, for every runner ------------------------------------------------------------
def test_runner_implements_the_protocol(kind):
    runner = kind.runner("pass")
    assert isinstance(runner, Runner)
    assert runner.name in ("local", "docker", "slurm", "ray")


def test_exit_0_succeeds_with_the_output_in_the_log(kind):
    task = _task(kind.settings, 11)
    result = kind.runner("print('hello from the run'); open('out.txt', 'w').write('ok')").run(task, threading.Event())
    assert (result.outcome, result.exit_code, result.message, result.stderr_tail) == (Outcome.SUCCEEDED, 0, "", "")
    assert "hello from the run" in task.log_path.read_text()
    assert (task.task_dir / "out.txt").read_text() == "ok"
    assert result.details["seconds"] >= 0


def test_exit_1_fails_with_the_exit_code_and_the_stderr_tail(kind):
    task = _task(kind.settings, 12)
    result = kind.runner(FAIL).run(task, threading.Event())
    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 1)
    assert result.message.endswith(" exited with code 1: boom: dataset is empty"), result.message
    assert result.stderr_tail.splitlines()[-1] == "boom: dataset is empty"
    assert "working" in task.log_path.read_text()


def test_a_run_that_finds_its_folder_locked_ends_locked_not_failed(kind):
    """The training entrypoint's exit status for "another run holds the task folder" (75) is not a
    failure of the task: every runner reports it as LOCKED (the worker re-queues the task)."""
    from pytrain.training.run_lock import RUN_LOCKED_EXIT_CODE

    task = _task(kind.settings, 19)
    locked = (f"import sys; print('error: task folder {task.task_dir} is in use by another run (host h pid 7 since t)', "
              f"file=sys.stderr); sys.exit({RUN_LOCKED_EXIT_CODE})")
    result = kind.runner(locked).run(task, threading.Event())
    assert (result.outcome, result.exit_code) == (Outcome.LOCKED, RUN_LOCKED_EXIT_CODE), result
    assert result.message.endswith(f" did not start: task folder {task.task_dir} is in use by another run (host h pid 7 since t)")


def test_out_of_memory_is_reported_as_out_of_memory(kind):
    task = _task(kind.settings, 13, timeout=60)
    result = kind.runner(kind.oom_code, **kind.oom_settings).run(task, threading.Event())
    assert result.outcome is Outcome.OUT_OF_MEMORY, result
    assert result.message.startswith("out of memory (")
    assert result.message.endswith("); lower batch_size, num_frames or the frame size")


def test_cancel_stops_the_run_within_5_seconds(kind):
    task = _task(kind.settings, 14)
    cancel = threading.Event()
    run = Background(kind.runner(HANG), task, cancel)
    _wait_started(task.task_dir)
    cancelled_at = time.monotonic()
    cancel.set()
    run.thread.join(kind.cancel_seconds + 5)
    assert time.monotonic() - cancelled_at < kind.cancel_seconds
    assert run.error is None and run.result.outcome is Outcome.CANCELLED, (run.error, run.result)
    assert run.result.message == "cancelled"
    assert not kind.running(task.task_dir)


def test_timeout_stops_the_run(kind):
    task = _task(kind.settings, 15, timeout=kind.timeout_seconds)
    started = time.monotonic()
    result = kind.runner(HANG).run(task, threading.Event())
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == f"timed out after {kind.timeout_seconds:g} s (PYTRAIN_TASK_TIMEOUT_SECONDS)"
    assert kind.timeout_seconds <= time.monotonic() - started < kind.timeout_seconds + START_SECONDS
    assert "started" in task.log_path.read_text()  # it was running, and its output is kept
    assert not kind.running(task.task_dir)


def test_cleanup_orphans_stops_runs_of_inactive_tasks_and_returns_their_ids(kind):
    """Runs a crashed worker left behind: one of a task another worker still runs, one of nobody's."""
    cancel = threading.Event()
    active, orphan = _task(kind.settings, 16), _task(kind.settings, 17)
    crashed = kind.runner(HANG)  # its runs go on without anyone supervising them for the worker
    runs = [Background(crashed, task, cancel) for task in (active, orphan)]
    try:
        for task in (active, orphan):
            _wait_started(task.task_dir)
        restarted = kind.runner("pass")
        assert restarted.cleanup_orphans({16, 999}) == {17}
        runs[1].thread.join(15)
        assert not runs[1].thread.is_alive()
        assert not kind.running(orphan.task_dir)
        assert kind.running(active.task_dir)
        assert restarted.cleanup_orphans({16}) == set()  # nothing left to clean
    finally:
        cancel.set()  # nothing left running, whatever failed above
        for run in runs:
            run.thread.join(15)
    assert runs[0].result.outcome is Outcome.CANCELLED


# -- through the worker: what the task row says ------------------------------------------------
TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}


def test_interrupt_requeues_the_task(kind, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = kind.runner(HANG)
    results = []
    run = runner.run
    runner.run = lambda *args: results.append(run(*args)) or results[-1]  # what the worker was told
    worker = Orchestrator(kind.settings, engine=engine, runner=runner, publisher=FakePublisher())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    task_dir = kind.settings.model_tasks_dir / task_dir_name(task_id, "kitchen", queue.get(task_id).uid)
    _wait_started(task_dir)
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()
    assert [result.outcome for result in results] == [Outcome.INTERRUPTED]
    row = queue.get(task_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)
    assert row["error"] == f"interrupted: worker {kind.settings.worker_id} shut down during the run; re-queued"
    assert not kind.running(task_dir)


def test_failed_runs_stderr_tail_reaches_the_task_rows_error(kind, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    worker = Orchestrator(kind.settings, engine=engine, runner=kind.runner(TRACEBACK), publisher=FakePublisher())
    assert worker.run(exit_when_idle=True) == 1
    row = queue.get(task_id)
    assert row["status"] == "failed"
    message, *tail = row["error"].splitlines()
    log_path = kind.settings.model_tasks_dir / task_dir_name(task_id, "kitchen", row["uid"]) / "train.log"
    assert message.endswith(f" exited with code 1: ValueError: no clip could be decoded (log: {log_path})"), message
    assert tail[-1] == "ValueError: no clip could be decoded"
    assert tail[-6:-1] == [f"stderr line {i}" for i in range(20, 25)]
    assert len(row["error"]) <= 4000


# -- the shared pieces (pytrain.runners.base) --------------------------------------------------
@pytest.mark.parametrize(
    ("stopped_by", "code", "oom", "outcome", "message"),
    [
        (Outcome.CANCELLED, -9, "limit 1g", Outcome.CANCELLED, "cancelled"),
        (Outcome.INTERRUPTED, 137, None, Outcome.INTERRUPTED, "interrupted: the worker is shutting down"),
        (Outcome.TIMED_OUT, -9, None, Outcome.TIMED_OUT, "timed out after 2.5 s (PYTRAIN_TASK_TIMEOUT_SECONDS)"),
        (None, 0, None, Outcome.SUCCEEDED, ""),
        (None, 137, "limit 1g", Outcome.OUT_OF_MEMORY, "out of memory (limit 1g); lower batch_size, num_frames or the frame size"),
        (None, 2, None, Outcome.FAILED, "training exited with code 2: KeyError: 'x'"),
        (None, 75, None, Outcome.LOCKED, "training did not start: KeyError: 'x'"),  # RUN_LOCKED_EXIT_CODE
        (None, None, None, Outcome.FAILED, "training ended without an exit code: KeyError: 'x'"),
    ],
)
def test_run_result_maps_how_a_run_ended_to_one_outcome_and_message(stopped_by, code, oom, outcome, message):
    from pytrain.runners.base import run_result

    result = run_result(stopped_by, code, tail="Traceback ...\nKeyError: 'x'\n", oom_evidence=oom, timeout_seconds=2.5)
    assert (result.outcome, result.exit_code, result.message) == (outcome, code, message)
    assert result.stderr_tail == ("" if outcome is Outcome.SUCCEEDED else "Traceback ...\nKeyError: 'x'\n")


def test_error_with_tail_keeps_the_message_and_the_end_of_the_tail():
    from pytrain.runners import error_with_tail

    assert error_with_tail("failed", "", max_chars=100) == "failed"
    assert error_with_tail("failed: boom", "boom\n", max_chars=100) == "failed: boom"  # already quoted
    assert error_with_tail("failed", "a\nb\n", max_chars=100) == "failed\na\nb"
    assert error_with_tail("failed", "0123456789", max_chars=12) == "failed\n56789"
    assert error_with_tail("x" * 20, "tail", max_chars=10) == "x" * 10


def test_parse_gpus_is_pure_and_rejects_anything_but_ids():
    from pytrain.runners import GpuSelection, parse_gpus

    assert parse_gpus(None) == parse_gpus("") == parse_gpus(" none ") == GpuSelection()
    assert (parse_gpus(None).none, parse_gpus(None).count) == (True, None)
    assert parse_gpus("all") == GpuSelection(all=True) and parse_gpus("all").count == -1
    assert parse_gpus("0, 1") == GpuSelection(ids=("0", "1")) and parse_gpus("0,1").count == 2
    assert parse_gpus("GPU-ab12-cd").ids == ("gpu-ab12-cd",)
    for bad in ("first", "0;rm -rf", ","):
        with pytest.raises(ConfigurationError, match="invalid GPU list"):
            parse_gpus(bad)
    # Pure: the module that parses imports neither the Docker SDK nor anything that needs a GPU.
    import ast
    import inspect

    from pytrain.runners import base

    tree = ast.parse(inspect.getsource(base))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {name for name in imported if name.split(".")[0] in ("docker", "torch")}, imported


def test_get_runner_builds_registered_runners_and_names_them_for_an_unknown_one(settings, monkeypatch):
    from pytrain import runners

    monkeypatch.setattr(runners, "RUNNERS", dict(runners.RUNNERS))
    assert isinstance(runners.get_runner(settings), LocalRunner)
    with pytest.raises(ConfigurationError, match=r"unknown runner 'kubernetes'; known runners: docker, local, ray, slurm"):
        runners.get_runner(settings.model_copy(update={"runner": "kubernetes"}))
    built = []
    runners.register_runner("kubernetes", lambda s: built.append(s) or LocalRunner(s))
    assert isinstance(runners.get_runner(settings.model_copy(update={"runner": "kubernetes"})), LocalRunner)
    assert len(built) == 1
    with pytest.raises(ValueError, match="already registered"):
        runners.register_runner("local", LocalRunner)
