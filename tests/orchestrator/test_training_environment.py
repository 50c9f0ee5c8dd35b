"""A training process never sees a secret or a database variable: one rule
(``pytrain.runners.base.is_secret_variable``) for the local and Slurm runners' inherited
environment and the docker runner's container environment. A real local-runner subprocess dumps
the environment it got."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from pytrain.errors import ConfigurationError
from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.runners.base import is_secret_variable
from pytrain.runners.local import training_environment
from pytrain.spec import TaskSpec

#: What a worker's environment may hold that training must not see.
SECRETS = {
    "PGPASSWORD": "pg-secret", "PGHOST": "db.internal", "PGUSER": "pytrain", "PGPASSFILE": "/root/.pgpass",
    "PYTRAIN_DATABASE_URL": "postgresql://pytrain:pw@db/pytrain", "DATABASE_URL": "postgresql://u:pw@db/x",
    "PYTRAIN_TRITON_CONTROL_KEY": "k1", "PYTRAIN_TRITON_INFERENCE_KEY": "k2", "NGC_API_KEY": "nvapi-x",
    "HF_TOKEN": "hf_x", "GITHUB_TOKEN": "ghp_x", "MY_SECRET": "s", "DB_PASSWORD": "pw", "db_password": "pw",
    "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "t", "AWS_PROFILE": "prod",
    "SECRET_KEY_BASE": "x", "WANDB_API_KEY": "x", "SENTRY_DSN": "https://k@sentry/1",
}
#: What training needs and must keep.
KEPT = {"PATH", "HOME", "PWD", "CUDA_VISIBLE_DEVICES", "TORCH_HOME", "PYTRAIN_DECODER", "PYTRAIN_NUM_WORKERS", "OMP_NUM_THREADS",
        "NCCL_DEBUG", "MASTER_ADDR", "SLURM_JOB_ID", "SSH_AUTH_SOCK", "KEYBOARD_LAYOUT", "PYTHONHASHSEED", "LANG"}

DUMP_ENVIRONMENT = "import json, os, sys; open(sys.argv[sys.argv.index('--task-dir') + 1] + '/environ.json', 'w').write(json.dumps(dict(os.environ)))"


def test_the_rule_withholds_secrets_and_database_variables_and_keeps_the_rest():
    assert sorted(name for name in SECRETS if not is_secret_variable(name)) == []
    assert sorted(name for name in KEPT if is_secret_variable(name)) == []


def test_training_environment_has_no_secret(settings, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = training_environment(settings)
    assert set(SECRETS) & set(env) == set()
    assert env["OMP_NUM_THREADS"] == "1" and env["TORCH_HOME"] == str(settings.torch_home)


def test_a_local_training_process_does_not_see_secrets(settings, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTRAIN_TEST_KEPT", "yes")
    task_dir = settings.model_tasks_dir / "task-1-kitchen"
    task_dir.mkdir(parents=True)
    settings.sources_dir.mkdir(parents=True, exist_ok=True)
    task = PreparedTask(spec=TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"]), task_dir=task_dir,
                        sources_root=settings.sources_dir)

    result = LocalRunner(settings, command=[sys.executable, "-c", DUMP_ENVIRONMENT]).run(task, threading.Event())

    assert result.outcome is Outcome.SUCCEEDED, task.log_path.read_text()
    seen = json.loads((task_dir / "environ.json").read_text())
    assert sorted(set(SECRETS) & set(seen)) == []
    assert not [value for value in SECRETS.values() if value in seen.values() and len(value) > 3]
    assert seen["PYTRAIN_TEST_KEPT"] == "yes" and seen["PYTHONUNBUFFERED"] == "1"


@pytest.mark.docker
def test_the_docker_runner_refuses_a_secret_in_the_container_environment(docker_client, tmp_path):
    from pytrain.runners.docker import DockerRunner
    from pytrain.settings import Settings

    settings = Settings(sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "model_tasks", data_dir=tmp_path / "data",
                        model_repo_dir=tmp_path / "model_repo", results_dir=tmp_path / "results")
    with pytest.raises(ConfigurationError) as raised:
        DockerRunner(settings, client=docker_client, environment={"OMP_NUM_THREADS": "1", "HF_TOKEN": "hf_x", "PGPASSWORD": "pw"})
    assert raised.value.message == ("DockerRunner(environment=...): HF_TOKEN, PGPASSWORD look like secrets, "
                                    "which a training process never gets")
    assert "hf_x" not in str(raised.value) and "pw" not in str(raised.value).replace("PGPASSWORD", "")
    assert DockerRunner(settings, client=docker_client, environment={"OMP_NUM_THREADS": "1"}).environment == {"OMP_NUM_THREADS": "1"}
