"""The real training entrypoint in the training image: the docker runner trains the tiny model on
the session's synthetic mp4 clips and leaves model.onnx, tensor_spec.json and metrics.json."""

from __future__ import annotations

import json
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import pytest

from fixtures.clips import write_task
from pytrain.runners.base import Outcome, PreparedTask
from pytrain.settings import Settings
from pytrain.spec import METRICS, MODEL_ONNX, PROGRESS, TENSOR_SPEC, TaskSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def readable_sources(synthetic_sources: Path, tmp_path: Path) -> Path:
    """A copy of the session's dataset that the image's non-root user (uid 1000) can read."""
    root = tmp_path / "sources"
    shutil.copytree(synthetic_sources, root)
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    return root


def write_tiny_task(task_dir: Path, sources_root: Path, task_id: int) -> TaskSpec:
    return write_task(task_dir, sources_root, task_id=task_id, model_name="docker_tiny", epochs=2)


def test_docker_runner_trains_the_tiny_model(docker_client, docker_tracker, train_image, docker_context, synthetic_sources, tmp_path):
    from pytrain.runners.docker import DockerRunner

    sources = readable_sources(synthetic_sources, tmp_path)
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    settings = Settings(sources_dir=sources, model_tasks_dir=tmp_path / "model_tasks", shm_size="256m",
                        container_memory="3g", container_memlock=-1 if hard == resource.RLIM_INFINITY else hard)
    task_dir = settings.model_tasks_dir / "task-501-docker_tiny"
    spec = write_tiny_task(task_dir, sources, 501)
    runner = DockerRunner(settings, client=docker_client, image=train_image.tag,
                          environment={"PYTRAIN_NUM_WORKERS": "0", "OMP_NUM_THREADS": "1"})
    started = time.monotonic()
    result = runner.run(PreparedTask(spec=spec, task_dir=task_dir, sources_root=sources, timeout_seconds=600), threading.Event())
    print(f"\ntiny model trained in its container in {time.monotonic() - started:.1f} s")
    log = (task_dir / "train.log").read_text()
    assert result.outcome is Outcome.SUCCEEDED, f"{result}\n{log[-3000:]}"
    for name in (MODEL_ONNX, TENSOR_SPEC, METRICS):
        assert (task_dir / name).is_file(), name
    events = [json.loads(line)["event"] for line in (task_dir / PROGRESS).read_text().splitlines() if line.strip()]
    assert events[0] == "start" and events[-1] == "done" and events.count("epoch") == 2
    metrics = json.loads((task_dir / METRICS).read_text())
    assert metrics["torch_version"] == "2.13.0+cpu"  # trained by the image's (base) torch
