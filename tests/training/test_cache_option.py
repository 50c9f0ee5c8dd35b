"""The shared clip cache reaches training in both runners (issues 9 and 20).

The local runner: a real training process started by the runner fills the host's shared cache
(``settings.clip_cache_dir``, passed as ``PYTRAIN_CLIP_CACHE_DIR``). The docker runner: the
container it would create (recorded by a client that only records ``containers.create``; creating
and running real containers is covered by ``tests/docker``) gets the task folder at ``/task`` and
the shared cache at ``/clip-cache`` as its only writable mounts, and ``PYTRAIN_CLIP_CACHE_DIR``
pointing there; the task option ``cache: false`` turns the cache off.

Budgets: the local runner test ~15-25 s (one 1-epoch run); the docker test under 1 s.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fixtures.clips import write_task
from fixtures.docker import RecordingDocker
from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.runners.docker import CONTAINER_CLIP_CACHE, CONTAINER_TASK_DIR, DockerRunner
from pytrain.settings import Settings
from pytrain.spec import CLIP_CACHE, METRICS, TaskSpec
from pytrain.task_options import TrainConfig
from pytrain.training.train import cache_folder, get_args_parser
from training.conftest import SMALL, small_rows


def test_the_local_runner_trains_with_the_hosts_shared_cache(tmp_path, small_sources):
    task_dir = tmp_path / "model_tasks" / "task-1-kitchen-0a1b2c3d"
    spec = write_task(task_dir, small_sources, rows=small_rows(small_sources), epochs=1, extra={"hflip": 0.0}, **SMALL)
    prepared = PreparedTask(spec=spec, task_dir=task_dir, sources_root=small_sources, timeout_seconds=600)
    settings = Settings(data_dir=tmp_path / "data", model_tasks_dir=tmp_path / "model_tasks", clip_cache_dir=tmp_path / "shared")

    result = LocalRunner(settings).run(prepared, threading.Event())

    assert result.outcome == Outcome.SUCCEEDED, result
    assert json.loads((task_dir / METRICS).read_text())["train_config"]["cache"] is True  # the default
    cached = list((tmp_path / "shared").rglob("*.clip"))
    assert len(cached) >= len(small_rows(small_sources)), cached  # at least one decoded clip per video
    assert not (task_dir / CLIP_CACHE).exists()


def test_the_docker_runner_mounts_the_shared_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTRAIN_CACHE_DIR", raising=False)
    monkeypatch.delenv("PYTRAIN_CLIP_CACHE_DIR", raising=False)
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
    assert [(m["Target"], m["Source"]) for m in writable] == [(CONTAINER_TASK_DIR, str(task_dir)),
                                                               (CONTAINER_CLIP_CACHE, str(settings.clip_cache_dir))]
    assert created["read_only"] is True and created["environment"]["PYTRAIN_CLIP_CACHE_DIR"] == CONTAINER_CLIP_CACHE
    args = get_args_parser().parse_args(created["command"])
    assert args.task_dir == CONTAINER_TASK_DIR
    # what training inside the container does with the environment and the row's options
    monkeypatch.setenv("PYTRAIN_CLIP_CACHE_DIR", created["environment"]["PYTRAIN_CLIP_CACHE_DIR"])
    args = get_args_parser().parse_args(created["command"])
    assert cache_folder(TrainConfig.from_options(spec.extra), Path(args.task_dir), args.cache_dir) == Path(CONTAINER_CLIP_CACHE)
    assert cache_folder(TrainConfig(cache=False), Path(args.task_dir), args.cache_dir) is None
