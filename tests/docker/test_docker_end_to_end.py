"""End to end on real boundaries: one inserted row -> orchestrator -> docker runner (content-hash
image on the local base) -> the training container trains the tiny model on real mp4 clips ->
published into Triton's repository -> the real tritonserver answers a prediction.

And the crash case: an orchestrator process killed (SIGKILL) mid-task leaves its container
running; a restarted orchestrator with the same worker id removes the orphan, re-queues the task
and finishes it.

Needs every part: PostgreSQL (``fixtures.db``), tritonserver (``fixtures.triton``), a Docker
engine and the test base image (``fixtures.docker``).
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.triton, pytest.mark.slow]

MODEL = "docker_e2e"
ROW = {
    "sources": ["dataset1"], "classes": ["cooking", "drinking", "eating", "walking"], "architecture": "tiny",
    "num_frames": 8, "height": 32, "width": 32, "epochs": 2, "batch_size": 4, "learning_rate": 0.003,
}


def _host_memlock() -> int:
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _insert_row(engine: Any, model_name: str) -> int:
    """The public API: one INSERT into training_tasks."""
    from sqlalchemy import text

    with engine.begin() as conn:
        return int(conn.execute(
            text("INSERT INTO training_tasks (model_name, sources, classes, architecture, num_frames, height, width, epochs, "
                 "batch_size, learning_rate) VALUES (:model_name, :sources, :classes, :architecture, :num_frames, :height, "
                 ":width, :epochs, :batch_size, :learning_rate) RETURNING id"),
            {"model_name": model_name, **ROW},
        ).scalar_one())


def _row_json(engine: Any, task_id: int) -> str:
    from sqlalchemy import text

    with engine.begin() as conn:
        return conn.execute(text("SELECT row_to_json(t)::text FROM training_tasks t WHERE id = :id"), {"id": task_id}).scalar_one()


@pytest.fixture
def e2e_settings(settings, engine, triton_server, synthetic_sources, docker_base_image, tmp_path):
    """The db fixture's settings, switched to the docker runner, publishing into the session's
    Triton, with the synthetic dataset registered and readable by the image's user."""
    from pytrain.sources import sync_sources

    shutil.copytree(synthetic_sources / "dataset1", settings.sources_dir / "dataset1")
    for dirpath, _, _ in os.walk(settings.sources_dir):
        os.chmod(dirpath, 0o755)
    key_file = tmp_path / "api.key"
    key_file.write_text("nvapi-" + secrets.token_hex(24) + "\n")
    updated = settings.model_copy(update=dict(
        runner="docker", base_image=docker_base_image, shm_size="256m", container_memory="3g",
        container_memlock=_host_memlock(), model_repo_dir=triton_server.model_repository,
        triton_grpc_url=triton_server.grpc_url, triton_control_key=triton_server.control_key, ngc_api_key_file=key_file,
        lease_seconds=20.0,
    ))
    sync_sources(updated, engine=engine)
    return updated


@pytest.fixture
def new_train_images(docker_client):
    """Remove training images a test's orchestrators built (their tags follow the checkout)."""
    from pytrain.runners.images import LABEL_COMPONENT

    before = {i.id for i in docker_client.images.list(filters={"label": f"{LABEL_COMPONENT}=train"})}
    yield
    import docker.errors

    for image in docker_client.images.list(filters={"label": f"{LABEL_COMPONENT}=train"}):
        if image.id not in before:
            try:
                docker_client.images.remove(image.id, force=True)
            except docker.errors.APIError:
                pass


def _predict(triton_server: Any, sources: Path) -> list[Any]:
    from pytrain.client import TritonClient

    clip = sorted((sources / "dataset1").glob("eating*/*.mp4"))[0]
    with TritonClient(triton_server.grpc_url) as client:
        return client.predict(MODEL, [clip], top_k=4)


def test_inserted_row_is_trained_in_a_container_published_and_served(
    e2e_settings, engine, docker_client, docker_tracker, docker_context, train_image, triton_server, tmp_path,
):
    from pytrain.db import TaskQueue
    from pytrain.orchestrator import Orchestrator
    from pytrain.runners.docker import DockerRunner

    task_id = _insert_row(engine, MODEL)
    runner = DockerRunner(e2e_settings, client=docker_client, context_dir=docker_context,
                          environment={"PYTRAIN_NUM_WORKERS": "0", "OMP_NUM_THREADS": "1"})
    started = time.monotonic()
    assert Orchestrator(e2e_settings, engine=engine, runner=runner).run(exit_when_idle=True) == 1
    print(f"\nrow -> container -> published in {time.monotonic() - started:.1f} s "
          f"(image {runner.last_image_result.tag}, built={runner.last_image_result.built})")

    row = TaskQueue(engine).get(task_id)
    task_dir = Path(row["task_dir"])
    assert row["status"] == "succeeded", f"{row['error']}\n{(task_dir / 'train.log').read_text()[-3000:]}"
    assert row["version"] == 1 and row["progress"]["event"] == "done"
    assert (e2e_settings.model_repo_dir / MODEL / "1" / "model.onnx").is_file()

    [predictions] = _predict(triton_server, e2e_settings.sources_dir)
    labels = [p.label for p in predictions]
    assert sorted(labels) == ROW["classes"]
    assert abs(sum(p.probability for p in predictions) - 1.0) < 1e-3

    for key in (e2e_settings.ngc_api_key_file.read_text().strip(), triton_server.control_key.get_secret_value()):
        assert key not in _row_json(engine, task_id)
        assert key not in (task_dir / "train.log").read_text()
    assert docker_client.containers.list(all=True, filters={"label": f"org.pytrain.task-id={task_id}"}) == []


def test_orchestrator_killed_mid_task_leaves_an_orphan_that_a_restart_removes_and_finishes(
    e2e_settings, engine, docker_client, docker_tracker, docker_context, train_image, triton_server, new_train_images, tmp_path,
):
    from pytrain.db import TaskQueue
    from pytrain.orchestrator import Orchestrator
    from pytrain.runners.docker import DockerRunner

    model = MODEL + "_crash"
    task_id = _insert_row(engine, model)
    worker_id = "e2e-host-cpu"
    s = e2e_settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")},
        "PYTRAIN_DATABASE_URL": s.database_url.get_secret_value(), "PYTRAIN_RUNNER": "docker", "PYTRAIN_WORKER_ID": worker_id,
        "PYTRAIN_SOURCES_DIR": str(s.sources_dir), "PYTRAIN_MODEL_TASKS_DIR": str(s.model_tasks_dir),
        "PYTRAIN_MODEL_REPO_DIR": str(s.model_repo_dir), "PYTRAIN_RESULTS_DIR": str(s.results_dir), "PYTRAIN_DATA_DIR": str(s.data_dir),
        "PYTRAIN_BASE_IMAGE": s.base_image, "PYTRAIN_SHM_SIZE": s.shm_size, "PYTRAIN_CONTAINER_MEMLOCK": str(s.container_memlock),
        "PYTRAIN_NGC_API_KEY_FILE": str(s.ngc_api_key_file), "PYTRAIN_LEASE_SECONDS": "20", "PYTRAIN_HEARTBEAT_SECONDS": "0.5",
        "PYTRAIN_POLL_SECONDS": "0.5", "PYTRAIN_TRITON_GRPC_URL": s.triton_grpc_url,
    }
    log = open(tmp_path / "orchestrator-1.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "orchestrate", "--exit-when-idle"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        containers: list[Any] = []
        while time.monotonic() < deadline and not containers and proc.poll() is None:
            containers = docker_client.containers.list(filters={"label": f"org.pytrain.task-id={task_id}", "status": "running"})
            time.sleep(0.5)
        assert containers, f"no training container appeared:\n{(tmp_path / 'orchestrator-1.log').read_text()[-3000:]}"
        time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crashed host: no cleanup runs
        proc.wait(timeout=30)
        log.close()
    orphan = containers[0]
    orphan.reload()
    assert orphan.status == "running"  # the crash left it behind
    assert TaskQueue(engine).get(task_id)["status"] == "running"

    runner = DockerRunner(e2e_settings, client=docker_client, context_dir=docker_context, worker_id=worker_id,
                          environment={"PYTRAIN_NUM_WORKERS": "0", "OMP_NUM_THREADS": "1"})
    worker = Orchestrator(e2e_settings, engine=engine, runner=runner, worker_id=worker_id)
    worker.start()  # cleanup_orphans + re-queue
    assert docker_client.containers.list(all=True, filters={"id": orphan.id}) == []
    row = TaskQueue(engine).get(task_id)
    assert row["status"] == "queued", row
    assert worker.run(exit_when_idle=True) == 1
    row = TaskQueue(engine).get(task_id)
    assert row["status"] == "succeeded", f"{row['error']}\n{(Path(row['task_dir']) / 'train.log').read_text()[-3000:]}"
    assert (e2e_settings.model_repo_dir / model / str(row["version"]) / "model.onnx").is_file()
    key = e2e_settings.ngc_api_key_file.read_text().strip()
    assert key not in _row_json(engine, task_id)


def _fault_runner(settings: Any, client: Any, context: Path, code: str, **overrides: Any) -> Any:
    from pytrain.runners.docker import DockerRunner

    return DockerRunner(settings.model_copy(update=overrides) if overrides else settings, client=client, context_dir=context,
                        entrypoint=["python", "-c", code], command=[], stop_grace_seconds=2)


def test_container_faults_are_recorded_in_the_task_row(e2e_settings, engine, docker_client, docker_tracker, docker_context, train_image):
    """Exit 1 -> failed with the stderr tail; OOM-killed -> "out of memory (limit 64m)";
    timeout -> timed out; cancelled through the database mid-run -> cancelled within seconds."""
    from pytrain.db import TaskQueue
    from pytrain.orchestrator import Orchestrator

    queue = TaskQueue(engine)

    def run_one(runner: Any, model: str) -> dict[str, Any]:
        task_id = _insert_row(engine, model)
        Orchestrator(e2e_settings, engine=engine, runner=runner).run(exit_when_idle=True)
        return queue.get(task_id)

    row = run_one(_fault_runner(e2e_settings, docker_client, docker_context,
                                "import sys; print('error: no clip could be decoded', file=sys.stderr); sys.exit(1)"), "fault_exit")
    assert row["status"] == "failed"
    assert row["error"].startswith("training container exited with code 1: error: no clip could be decoded (log: ")

    row = run_one(_fault_runner(e2e_settings, docker_client, docker_context,
                                "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))\n", container_memory="64m"), "fault_oom")
    assert row["status"] == "failed"
    assert row["error"].startswith("out of memory (limit 64m)"), row["error"]

    timed = _fault_runner(e2e_settings, docker_client, docker_context, "import time; time.sleep(300)", task_timeout_seconds=2.0)
    row = run_one(timed, "fault_timeout")
    assert row["status"] == "failed" and row["error"].startswith("timed out after 2 s"), row["error"]

    # cancellation through the database while the container runs
    task_id = _insert_row(engine, "fault_cancel")
    runner = _fault_runner(e2e_settings, docker_client, docker_context, "import time; print('epoch 1', flush=True); time.sleep(300)")
    worker = Orchestrator(e2e_settings, engine=engine, runner=runner)
    thread = threading.Thread(target=worker.run, kwargs={"exit_when_idle": True}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not docker_client.containers.list(filters={"label": f"org.pytrain.task-id={task_id}"}):
        time.sleep(0.2)
    assert docker_client.containers.list(filters={"label": f"org.pytrain.task-id={task_id}"}), "the container never started"
    cancelled_at = time.monotonic()
    assert queue.cancel(task_id)
    thread.join(timeout=30)
    print(f"\ncancel in the database -> container gone, row final in {time.monotonic() - cancelled_at:.2f} s")
    assert not thread.is_alive()
    assert queue.get(task_id)["status"] == "cancelled"
    assert docker_client.containers.list(all=True, filters={"label": f"org.pytrain.task-id={task_id}"}) == []
