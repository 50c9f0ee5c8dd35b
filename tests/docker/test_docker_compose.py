"""docker-compose.yml and .env.example: validated by docker-compose itself, and the structure the
issue asks for (healthy database first, migrations, mounts, Triton ports and explicit control)."""

from __future__ import annotations

import re
import subprocess

import pytest

from fixtures.compose import ENV_EXAMPLE, MAIN, ROOT, TEST_PASSWORD, WORKER, compose_config, resolved, write_env

yaml = pytest.importorskip("yaml")

COMPOSE = MAIN


def test_compose_config_validates_with_an_env_made_from_env_example(tmp_path):
    services = resolved(COMPOSE, write_env(tmp_path / ".env"))["services"]
    assert set(services) == {"postgres", "orchestrator", "triton", "mlflow", "console"}
    env = services["orchestrator"]["environment"]
    assert env["PYTRAIN_DATABASE_URL"] == f"postgresql+psycopg://pytrain:{TEST_PASSWORD}@postgres:5432/pytrain"


@pytest.mark.parametrize("compose_file", [MAIN, WORKER], ids=lambda p: p.name)
def test_env_example_as_shipped_is_refused_until_a_database_password_is_set(compose_file, tmp_path):
    """`cp .env.example .env && docker-compose up` must not start a database with a known password:
    the example has none, and compose refuses an empty one as it refuses a missing one."""
    assert re.search(r"^POSTGRES_PASSWORD=$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    for env_file in (ENV_EXAMPLE, write_env(tmp_path / "empty.env", POSTGRES_PASSWORD=""),
                     write_env(tmp_path / "missing.env", drop=("POSTGRES_PASSWORD",))):
        proc = compose_config(compose_file, env_file)
        assert proc.returncode != 0 and "set POSTGRES_PASSWORD in .env" in proc.stderr, (env_file.name, proc.stderr)


def test_ports_are_published_on_loopback_unless_an_address_is_set(tmp_path):
    services = resolved(COMPOSE, write_env(tmp_path / "default.env"))["services"]
    assert services["postgres"]["ports"] == ["127.0.0.1:5432:5432/tcp"]
    assert sorted(services["triton"]["ports"]) == ["127.0.0.1:8000:8000/tcp", "127.0.0.1:8001:8001/tcp", "127.0.0.1:8002:8002/tcp"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000/tcp"]
    assert services["console"]["ports"] == ["127.0.0.1:8080:8080/tcp"]

    lan = write_env(tmp_path / "lan.env", POSTGRES_BIND_ADDRESS="10.0.0.5", TRITON_BIND_ADDRESS="10.0.0.5")
    services = resolved(COMPOSE, lan)["services"]
    assert services["postgres"]["ports"] == ["10.0.0.5:5432:5432/tcp"]
    assert sorted(services["triton"]["ports"]) == ["10.0.0.5:8000:8000/tcp", "10.0.0.5:8001:8001/tcp", "127.0.0.1:8002:8002/tcp"]


def test_compose_structure():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]

    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"] and "pgdata" in compose["volumes"]

    orchestrator = services["orchestrator"]
    assert orchestrator["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pytrain db upgrade && exec pytrain orchestrate" in orchestrator["entrypoint"][-1]
    volumes = orchestrator["volumes"]
    for expected in ("./sources:/app/sources", "./model_repo:/app/model_repo", "./model_tasks:/app/model_tasks",
                     "./results:/app/results", "/var/run/docker.sock:/var/run/docker.sock"):
        assert expected in volumes
    key_mounts = [v for v in volumes if "/run/secrets/ngc_api.key" in v]
    assert len(key_mounts) == 1 and key_mounts[0].endswith(":ro")
    env = orchestrator["environment"]
    assert env["PYTRAIN_RUNNER"] == "docker" and env["PYTRAIN_NGC_API_KEY_FILE"] == "/run/secrets/ngc_api.key"
    assert not any("API_KEY=" in str(v) or "nvapi-" in str(v) for v in env.values() if v)  # the key itself never in env
    assert orchestrator["build"]["dockerfile"] == "docker/orchestrator.Dockerfile"
    # stable worker id across restarts (orphan cleanup), unique per host (tests/test_compose_hosts.py)
    assert orchestrator["environment"]["PYTRAIN_WORKER_ID"].startswith("${PYTRAIN_HOST_NAME:?")

    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    assert "--model-repository=/models" in triton["command"] and "--model-control-mode=explicit" in triton["command"]
    assert "./model_repo:/models:ro" in triton["volumes"]
    assert {p.split(":")[-1] for p in triton["ports"]} == {"8000", "8001", "8002"}
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]

    mlflow = services["mlflow"]  # MLflow's server on the same PostgreSQL (its own database), artifacts in a volume
    assert mlflow["entrypoint"][:3] == ["pytrain", "tracking", "ui"]
    assert mlflow["environment"]["PYTRAIN_DATABASE_URL"] == orchestrator["environment"]["PYTRAIN_DATABASE_URL"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "mlflow-artifacts:/app/.pytrain/mlflow-artifacts" in mlflow["volumes"] and "mlflow-artifacts" in compose["volumes"]
    assert mlflow["build"]["args"]["PYTRAIN_EXTRAS"] == orchestrator["build"]["args"]["PYTRAIN_EXTRAS"] == "orchestrator,tracking,sweep"
    assert orchestrator["environment"]["PYTRAIN_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_env_example_documents_every_interpolated_variable():
    import re

    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert names <= documented, names - documented


def test_dockerfiles_pin_base_images_and_run_training_as_non_root():
    train = (ROOT / "docker" / "train.Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3$", train, re.MULTILINE)
    assert 'ENTRYPOINT ["python", "-m", "pytrain.training"]' in train
    assert re.search(r"^USER \$\{PYTRAIN_UID\}", train, re.MULTILINE)
    assert "--no-index" in train
    orchestrator = (ROOT / "docker" / "orchestrator.Dockerfile").read_text()
    assert orchestrator.startswith("#") and re.search(r"^ARG BASE_IMAGE=python:3\.11-slim\nFROM \$\{BASE_IMAGE\}$", orchestrator, re.MULTILINE)
    assert "torch" not in orchestrator.split("pip install", 1)[1].split("\n", 1)[0]





def test_compose_passes_the_triton_control_key_to_triton_and_the_orchestrator_as_a_secret(tmp_path):
    """The key file is a secret of both services; Triton's entrypoint appends it to the restricted-API
    flags of both protocols (run here with sh and `echo` standing in for tritonserver)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert compose["secrets"]["triton_control_key"]["file"] == "${TRITON_CONTROL_KEY_FILE:-./.pytrain/triton_control.key}"
    assert "triton_control_key" in services["triton"]["secrets"] and "triton_control_key" in services["orchestrator"]["secrets"]
    assert services["orchestrator"]["environment"]["PYTRAIN_TRITON_CONTROL_KEY_FILE"] == "/run/secrets/triton_control_key"
    assert not any("CONTROL_KEY=" in str(v) for v in services["orchestrator"]["environment"].values() if v)
    assert [port.split("}", 1)[0] + "}" for port in services["triton"]["ports"]] == [
        "${TRITON_BIND_ADDRESS:-127.0.0.1}", "${TRITON_BIND_ADDRESS:-127.0.0.1}", "${TRITON_METRICS_BIND_ADDRESS:-127.0.0.1}"]

    entrypoint = services["triton"]["entrypoint"]
    assert entrypoint[:3] == ["/opt/nvidia/nvidia_entrypoint.sh", "/bin/sh", "-c"]
    key_file = tmp_path / "triton_control_key"
    key_file.write_text("k3y-from-the-secret-file\n")
    script = entrypoint[3].replace("$$", "$").replace("/run/secrets/triton_control_key", str(key_file))
    proc = subprocess.run(["/bin/sh", "-c", script, entrypoint[4], "echo", *services["triton"]["command"][1:]],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args[:2] == ["--model-repository=/models", "--model-control-mode=explicit"]
    assert args[-2:] == [
        "--grpc-restricted-protocol=model-repository,model-config:pytrain-control-key=k3y-from-the-secret-file",
        "--http-restricted-api=model-repository,model-config:pytrain-control-key=k3y-from-the-secret-file",
    ]
