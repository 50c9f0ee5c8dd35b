"""The orchestrator image as docker-compose builds and runs it: ``docker/orchestrator.Dockerfile``
built from the checkout through its ``.dockerignore`` (on the local base image: no registry here),
then ``pytrain orchestrate`` in that container trains a queued task with the docker runner.

The container reaches the test PostgreSQL through the server's Unix socket folder, mounted at the
same path (it needs no network at all), and the host's engine through the mounted Docker socket;
the task folders, sources and repository are host folders mounted at the image's ``/app/...``
paths, so the runner translates them into host paths for the training container (its own bind
mounts), as under compose. The training image is the session's (``train_image``): the image's copy
of docker/ and app/pytrain/ hashes to the same tag, so nothing is rebuilt in the container.

Budget (measured on 2 cores, base image cached): the orchestrator image build ~25 s, the tiny task
in the container ~15-20 s.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "orchestrator_image"
WORKER_ID = "compose-host-test"
TASK = {
    "model_name": MODEL, "sources": ["dataset1"], "classes": ["cooking", "drinking", "eating", "walking"], "architecture": "tiny",
    "num_frames": 4, "height": 32, "width": 32, "epochs": 1, "batch_size": 8, "learning_rate": 0.003,
}


def _socket_folder(database_url: str) -> Path:
    from sqlalchemy.engine import make_url

    host = make_url(database_url).query.get("host")
    if not host or not str(host).startswith("/"):
        pytest.skip("the test database is not on a Unix socket (PYTRAIN_TEST_DATABASE_URL names a TCP server)")
    return Path(str(host))


def _host_memlock() -> int:
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _wait_exit(container: Any, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            return int(container.attrs["State"]["ExitCode"])
        time.sleep(1)
    raise AssertionError(f"the orchestrator did not exit in {seconds} s:\n{container.logs(tail=60).decode(errors='replace')}")


def test_orchestrator_image_builds_from_the_checkout_and_trains_a_task_with_the_docker_runner(
    orchestrator_image, train_image, docker_client, docker_tracker, docker_base_image, settings, engine, database_url,
    synthetic_sources,
):
    from docker.types import Mount

    from pytrain.db import TaskQueue
    from pytrain.sources import sync_sources

    shutil.copytree(synthetic_sources / "dataset1", settings.sources_dir / "dataset1")
    for dirpath, _, _ in os.walk(settings.sources_dir):
        os.chmod(dirpath, 0o755)
    sync_sources(settings, engine=engine)
    task_id = TaskQueue(engine).submit(TASK)
    socket_folder = _socket_folder(database_url)

    container = docker_tracker.track_container(docker_client.containers.run(
        orchestrator_image, command=["orchestrate", "--exit-when-idle"], detach=True, network_mode="none",
        environment={
            "PYTRAIN_DATABASE_URL": database_url, "PYTRAIN_WORKER_ID": WORKER_ID, "PYTRAIN_BASE_IMAGE": docker_base_image,
            "PYTRAIN_SHM_SIZE": "256m", "PYTRAIN_CONTAINER_MEMORY": "3g", "PYTRAIN_CONTAINER_MEMLOCK": str(_host_memlock()),
            "PYTRAIN_LEASE_SECONDS": "20", "PYTRAIN_HEARTBEAT_SECONDS": "0.5", "PYTRAIN_POLL_SECONDS": "0.5",
        },
        mounts=[
            Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind"),
            Mount(str(socket_folder), str(socket_folder), type="bind"),
            Mount("/app/sources", str(settings.sources_dir), type="bind", read_only=True),
            *(Mount(f"/app/{name}", str(getattr(settings, f"{name}_dir")), type="bind") for name in ("model_tasks", "model_repo", "results")),
        ],
    ))
    code = _wait_exit(container, 600)
    logs = container.logs().decode(errors="replace")
    print(f"\norchestrator container log (tail):\n{logs[-1500:]}")

    row = TaskQueue(engine).get(task_id)
    train_log = Path(settings.model_tasks_dir, Path(row["task_dir"] or "/none").name, "train.log")
    assert (code, row["status"]) == (0, "succeeded"), f"{row['error']}\n{logs[-3000:]}\n{train_log.read_text()[-2000:] if train_log.is_file() else ''}"
    assert (settings.model_repo_dir / MODEL / str(row["version"]) / "model.onnx").is_file()
    # the image's copy of docker/ and app/pytrain/ hashes to the session's tag: nothing was rebuilt
    assert f"training image {train_image.tag} exists; no build" in logs
    # no bind mount holds the orchestrator's clip cache: the run cached in its task folder, and said why
    assert "is on none of this container's bind mounts" in logs
    assert any(Path(settings.model_tasks_dir, Path(row["task_dir"]).name, "clip_cache").iterdir())
