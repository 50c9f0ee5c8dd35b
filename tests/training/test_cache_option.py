"""The task row's ``options`` ``{"cache": true}`` reaches training in both runners (issue 9).

The local runner: a real training process started by the runner writes the decoded-clip cache
into the task folder. The docker runner: the container it would create (recorded by a client that
only records ``containers.create``; creating and running real containers is covered by
``tests/docker``) gets the task folder as its one writable mount at ``/task``, a command without
``--cache-dir`` and no ``PYTRAIN_CACHE_DIR``, so training caches under ``/task/clip_cache``.

Budgets: the local runner test ~15-25 s (one 1-epoch run); the docker test under 1 s.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fixtures.clips import write_task
from fixtures.docker import RecordingDocker
from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.runners.docker import CONTAINER_TASK_DIR, DockerRunner
from pytrain.settings import Settings
from pytrain.spec import CLIP_CACHE, METRICS, TaskSpec
from pytrain.task_options import TrainConfig
from pytrain.training.train import cache_folder, get_args_parser
from training.conftest import SMALL, small_rows


def test_the_local_runner_trains_with_the_rows_cache_option(tmp_path, small_sources):
    task_dir = tmp_path / "model_tasks" / "task-1-kitchen-0a1b2c3d"
    spec = write_task(task_dir, small_sources, rows=small_rows(small_sources), epochs=1, extra={"hflip": 0.0, "cache": True}, **SMALL)
    prepared = PreparedTask(spec=spec, task_dir=task_dir, sources_root=small_sources, timeout_seconds=600)

    result = LocalRunner(None).run(prepared, threading.Event())

    assert result.outcome == Outcome.SUCCEEDED, result
    assert json.loads((task_dir / METRICS).read_text())["train_config"]["cache"] is True
    cached = list((task_dir / CLIP_CACHE).rglob("*.npy"))
    assert len(cached) >= len(small_rows(small_sources)), cached  # at least one decoded clip per video


def test_the_docker_runner_leaves_the_cache_inside_the_mounted_task_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTRAIN_CACHE_DIR", raising=False)
    settings = Settings(database_url="postgresql+psycopg://pytrain:unused@127.0.0.1:1/pytrain", data_dir=tmp_path / "data",
                        sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "model_tasks", model_repo_dir=tmp_path / "model_repo")
    task_dir = tmp_path / "model_tasks" / "task-1-kitchen-0a1b2c3d"
    task_dir.mkdir(parents=True)
    (tmp_path / "sources").mkdir()
    spec = TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"], extra={"cache": True})
    client = RecordingDocker()
    runner = DockerRunner(settings, client=client, docker_socket=tmp_path / "no.sock")

    _, command_line = runner._create(PreparedTask(spec=spec, task_dir=task_dir, sources_root=tmp_path / "sources"), "pytrain-train:test")

    created = client.created
    writable = [m for m in created["mounts"] if not m["ReadOnly"]]
    assert [(m["Target"], m["Source"]) for m in writable] == [(CONTAINER_TASK_DIR, str(task_dir))]
    assert created["read_only"] is True and "PYTRAIN_CACHE_DIR" not in created["environment"]
    args = get_args_parser().parse_args(created["command"])
    assert (args.task_dir, args.cache_dir) == (CONTAINER_TASK_DIR, None)
    # what training inside the container does with the row's options
    assert cache_folder(TrainConfig.from_options(spec.extra), Path(args.task_dir), args.cache_dir) == Path(CONTAINER_TASK_DIR) / CLIP_CACHE
    assert cache_folder(TrainConfig(), Path(args.task_dir), args.cache_dir) is None
