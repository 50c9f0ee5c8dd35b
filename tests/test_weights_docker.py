"""The docker runner hands the weights folder (PYTRAIN_TORCH_HOME) to training read-only, as TORCH_HOME.

Runs a stand-in command in the real training image on a real Docker engine (the session's
``train_image``, shared with tests/docker). Budget: ~30 s once the image exists (27 s measured
on 2 busy cores; the image build, ~100 s, is the session's, shared with tests/docker).
"""

from __future__ import annotations

import resource
import threading

import pytest

from pytrain.runners.base import Outcome, PreparedTask
from pytrain.settings import Settings
from pytrain.spec import MANIFEST, TaskSpec
from pytrain.weights import PRETRAINED_WEIGHTS

pytestmark = pytest.mark.docker


def test_docker_runner_mounts_the_weights_folder_read_only_as_torch_home(docker_client, docker_tracker, docker_context, tmp_path,
                                                                          train_image):
    from pytrain.runners.docker import DockerRunner

    settings = Settings(data_dir=tmp_path / "data", sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "model_tasks",
                        model_repo_dir=tmp_path / "model_repo", results_dir=tmp_path / "results", torch_home=tmp_path / "weights",
                        ngc_api_key_file=tmp_path / "absent-api.key", shm_size="64m")
    weights_file = PRETRAINED_WEIGHTS["r3d_18"].path(settings.torch_home)
    weights_file.parent.mkdir(parents=True)
    weights_file.write_bytes(b"weights")
    settings.sources_dir.mkdir()
    spec = TaskSpec(task_id=301, model_name="m301", class_list=["a", "b"])
    task_dir = settings.model_tasks_dir / "task-301-m301"
    task_dir.mkdir(parents=True)
    spec.save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    task = PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir)
    code = r"""
import os, torch.hub
print("hub", torch.hub.get_dir())
print("file", open(os.path.join(torch.hub.get_dir(), "checkpoints", "r3d_18-b3b3357e.pth")).read())
try:
    open(os.path.join(os.environ["TORCH_HOME"], "new.pth"), "w")
    print("weights writable")
except OSError:
    print("weights read-only")
"""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    runner = DockerRunner(settings, client=docker_client, image=train_image.tag, context_dir=docker_context,
                          memlock_bytes=-1 if hard == resource.RLIM_INFINITY else hard, entrypoint=["python", "-c", code], command=[])
    result = runner.run(task, threading.Event())
    log = task.log_path.read_text()
    assert result.outcome is Outcome.SUCCEEDED, (result, log)
    assert "hub /opt/torch-home/hub" in log and "file weights" in log and "weights read-only" in log
    assert sorted(p.name for p in weights_file.parent.iterdir()) == [weights_file.name]
