"""Compose for several GPU hosts, validated by docker-compose itself with .env.example: a worker id
per host from .env, PostgreSQL published with a required password, a second-host file that starts
only an orchestrator pointed at the first host, and the weights folder mounted read-only.

Budget: ~10 s (each `docker-compose config` takes about a second here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.network import TcpProxy

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "docker-compose.yml"
WORKER = ROOT / "docker-compose.worker.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TORCH_HOME = "/app/torch-home"


def _env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))


def _config(compose_file: Path, env_file: Path) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/test.sh installs Debian's docker-compose)")
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(compose_file), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


def _resolved(compose_file: Path, env_file: Path = ENV_EXAMPLE) -> dict:
    proc = _config(compose_file, env_file)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _mount(service: dict, target: str) -> tuple[str, str, str]:
    """``(source, target, mode)`` of the short-syntax volume mounted at ``target``."""
    [volume] = [v for v in service["volumes"] if v.split(":")[1] == target]
    source, target, *mode = volume.split(":")
    return source, target, mode[0] if mode else "rw"


def test_first_host_publishes_postgres_names_its_worker_and_mounts_weights_read_only():
    env = _env_example()
    services = _resolved(MAIN)["services"]
    assert services["postgres"]["ports"] == [f"{env['POSTGRES_BIND_ADDRESS']}:{env['POSTGRES_PORT']}:5432/tcp"]
    orchestrator = services["orchestrator"]
    assert "hostname" not in orchestrator  # the container's id: the docker runner inspects itself by it
    assert orchestrator["environment"]["PYTRAIN_WORKER_ID"] == env["PYTRAIN_HOST_NAME"]
    assert orchestrator["environment"]["PYTRAIN_TORCH_HOME"] == TORCH_HOME
    source, _, mode = _mount(orchestrator, TORCH_HOME)
    assert (source, mode) == (str((ROOT / env["WEIGHTS_DIR"]).resolve()), "ro")


def test_second_host_runs_only_an_orchestrator_on_the_first_hosts_database_and_triton():
    env = _env_example()
    resolved = _resolved(WORKER)
    assert set(resolved["services"]) == {"orchestrator"}
    orchestrator = resolved["services"]["orchestrator"]
    environment = orchestrator["environment"]
    assert environment["PYTRAIN_DATABASE_URL"] == (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@{env['PYTRAIN_MAIN_HOST']}:"
        f"{env['POSTGRES_PORT']}/{env['POSTGRES_DB']}"
    )
    assert environment["PYTRAIN_TRITON_GRPC_URL"] == f"{env['PYTRAIN_MAIN_HOST']}:{env['TRITON_GRPC_PORT']}"
    assert environment["PYTRAIN_WORKER_ID"] == env["PYTRAIN_HOST_NAME"]
    assert (environment["PYTRAIN_RUNNER"], environment["PYTRAIN_TORCH_HOME"]) == ("docker", TORCH_HOME)
    assert orchestrator["entrypoint"] == ["pytrain", "orchestrate"]  # migrations are the first host's
    # the shared storage contract: sources and weights read-only, task folders and the repository read-write
    assert _mount(orchestrator, "/app/sources")[2] == "ro" and _mount(orchestrator, TORCH_HOME)[2] == "ro"
    assert _mount(orchestrator, "/app/model_tasks")[2] == "rw" and _mount(orchestrator, "/app/model_repo")[2] == "rw"
    # the same folders, by the same settings, as on the first host
    first = _resolved(MAIN)["services"]["orchestrator"]
    for target in ("/app/sources", "/app/model_repo", "/app/model_tasks", "/app/results", TORCH_HOME):
        assert _mount(orchestrator, target)[0] == _mount(first, target)[0]


def test_each_host_gets_its_own_worker_id_and_the_names_and_password_are_required(tmp_path):
    base = ENV_EXAMPLE.read_text()
    second = tmp_path / "second.env"
    second.write_text(base.replace("PYTRAIN_HOST_NAME=gpu-host-1\n", "PYTRAIN_HOST_NAME=gpu-host-2\n"))
    assert _resolved(WORKER, second)["services"]["orchestrator"]["environment"]["PYTRAIN_WORKER_ID"] == "gpu-host-2"

    for compose_file in (MAIN, WORKER):
        for name in ("PYTRAIN_HOST_NAME", "POSTGRES_PASSWORD"):
            missing = tmp_path / f"no-{name}.env"
            missing.write_text(re.sub(rf"^{name}=.*\n", "", base, flags=re.MULTILINE))
            proc = _config(compose_file, missing)
            assert proc.returncode != 0 and name in proc.stderr, (compose_file.name, name, proc.stderr)
    missing = tmp_path / "no-main-host.env"
    missing.write_text(re.sub(r"^PYTRAIN_MAIN_HOST=.*\n", "", base, flags=re.MULTILINE))
    proc = _config(WORKER, missing)
    assert proc.returncode != 0 and "PYTRAIN_MAIN_HOST" in proc.stderr


def test_env_example_documents_every_variable_of_the_worker_file():
    names = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", WORKER.read_text()))
    assert names <= set(_env_example()), names - set(_env_example())


def test_readme_insert_command_works_as_written_against_the_published_port(database_url, engine, tmp_path):
    """The README's two lines after `docker compose up -d`, run by bash with an .env made from
    .env.example, reach a real PostgreSQL through a TCP port and insert the task."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install -y postgresql-client)")
    readme = (ROOT / "README.md").read_text()
    block = readme.split("docker compose up -d", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    assert lines[0].startswith("set -a && . ./.env && set +a") and lines[1].startswith('PGPASSWORD="$POSTGRES_PASSWORD" psql -h localhost')
    url = make_url(database_url)
    proxy = TcpProxy(database_url)
    try:
        env_text = ENV_EXAMPLE.read_text()
        for name, value in (("POSTGRES_PORT", proxy.port), ("POSTGRES_USER", url.username), ("POSTGRES_DB", url.database)):
            env_text = re.sub(rf"^{name}=.*$", f"{name}={value}", env_text, flags=re.MULTILINE)
        (tmp_path / ".env").write_text(env_text)
        proc = subprocess.run(["bash", "-c", "\n".join(line.split("  #")[0] for line in lines[:2])],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "INSERT 0 1"
    with engine.connect() as conn:
        row = conn.execute(text("SELECT model_name, sources, classes, status FROM training_tasks")).one()
    assert tuple(row) == ("kitchen", ["dataset1"], ["cooking", "drinking"], "queued")
