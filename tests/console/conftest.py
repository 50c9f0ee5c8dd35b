"""One console process, one orchestrator process and one database per test module (the session's
real Triton publishes and serves the models): see ``tests/fixtures/console.py``."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Iterator

import pytest

from fixtures.clips import write_tree
from fixtures.console import PASSWORD_HASH, ConsoleProcess
from fixtures.db import _drop_database, _new_database, _to_sqlalchemy
from fixtures.processes import orchestrator_env, stop_group
from console_stub import CLASSES, CLIP, LAYOUT, ORCHESTRATOR_GPUS, STUB, WORKER
from fixtures.triton import export_test_model

@pytest.fixture(scope="module")
def console_settings(request: pytest.FixtureRequest, pg_admin_url: str, _template_database: str, tmp_path_factory: pytest.TempPathFactory):
    """Settings on a database of this module and folders of its own; with the session's Triton
    when the module sets ``USES_TRITON = True`` (else a model repository of its own, no Triton)."""
    from pytrain.db import dispose_engines
    from pytrain.settings import Settings

    root = tmp_path_factory.mktemp("console")
    triton = request.getfixturevalue("triton_server") if getattr(request.module, "USES_TRITON", False) else None
    name = _new_database(pg_admin_url, _template_database)
    folders = {n: root / n for n in ("sources", "model_tasks", "results", "data")}
    for folder in folders.values():
        folder.mkdir()
    try:
        yield Settings(
            database_url=_to_sqlalchemy(pg_admin_url, name), data_dir=folders["data"], sources_dir=folders["sources"],
            model_repo_dir=triton.model_repository if triton else root / "model_repo", model_tasks_dir=folders["model_tasks"],
            results_dir=folders["results"], triton_grpc_url=triton.grpc_url if triton else None,
            triton_control_key=triton.control_key if triton else "console-test-control-key", mlflow="off",
            worker_id="console-worker", lease_seconds=5.0, heartbeat_seconds=0.3, poll_seconds=0.3,
            console_password_hash=PASSWORD_HASH,
        )
    finally:
        dispose_engines()
        _drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def console_engine(console_settings):
    from sqlalchemy import create_engine

    from pytrain.sources import sync_sources

    engine = create_engine(console_settings.database_url.get_secret_value())
    write_tree(console_settings.sources_dir, LAYOUT)
    sync_sources(console_settings, engine=engine, probe=False)
    try:
        yield engine
    finally:
        engine.dispose()


def _env(settings, **extra: str) -> dict[str, str]:
    triton = {"PYTRAIN_TRITON_GRPC_URL": settings.triton_grpc_url} if settings.triton_grpc_url else {}
    return orchestrator_env(settings, settings.worker_id, lease_seconds=settings.lease_seconds, heartbeat_seconds=settings.heartbeat_seconds,
                            poll_seconds=settings.poll_seconds, PYTRAIN_MLFLOW="off",
                            PYTRAIN_TRITON_CONTROL_KEY=settings.triton_control_key.get_secret_value(), **triton, **extra)


@pytest.fixture(scope="module")
def console(console_settings, console_engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    """A running ``pytrain console`` on this module's database (a password set: PASSWORD)."""
    from pytrain.serving import free_port

    env = _env(console_settings, PYTRAIN_CONSOLE_PASSWORD_HASH=PASSWORD_HASH)
    with ConsoleProcess(env, tmp_path_factory.mktemp("console-log") / "console.log", free_port()) as process:
        yield process


@pytest.fixture(scope="module")
def orchestrator(console_settings, console_engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    """A running orchestrator process (LocalRunner on :data:`STUB`, the real publisher into the session's Triton)."""
    model_dir = tmp_path_factory.mktemp("stub-model")
    from pytrain.spec import TensorSpec

    spec = TensorSpec(class_list=CLASSES, architecture="nearest_colour", **CLIP)
    spec.save(model_dir)
    export_test_model(model_dir / "model.onnx", CLASSES, **CLIP, input_name=spec.input_name, output_name=spec.output_name)
    # GPUs 0,1: what the Workers page shows (the stub ignores the CUDA_VISIBLE_DEVICES they set).
    env = _env(console_settings, CONSOLE_MODEL_DIR=str(model_dir), CONSOLE_EPOCH_SECONDS="1.5", PYTRAIN_GPUS=ORCHESTRATOR_GPUS)
    log = open(tmp_path_factory.mktemp("orchestrator-log") / "orchestrator.log", "ab")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, STUB], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, signal.SIGTERM, timeout=30)
        log.close()
