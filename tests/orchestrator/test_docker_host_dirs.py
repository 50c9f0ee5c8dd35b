"""``PYTRAIN_HOST_SOURCES_DIR`` / ``PYTRAIN_HOST_MODEL_TASKS_DIR`` are settings
(``Settings.host_sources_dir`` / ``host_model_tasks_dir``): an orchestrator in a container names
the Docker host's folders with them, and the docker runner bind-mounts those host paths. The
container is recorded, not created (a real engine runs containers in ``tests/docker``). Under 1 s."""

from __future__ import annotations

from pathlib import Path

from fixtures.docker import RecordingDocker
from pytrain.runners import PreparedTask
from pytrain.runners.docker import CONTAINER_SOURCES_DIR, CONTAINER_TASK_DIR, DockerRunner
from pytrain.settings import Settings
from pytrain.spec import TaskSpec


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "model_tasks")


def test_host_dirs_are_read_from_their_pytrain_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTRAIN_HOST_SOURCES_DIR", "/srv/pytrain/sources")
    monkeypatch.setenv("PYTRAIN_HOST_MODEL_TASKS_DIR", "/srv/pytrain/model_tasks")
    settings = _settings(tmp_path)
    assert (settings.host_sources_dir, settings.host_model_tasks_dir) == (Path("/srv/pytrain/sources"), Path("/srv/pytrain/model_tasks"))

    monkeypatch.setenv("PYTRAIN_HOST_SOURCES_DIR", "")  # set but empty, as a compose file may write it: unset
    monkeypatch.delenv("PYTRAIN_HOST_MODEL_TASKS_DIR")
    settings = _settings(tmp_path)
    assert (settings.host_sources_dir, settings.host_model_tasks_dir) == (None, None)


def test_the_docker_runner_mounts_the_host_dirs_the_settings_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTRAIN_HOST_SOURCES_DIR", "/srv/pytrain/sources")
    monkeypatch.setenv("PYTRAIN_HOST_MODEL_TASKS_DIR", "/srv/pytrain/model_tasks")
    settings = _settings(tmp_path)
    task_dir = settings.model_tasks_dir / "task-1-kitchen-0a1b2c3d"
    task_dir.mkdir(parents=True)
    settings.sources_dir.mkdir()
    client = RecordingDocker()
    runner = DockerRunner(settings, client=client, docker_socket=tmp_path / "no.sock")
    spec = TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"])

    runner._create(PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir), "pytrain-train:test")

    sources = {m["Target"]: m["Source"] for m in client.created["mounts"]}
    assert sources[CONTAINER_SOURCES_DIR] == "/srv/pytrain/sources"
    assert sources[CONTAINER_TASK_DIR] == "/srv/pytrain/model_tasks/task-1-kitchen-0a1b2c3d"
    # an argument still wins over the setting
    runner = DockerRunner(settings, client=client, docker_socket=tmp_path / "no.sock", host_sources_dir=Path("/elsewhere"))
    assert runner.host_sources_dir == Path("/elsewhere")
