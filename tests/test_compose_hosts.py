"""Compose for several GPU hosts, validated by docker-compose itself with an .env made from
.env.example: a worker id per host from .env, PostgreSQL published (on 127.0.0.1 unless an
address is set) with a required password, a second-host file that starts
only an orchestrator pointed at the first host, and the weights folder mounted read-only.

Budget: ~10 s (each `docker-compose config` takes about a second here).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fixtures.compose import ENV_EXAMPLE, MAIN, ROOT, TEST_PASSWORD, WORKER, compose_config, env_example, resolved, write_env
from fixtures.network import TcpProxy

yaml = pytest.importorskip("yaml")

TORCH_HOME = "/app/torch-home"


@pytest.fixture(scope="module")
def env_file(tmp_path_factory):
    """``.env.example`` with a database password (as docs/operations/docker.md says to make ``.env``)."""
    return write_env(tmp_path_factory.mktemp("env") / ".env")


def _mount(service: dict, target: str) -> tuple[str, str, str]:
    """``(source, target, mode)`` of the short-syntax volume mounted at ``target``."""
    [volume] = [v for v in service["volumes"] if v.split(":")[1] == target]
    source, target, *mode = volume.split(":")
    return source, target, mode[0] if mode else "rw"


def test_first_host_publishes_postgres_names_its_worker_and_mounts_weights_read_only(env_file):
    env = env_example()
    services = resolved(MAIN, env_file)["services"]
    assert services["postgres"]["ports"] == [f"127.0.0.1:{env['POSTGRES_PORT']}:5432/tcp"]
    orchestrator = services["orchestrator"]
    assert "hostname" not in orchestrator  # the container's id: the docker runner inspects itself by it
    assert orchestrator["environment"]["PYTRAIN_WORKER_ID"] == env["PYTRAIN_HOST_NAME"]
    assert orchestrator["environment"]["PYTRAIN_TORCH_HOME"] == TORCH_HOME
    source, _, mode = _mount(orchestrator, TORCH_HOME)
    assert (source, mode) == (str((ROOT / env["WEIGHTS_DIR"]).resolve()), "ro")


def test_second_host_runs_only_an_orchestrator_on_the_first_hosts_database_and_triton(env_file):
    env = env_example()
    worker = resolved(WORKER, env_file)
    assert set(worker["services"]) == {"orchestrator"}
    assert "ports" not in worker["services"]["orchestrator"]
    orchestrator = worker["services"]["orchestrator"]
    environment = orchestrator["environment"]
    assert environment["PYTRAIN_DATABASE_URL"] == (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{TEST_PASSWORD}@{env['PYTRAIN_MAIN_HOST']}:"
        f"{env['POSTGRES_PORT']}/{env['POSTGRES_DB']}"
    )
    assert environment["PYTRAIN_TRITON_GRPC_URL"] == f"{env['PYTRAIN_MAIN_HOST']}:{env['TRITON_GRPC_PORT']}"
    # runs are tracked on the first host's mlflow service, published on MLFLOW_PORT (the client is in the image)
    assert environment["PYTRAIN_MLFLOW_TRACKING_URI"] == f"http://{env['PYTRAIN_MAIN_HOST']}:{env['MLFLOW_PORT']}"
    assert resolved(MAIN, env_file)["services"]["mlflow"]["ports"][0].endswith(f":{env['MLFLOW_PORT']}:5000/tcp")
    assert "tracking" in orchestrator["build"]["args"]["PYTRAIN_EXTRAS"].split(",")
    assert environment["PYTRAIN_WORKER_ID"] == env["PYTRAIN_HOST_NAME"]
    assert (environment["PYTRAIN_RUNNER"], environment["PYTRAIN_TORCH_HOME"]) == ("docker", TORCH_HOME)
    assert orchestrator["entrypoint"] == ["pytrain", "orchestrate"]  # migrations are the first host's
    # the shared storage contract: sources and weights read-only, task folders and the repository read-write
    assert _mount(orchestrator, "/app/sources")[2] == "ro" and _mount(orchestrator, TORCH_HOME)[2] == "ro"
    assert _mount(orchestrator, "/app/model_tasks")[2] == "rw" and _mount(orchestrator, "/app/model_repo")[2] == "rw"
    # the same folders, by the same settings, as on the first host
    first = resolved(MAIN, env_file)["services"]["orchestrator"]
    for target in ("/app/sources", "/app/model_repo", "/app/model_tasks", "/app/results", TORCH_HOME):
        assert _mount(orchestrator, target)[0] == _mount(first, target)[0]


def test_each_host_gets_its_own_worker_id_and_the_names_and_password_are_required(tmp_path):
    second = write_env(tmp_path / "second.env", PYTRAIN_HOST_NAME="gpu-host-2")
    assert resolved(WORKER, second)["services"]["orchestrator"]["environment"]["PYTRAIN_WORKER_ID"] == "gpu-host-2"

    for compose_file in (MAIN, WORKER):
        for name in ("PYTRAIN_HOST_NAME", "POSTGRES_PASSWORD"):
            proc = compose_config(compose_file, write_env(tmp_path / f"no-{name}.env", drop=(name,)))
            assert proc.returncode != 0 and name in proc.stderr, (compose_file.name, name, proc.stderr)
    proc = compose_config(WORKER, write_env(tmp_path / "no-main-host.env", drop=("PYTRAIN_MAIN_HOST",)))
    assert proc.returncode != 0 and "PYTRAIN_MAIN_HOST" in proc.stderr


def test_env_example_documents_every_variable_of_the_worker_file():
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", WORKER.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert names <= documented, names - documented


def test_readme_insert_command_works_as_written_against_the_published_port(database_url, engine, tmp_path):
    """The two lines after `docker compose up -d` in docs/operations/docker.md, run by bash with an .env made from
    .env.example, reach a real PostgreSQL through a TCP port and insert the task."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install -y postgresql-client)")
    page = (ROOT / "docs" / "operations" / "docker.md").read_text()
    block = page.split("docker compose up -d", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    assert lines[0].startswith("set -a && . ./.env && set +a") and lines[1].startswith('PGPASSWORD="$POSTGRES_PASSWORD" psql -h localhost')
    url = make_url(database_url)
    proxy = TcpProxy(database_url)
    try:
        write_env(tmp_path / ".env", POSTGRES_PORT=str(proxy.port), POSTGRES_USER=url.username, POSTGRES_DB=url.database)
        proc = subprocess.run(["bash", "-c", "\n".join(line.split("  #")[0] for line in lines[:2])],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "INSERT 0 1"
    with engine.connect() as conn:
        row = conn.execute(text("SELECT model_name, sources, classes, status FROM training_tasks")).one()
    assert tuple(row) == ("kitchen", ["dataset1"], ["cooking", "drinking"], "queued")


def test_the_console_is_published_on_loopback_with_its_password_hash_and_reads_sources_and_task_folders_only(tmp_path):
    from pytrain.console.security import hash_password

    stored = hash_password("a compose password")
    console = resolved(MAIN, write_env(tmp_path / ".env", CONSOLE_PASSWORD_HASH=stored))["services"]["console"]
    assert console["ports"] == [f"127.0.0.1:{env_example()['CONSOLE_PORT']}:8080/tcp"]
    assert console["environment"]["PYTRAIN_CONSOLE_PASSWORD_HASH"] == stored  # nothing in it expanded as a variable
    assert [_mount(console, target)[2] for target in ("/app/sources", "/app/model_tasks", "/app/model_repo")] == ["ro", "ro", "rw"]
