"""app/container_up.sh: one training container for a task folder, no database, output streamed."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from pytrain.spec import MANIFEST, TaskSpec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "app" / "container_up.sh"


def _env(tmp_path: Path, base_image: str) -> dict[str, str]:
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env.update({
        "PYTRAIN_BASE_IMAGE": base_image, "PYTRAIN_SOURCES_DIR": str(tmp_path / "sources"),
        "PYTRAIN_MODEL_TASKS_DIR": str(tmp_path / "model_tasks"), "PYTRAIN_SHM_SIZE": "64m",
        "PYTRAIN_CONTAINER_MEMLOCK": str(-1 if hard == resource.RLIM_INFINITY else hard),
        "PYTRAIN_NGC_API_KEY_FILE": str(tmp_path / "absent.key"),
    })
    (tmp_path / "sources").mkdir(exist_ok=True)
    return env


def test_help_explains_usage():
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and "--no-build" in out and "TASK_DIR" in out and "--spec" in out


@pytest.mark.docker
def test_container_up_builds_runs_streams_and_exits_with_the_container_code(docker_client, docker_tracker, docker_base_image, docker_wheelhouse, synthetic_sources, tmp_path):
    from pytrain.runners.images import cache_dir

    env = _env(tmp_path, docker_base_image)
    task_dir = tmp_path / "model_tasks" / "task-7-debug"
    task_dir.mkdir(parents=True)
    TaskSpec(task_id=7, model_name="debug", class_list=["a", "b"]).save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    tag = None
    try:
        proc = subprocess.run([str(SCRIPT), "--entrypoint", "python -c \"print('container-up-ok')\"", str(task_dir)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tag = json.loads((cache_dir() / "train-image.json").read_text())["tag"]
        assert "container-up-ok" in proc.stdout  # streamed here ...
        assert "container-up-ok" in (task_dir / "train.log").read_text()  # ... and into the log
        assert "succeeded: exit code 0" in proc.stderr

        # --no-build reuses the recorded image; the container's exit code becomes ours
        spec = json.dumps({"task_id": 8, "model_name": "debug2", "class_list": ["a", "b"]})
        manifest = tmp_path / "m.csv"
        manifest.write_text("path,label,split\n")
        proc = subprocess.run([str(SCRIPT), "--no-build", "--spec", spec, "--manifest", str(manifest),
                               "--entrypoint", "python -c 'import sys; print(\"bad\", file=sys.stderr); sys.exit(3)'"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "failed: exit code 3; training container exited with code 3: bad" in proc.stderr
        (made,) = (tmp_path / "model_tasks").glob("task-8-debug2-*")  # a spec without a uid gets a fresh one
        assert (made / "task.json").is_file()
        assert "Successfully built" not in proc.stderr

        # a training_tasks row on the command line: resolved and split like the orchestrator does
        sources = tmp_path / "sources"
        shutil.copytree(synthetic_sources / "dataset1", sources / "dataset1")
        for dirpath, _, _ in os.walk(sources):
            os.chmod(dirpath, 0o755)
        row = json.dumps({"id": 9, "model_name": "rowspec", "sources": ["dataset1"], "classes": ["cooking", "walking"], "architecture": "tiny"})
        proc = subprocess.run([str(SCRIPT), "--no-build", "--spec", row, "--entrypoint", "sh -c 'tail -n +2 /task/manifest.csv | wc -l'"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == "24"  # 2 cooking folders + 1 walking folder, 8 clips each
        (made,) = (tmp_path / "model_tasks").glob("task-9-rowspec-*")
        assert TaskSpec.load(made).class_list == ["cooking", "walking"]
    finally:
        if tag is not None:  # built from the checkout for this test
            docker_tracker.track_image(tag)
