"""``pytrain serve``: starts the embedded server, reports where it listens, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.triton import make_task_folder, task_record
from pytrain.client import TritonClient
from pytrain.publish import publish_task
from pytrain.serving import free_port
from pytrain.settings import Settings

pytestmark = pytest.mark.triton
pytest.importorskip("pytriton", reason="the embedded Triton server needs nvidia-pytriton")


def test_serve_reports_its_address_serves_the_repository_and_stops_on_sigterm(tmp_path: Path) -> None:
    repo = tmp_path / "model_repo"
    publish_task(make_task_folder(tmp_path / "task"), settings=Settings(model_repo_dir=repo, results_dir=tmp_path / "results"), task_record=task_record())
    grpc_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env.update(
        PYTRAIN_MODEL_REPO_DIR=str(repo), PYTRAIN_DATA_DIR=str(tmp_path / "data"), PYTRAIN_TRITON_GRPC_PORT=str(grpc_port),
        PYTRAIN_TRITON_HTTP_PORT=str(free_port()), PYTRAIN_TRITON_METRICS_PORT=str(free_port()),
    )
    process = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any(f"gRPC    127.0.0.1:{grpc_port}" in line for line in lines), (lines, process.stderr.read() if process.poll() is not None else "")
        with TritonClient(f"127.0.0.1:{grpc_port}", ready_timeout_s=120) as client:
            assert client.model_info("kitchen").num_frames == 8
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "data" / "triton" / "tritonserver.log").is_file()


@pytest.mark.parametrize("args, message", [
    (["--grpc-port", "99999"], "error: Invalid value for '--grpc-port': Input should be less than or equal to 65535"),
    (["--http-port", "0"], "error: Invalid value for '--http-port': Input should be greater than or equal to 1"),
    (["--model-repo", "/nonexistent/model_repo"], "error: Invalid value for '--model-repo': dir '/nonexistent/model_repo' does not exist."),
])
def test_serve_rejects_a_bad_port_or_a_missing_repository_before_starting(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env["PYTRAIN_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "pytrain.cli.main", "serve", *args], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{message} (hint: see `pytrain serve --help`)"
    assert not (tmp_path / "data").exists()  # nothing was started
