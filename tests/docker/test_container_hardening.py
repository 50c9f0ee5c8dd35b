"""Training containers with least privilege, on the real Docker engine; the Docker socket check.

- a running training container is inspected: read-only root, tmpfs /tmp, every capability dropped,
  no-new-privileges, non-root user, no network, pids and memory limits;
- task code that tries to write outside its task folder, fork without bound or reach the network
  fails cleanly through the real orchestrator and PostgreSQL, the reason in the row's ``error``;
- a world-writable Docker socket stops the docker runner before anything starts.

The containers run a stand-in command in the real training image (the runner's ``entrypoint``
override), as ``test_docker_runner.py`` does.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.clips import write_tree
from pytrain.errors import ConfigurationError
from pytrain.runners.base import Outcome, PreparedTask
from pytrain.spec import MANIFEST, TaskSpec

PIDS_LIMIT = 64  # the smallest PYTRAIN_CONTAINER_PIDS_LIMIT allowed


def _host_memlock() -> int:
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _runner(settings: Any, client: Any, image: str, code: str) -> Any:
    from pytrain.runners.docker import DockerRunner

    return DockerRunner(settings, client=client, image=image, memlock_bytes=_host_memlock(),
                        entrypoint=["python", "-c", code], command=[], stop_grace_seconds=1)


@pytest.mark.parametrize("mode, refused", [(0o666, True), (0o777, True), (0o660, False), (0o600, False)])
def test_the_docker_runner_refuses_a_world_writable_socket(tmp_path: Path, mode: int, refused: bool) -> None:
    from pytrain.runners.docker import DockerRunner, check_docker_socket
    from pytrain.settings import Settings

    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    os.chmod(path, mode)
    if not refused:
        check_docker_socket(path)
        return
    with pytest.raises(ConfigurationError) as info:
        DockerRunner(Settings(data_dir=tmp_path / "data"), client=object(), docker_socket=path)  # nothing else is touched
    assert str(info.value) == (
        f"the Docker socket {path} is world-writable (mode {mode:o}): every local user is root on this host "
        f"(hint: chmod 660 {path} (owner root, group docker) and restart the orchestrator; see docs/operations/security.md)"
    )


def test_docker_host_names_the_socket_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytrain.runners.docker import DEFAULT_DOCKER_SOCKET, docker_socket_path

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_socket_path() == DEFAULT_DOCKER_SOCKET
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    assert docker_socket_path() == Path("/run/user/1000/docker.sock")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    assert docker_socket_path() is None


_SHOW_PRIVILEGES = r"""
import os, time
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
for name in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs"):
    print(name, status[name].strip())
print("uid", os.getuid())
open("/tmp/scratch", "w").write("tmpfs is writable")
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.docker
def test_a_running_training_container_has_least_privilege(docker_client, docker_tracker, train_image, tmp_path):
    from pytrain.runners.docker import LABEL_TASK_ID
    from pytrain.settings import Settings

    settings = Settings(
        sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "model_tasks", data_dir=tmp_path / "data",
        shm_size="64m", container_memory="512m", container_pids_limit=PIDS_LIMIT, gpus=None,
    )
    settings.sources_dir.mkdir()
    spec = TaskSpec(task_id=701, model_name="locked", class_list=["a", "b"])
    task_dir = settings.model_tasks_dir / "task-701-locked"
    task_dir.mkdir(parents=True)
    spec.save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    task = PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir)
    cancel = threading.Event()
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_runner(settings, docker_client, train_image.tag, _SHOW_PRIVILEGES).run(task, cancel)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ready" not in (task.log_path.read_text() if task.log_path.exists() else ""):
            time.sleep(0.1)
        log = task.log_path.read_text()
        assert "ready" in log, log
        [container] = docker_client.containers.list(filters={"label": f"{LABEL_TASK_ID}=701"})
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["Tmpfs"] == {"/tmp": "rw,exec,mode=1777"}
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False
        assert host["NetworkMode"] == "none"
        assert host["PidsLimit"] == PIDS_LIMIT
        assert host["Memory"] == 512 * 1024**2 and host["MemorySwap"] == 512 * 1024**2
        # What the process inside sees: no capability at all, no way to gain one, not root.
        for line in ("CapEff 0000000000000000", "CapPrm 0000000000000000", "CapBnd 0000000000000000", "NoNewPrivs 1"):
            assert line in log, log
        assert "uid 1000" in log  # the image's non-root user
    finally:
        cancel.set()
        thread.join(60)
    assert outcome["result"].outcome is Outcome.CANCELLED


# Task code that misbehaves: the model name (in task.json) picks what it tries.
_HOSTILE = r"""
import json, os, socket, sys, time
model = json.load(open("/task/task.json"))["model_name"]
if model == "write_out":
    try:
        open("/etc/escape.txt", "w")
    except OSError as exc:
        print(f"root file system: {exc}", file=sys.stderr)
    open("/sources/escape.txt", "w")
elif model == "fork_bomb":
    while True:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
elif model == "network":
    socket.create_connection(("192.0.2.1", 80), timeout=5)
print("escaped", flush=True)
"""


@pytest.mark.docker
def test_task_code_that_escapes_its_folder_forks_without_bound_or_phones_home_fails_with_the_reason(
    docker_client, docker_tracker, train_image, settings, engine
):
    from pytrain.db import TaskQueue
    from pytrain.orchestrator import Orchestrator
    from pytrain.sources import sync_sources

    write_tree(settings.sources_dir, {"dataset1": {"cooking_a": 3, "drinking_b": 3}})
    for dirpath, _, filenames in os.walk(settings.sources_dir):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    sync_sources(settings, engine=engine)
    settings = settings.model_copy(update={"container_pids_limit": PIDS_LIMIT, "container_memory": "512m", "shm_size": "64m",
                                           "lease_seconds": 30.0})
    queue = TaskQueue(engine)
    ids = {model: queue.submit({"model_name": model, "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
           for model in ("write_out", "fork_bomb", "network")}
    runner = _runner(settings, docker_client, train_image.tag, _HOSTILE)
    assert Orchestrator(settings, engine=engine, runner=runner, publisher=lambda *a, **k: None).run(exit_when_idle=True) == 3

    rows = {model: queue.get(task_id) for model, task_id in ids.items()}
    assert {model: row["status"] for model, row in rows.items()} == dict.fromkeys(ids, "failed")
    assert rows["write_out"]["error"].startswith(
        "training container exited with code 1: OSError: [Errno 30] Read-only file system: '/sources/escape.txt'")
    assert "root file system: [Errno 30] Read-only file system: '/etc/escape.txt'" in rows["write_out"]["error"]
    assert rows["fork_bomb"]["error"].startswith(
        "training container exited with code 1: BlockingIOError: [Errno 11] Resource temporarily unavailable")
    assert rows["network"]["error"].startswith(
        "training container exited with code 1: OSError: [Errno 101] Network is unreachable")
    assert not any("escaped" in row["error"] for row in rows.values())
    assert not (settings.sources_dir / "escape.txt").exists()
    assert docker_client.containers.list(all=True, filters={"label": "org.pytrain.managed"}) == []
