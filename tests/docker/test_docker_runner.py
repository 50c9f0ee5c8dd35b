"""The docker runner on a real Docker engine: limits, faults, cancellation, orphans, image reuse.

The fault tests run a tiny stand-in command in the real training image (the runner's
``entrypoint``/``command`` override), so they need no training. What every runner must do
(the protocol, a stop interrupting the run, ...) is pinned once for all runners in
``tests/orchestrator/test_runner_contract.py``; this file keeps what is the docker runner's own.

Run: ``.venv/bin/python -m pytest tests/docker -q`` (as root the engine is started when missing).
"""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytrain.runners.base import Outcome, PreparedTask
from pytrain.settings import Settings
from pytrain.spec import MANIFEST, TaskSpec

pytestmark = pytest.mark.docker


def _settings(tmp_path: Path, base_image: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        base_image=base_image,
        sources_dir=tmp_path / "sources",
        model_tasks_dir=tmp_path / "model_tasks",
        model_repo_dir=tmp_path / "model_repo",
        results_dir=tmp_path / "results",
        data_dir=tmp_path / "data",
        clip_cache_dir=tmp_path / "clip_cache",
        ngc_api_key_file=tmp_path / "absent-api.key",
        shm_size="64m",
        container_memory=None,
        gpus=None,
    )
    values.update(overrides)
    return Settings(**values)


def _prepared(settings: Settings, task_id: int, *, timeout: float | None = None) -> PreparedTask:
    spec = TaskSpec(task_id=task_id, model_name=f"m{task_id}", class_list=["a", "b"])
    task_dir = settings.model_tasks_dir / f"task-{task_id}-m{task_id}"
    task_dir.mkdir(parents=True, exist_ok=True)
    settings.sources_dir.mkdir(parents=True, exist_ok=True)
    (settings.sources_dir / "readme.txt").write_text("sources\n")
    spec.save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    return PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir, timeout_seconds=timeout)


def _host_memlock() -> int:
    """NVIDIA's memlock=-1 where the host allows it; else the host's hard limit (CI sandboxes)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _runner(settings: Settings, client: Any, context: Path, image: str | None, code: str, **kwargs: Any):
    from pytrain.runners.docker import DockerRunner

    return DockerRunner(
        settings, client=client, image=image, context_dir=context, memlock_bytes=_host_memlock(),
        entrypoint=["python", "-c", code], command=[], stop_grace_seconds=kwargs.pop("stop_grace_seconds", 2), **kwargs,
    )


def test_successful_run_streams_log_and_isolates_container(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    """Exit 0 -> succeeded; output in train.log; sources read-only, task dir and clip cache writable, no network,
    NVIDIA's ulimits and shm size, a pids limit, a non-root user, the base image's torch."""
    code = r"""
import os, resource, socket, subprocess, torch
print("torch", torch.__version__)
print("uid", os.getuid())
print("memlock", resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])
print("stack", resource.getrlimit(resource.RLIMIT_STACK)[0])
st = os.statvfs("/dev/shm"); print("shm", st.f_blocks * st.f_frsize)
print("ifaces", sorted(os.listdir("/sys/class/net")))
try:
    open("/sources/new.txt", "w")
    print("sources writable")
except OSError:
    print("sources read-only")
try:
    open("/opt/x", "w")
    print("rootfs writable")
except OSError:
    print("rootfs read-only")
open("/task/out.txt", "w").write("ok")
open(os.path.join(os.environ["PYTRAIN_CLIP_CACHE_DIR"], "probe.txt"), "w").write("ok")  # the shared clip cache: writable
print(open("/sources/readme.txt").read().strip())
"""
    settings = _settings(tmp_path, "unused", container_pids_limit=128)
    task = _prepared(settings, 101)
    result = _runner(settings, docker_client, docker_context, train_image.tag, code).run(task, threading.Event())
    log = task.log_path.read_text()
    assert result.outcome is Outcome.SUCCEEDED, (result, log)
    assert result.exit_code == 0
    assert "torch 2.13.0+cpu" in log  # the base image's torch was kept
    assert "uid 1000" in log
    assert f"memlock {_host_memlock()}" in log
    assert "stack 67108864" in log
    assert "shm 67108864" in log
    assert "ifaces ['lo']" in log  # network none
    assert "sources read-only" in log
    assert "rootfs read-only" in log
    assert "sources" in log.splitlines()[-1]
    assert (task.task_dir / "out.txt").read_text() == "ok"
    assert (settings.clip_cache_dir / "probe.txt").read_text() == "ok"  # mounted at /clip-cache, writable for uid 1000
    assert docker_client.containers.list(all=True, filters={"label": "org.pytrain.task-id=101"}) == []


def test_container_exiting_1_fails_with_stderr_tail(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    code = "import sys; print('working'); print('boom: dataset is empty', file=sys.stderr); sys.exit(1)"
    settings = _settings(tmp_path, "unused")
    task = _prepared(settings, 102)
    result = _runner(settings, docker_client, docker_context, train_image.tag, code).run(task, threading.Event())
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 1
    assert result.stderr_tail == "boom: dataset is empty"
    assert result.message == "training container exited with code 1: boom: dataset is empty"
    assert result.details["command"][:2] == ["python", "-c"]
    assert "working" in task.log_path.read_text()
    assert docker_client.containers.list(all=True, filters={"label": "org.pytrain.task-id=102"}) == []


def test_memory_limit_oom_kill_is_reported_as_out_of_memory(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    code = "import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"
    settings = _settings(tmp_path, "unused", container_memory="64m")
    task = _prepared(settings, 103, timeout=60)
    result = _runner(settings, docker_client, docker_context, train_image.tag, code).run(task, threading.Event())
    assert result.outcome is Outcome.OUT_OF_MEMORY, result
    assert result.exit_code == 137
    assert result.message == "out of memory (limit 64m); lower batch_size, num_frames or the frame size"


def test_timeout_stops_the_container(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    code = "import time\nprint('started', flush=True)\ntime.sleep(300)\n"
    settings = _settings(tmp_path, "unused")
    task = _prepared(settings, 104, timeout=3)
    started = time.monotonic()
    result = _runner(settings, docker_client, docker_context, train_image.tag, code).run(task, threading.Event())
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == "timed out after 3 s (PYTRAIN_TASK_TIMEOUT_SECONDS)"
    assert 3 <= elapsed < 15, elapsed
    assert "started" in task.log_path.read_text()
    assert docker_client.containers.list(all=True, filters={"label": "org.pytrain.task-id=104"}) == []


def test_cancel_mid_run_stops_within_seconds(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    """SIGTERM reaches python (tini is PID 1), so the stop does not wait for the SIGKILL grace."""
    code = "import time\nprint('epoch 1', flush=True)\ntime.sleep(300)\n"
    settings = _settings(tmp_path, "unused")
    task = _prepared(settings, 105)
    cancel = threading.Event()
    runner = _runner(settings, docker_client, docker_context, train_image.tag, code, stop_grace_seconds=30)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = runner.run(task, cancel)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "epoch 1" not in (task.log_path.read_text() if task.log_path.exists() else ""):
        time.sleep(0.1)
    assert "epoch 1" in task.log_path.read_text(), "the container never started"
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(timeout=30)
    stop_seconds = time.monotonic() - cancelled_at
    print(f"\ncancel -> runner returned in {stop_seconds:.2f} s")
    assert not thread.is_alive()
    assert outcome["result"].outcome is Outcome.CANCELLED
    assert stop_seconds < 10
    assert docker_client.containers.list(all=True, filters={"label": "org.pytrain.task-id=105"}) == []


def _labelled_sleeper(docker_client: Any, docker_tracker: Any, image: str, task_id: int, worker_id: str) -> Any:
    """A running container labelled as ``worker_id``'s training container of ``task_id``."""
    from pytrain.runners.docker import LABEL_MANAGED, LABEL_TASK_ID, LABEL_WORKER

    return docker_tracker.track_container(docker_client.containers.run(
        image, entrypoint=["sleep", "300"], command=[], detach=True, network_mode="none",
        labels={LABEL_MANAGED: "1", LABEL_TASK_ID: str(task_id), LABEL_WORKER: worker_id},
    ))


def test_cleanup_orphans_removes_containers_of_inactive_tasks(docker_client, docker_tracker, train_image, tmp_path, docker_context):
    from pytrain.runners.docker import LABEL_MANAGED, LABEL_TASK_ID

    runner = _runner(_settings(tmp_path, "unused", worker_id="host-a"), docker_client, docker_context, train_image.tag, "pass")
    keep = _labelled_sleeper(docker_client, docker_tracker, train_image.tag, 201, "host-a")
    _labelled_sleeper(docker_client, docker_tracker, train_image.tag, 202, "host-a")  # an orphan: its task is not active
    exited = _labelled_sleeper(docker_client, docker_tracker, train_image.tag, 203, "host-a")
    exited.stop(timeout=0)
    removed = runner.cleanup_orphans({201, 999})
    assert removed == {202, 203}
    remaining = {c.labels[LABEL_TASK_ID] for c in docker_client.containers.list(all=True, filters={"label": LABEL_MANAGED})}
    assert "201" in remaining and "202" not in remaining and "203" not in remaining
    keep.reload()
    assert keep.status == "running"


def test_cleanup_orphans_leaves_a_sibling_workers_containers_running(docker_client, docker_tracker, train_image, tmp_path, docker_context):
    """Two orchestrators on one Docker engine (worker ids host-a and host-b): host-a restarting
    stops its own container of a task it no longer holds, never host-b's, even though host-b's
    task is not in the active set host-a was given."""
    mine = _labelled_sleeper(docker_client, docker_tracker, train_image.tag, 211, "host-a")
    sibling = _labelled_sleeper(docker_client, docker_tracker, train_image.tag, 212, "host-b")
    runner = _runner(_settings(tmp_path, "unused", worker_id="host-a"), docker_client, docker_context, train_image.tag, "pass")
    assert runner.cleanup_orphans(set()) == {211}
    assert docker_client.containers.list(all=True, filters={"id": mine.id}) == []
    sibling.reload()
    assert sibling.status == "running"


def test_a_lost_runs_container_of_the_task_is_removed_before_its_new_run(docker_client, docker_tracker, docker_base_image,
                                                                         tmp_path, docker_context):
    """A worker that died (or lost its lease) leaves its detached container running, holding the task
    folder's run lock; the worker that holds the lease now removes it (by label and mounted folder)
    before its own run. A container of the same task id on another folder (another database's task)
    and other tasks' containers stay."""
    from docker.types import Mount

    from pytrain.runners.docker import LABEL_MANAGED, LABEL_TASK_ID

    settings = _settings(tmp_path, "unused")
    task = _prepared(settings, 211)
    elsewhere = tmp_path / "other-database" / task.task_dir.name
    elsewhere.mkdir(parents=True)

    def start(task_id: int, folder: Path) -> Any:
        return docker_tracker.track_container(docker_client.containers.run(
            docker_base_image, entrypoint=["sleep", "300"], command=[], detach=True, network_mode="none",
            labels={LABEL_MANAGED: "1", LABEL_TASK_ID: str(task_id)}, mounts=[Mount("/task", str(folder), type="bind")],
        ))

    lost, same_id_elsewhere, other = start(211, task.task_dir), start(211, elsewhere), start(212, task.task_dir)
    runner = _runner(settings, docker_client, docker_context, docker_base_image, "pass")
    assert runner.reap_lost_runs(task) == [lost.name]
    left = {c.id for c in docker_client.containers.list(filters={"label": LABEL_MANAGED})}
    assert lost.id not in left and {same_id_elsewhere.id, other.id} <= left
    assert runner.reap_lost_runs(task) == []


def test_second_task_with_unchanged_image_does_not_rebuild(docker_client, docker_tracker, docker_context, tmp_path, train_image, docker_base_image):
    """Both tasks go through the content-hash lookup; neither builds (the session built it)."""
    settings = _settings(tmp_path, docker_base_image)
    times = []
    for task_id in (301, 302):
        task = _prepared(settings, task_id)
        runner = _runner(settings, docker_client, docker_context, None, "print('hello')")
        started = time.monotonic()
        result = runner.run(task, threading.Event())
        times.append(time.monotonic() - started)
        assert result.outcome is Outcome.SUCCEEDED, result
        assert result.details["image"] == train_image.tag
        assert result.details["image_built"] is False
        assert result.details["image_seconds"] < 5
    print(f"\nimage build (session, first task): {train_image.seconds:.1f} s (built={train_image.built}); "
          f"task 301 total {times[0]:.1f} s, task 302 total {times[1]:.1f} s (no rebuild)")


def test_gpu_requests_and_torchrun_command():
    from pytrain.errors import ConfigurationError
    from pytrain.runners.docker import parse_gpus, training_command

    assert parse_gpus(None) == ([], None)
    requests, n = parse_gpus("0,1")
    assert n == 2 and requests[0]["DeviceIDs"] == ["0", "1"] and requests[0]["Capabilities"] == [["gpu"]]
    requests, n = parse_gpus("all")
    assert n == -1 and requests[0]["Count"] == -1
    with pytest.raises(ConfigurationError):
        parse_gpus("0;rm -rf")
    assert training_command(None) == (None, ["--task-dir", "/task", "--sources-root", "/sources"])
    assert training_command(1)[0] is None
    assert training_command(2)[0] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "pytrain.training"]
    assert training_command(-1)[0][2] == "--nproc_per_node=gpu"


def test_host_path_translation_for_an_orchestrator_in_a_container(tmp_path):
    from pytrain.runners.docker import _host_path

    mounts = [("/app/model_tasks", "/srv/pytrain/model_tasks"), ("/app", "/srv/other"), ("/var/run/docker.sock", "/var/run/docker.sock")]
    assert _host_path(Path("/app/model_tasks/task-1-m"), Path("/app/model_tasks"), None, mounts) == "/srv/pytrain/model_tasks/task-1-m"
    assert _host_path(Path("/app/sources"), Path("/app/sources"), None, mounts) == "/srv/other/sources"
    assert _host_path(Path("/app/sources/d1"), Path("/app/sources"), Path("/data/src"), mounts) == "/data/src/d1"
    assert _host_path(tmp_path, tmp_path, None, []) == str(tmp_path.resolve())


def test_training_command_recorded_and_argument_errors_before_any_container(docker_client, docker_tracker, docker_context, tmp_path, train_image):
    """Arguments are checked before anything is created (docker-py's habit)."""
    from pytrain.errors import ConfigurationError, RunnerError
    from pytrain.runners.docker import DockerRunner

    with pytest.raises(ConfigurationError, match="PYTRAIN_CONTAINER_MEMORY"):
        DockerRunner(_settings(tmp_path, "unused", container_memory="lots"), client=docker_client)
    with pytest.raises(ConfigurationError, match="invalid GPU list"):
        DockerRunner(_settings(tmp_path, "unused", gpus="first"), client=docker_client)
    settings = _settings(tmp_path, "unused")
    runner = DockerRunner(settings, client=docker_client, image=train_image.tag, memlock_bytes=_host_memlock(),
                          command=["--help"])
    task = _prepared(settings, 601)
    (task.task_dir / MANIFEST).unlink()
    with pytest.raises(RunnerError, match="manifest.csv is missing"):
        runner.run(task, threading.Event())
    task = _prepared(settings, 602)
    result = runner.run(task, threading.Event())  # the real entrypoint, asked for --help
    assert result.outcome is Outcome.SUCCEEDED, task.log_path.read_text()
    assert result.details["command"] == ["python", "-m", "pytrain.training", "--help"]
    assert "--task-dir" in task.log_path.read_text()
