"""A real embedded tritonserver serving published models (one server per session, see fixtures.triton)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from fixtures.triton import make_task_folder, run_onnx, task_record
from pytrain.errors import ServingError
from pytrain.publish import publish_task
from pytrain.serving import TritonServer, free_port
from pytrain.serving.control import control_headers
from pytrain.settings import Settings

pytestmark = pytest.mark.triton
pytest.importorskip("pytriton", reason="the embedded Triton server needs nvidia-pytriton")


def ready_versions(url: str, model: str, settings: Settings) -> list[str]:
    """The READY versions in the repository index (a model-control API: sent with ``settings``' key)."""
    with grpcclient.InferenceServerClient(url) as client:
        index = client.get_model_repository_index(as_json=True, headers=control_headers(settings))
    return sorted((m["version"] for m in index.get("models", []) if m["name"] == model and m.get("state") == "READY"), key=int)


def test_published_model_answers_like_onnxruntime_in_process(triton_server: TritonServer, triton_settings: Settings, tmp_path: Path) -> None:
    task_dir = make_task_folder(tmp_path / "task", model_name="serve_numeric")
    published = publish_task(task_dir, settings=triton_settings, task_record=task_record("serve_numeric"))
    assert published.load_requested is True, published.load_message

    frames = np.random.default_rng(0).integers(0, 256, size=(3, 8, 32, 32, 3), dtype=np.uint8)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        assert client.is_model_ready("serve_numeric", "1")
        tensor = grpcclient.InferInput("time_distributed_input", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        served = client.infer("serve_numeric", [tensor]).as_numpy("dense")
        metadata = client.get_model_metadata("serve_numeric", as_json=True)
    np.testing.assert_allclose(served, run_onnx(task_dir / "model.onnx", frames), rtol=1e-6, atol=1e-7)
    assert metadata["inputs"][0]["shape"] == ["-1", "8", "32", "32", "3"]
    assert metadata["outputs"][0]["name"] == "dense"


def test_publishing_loads_new_versions_and_keeps_the_previous_for_rollback(triton_server: TritonServer, triton_settings: Settings, tmp_path: Path) -> None:
    task_dir = make_task_folder(tmp_path / "task", model_name="serve_versions")
    versions = [publish_task(task_dir, settings=triton_settings, task_record=task_record("serve_versions")).version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert ready_versions(triton_server.grpc_url, "serve_versions", triton_settings) == ["2", "3"]


def test_poll_mode_server_picks_up_a_new_version_without_a_load_request(tmp_path: Path) -> None:
    repo = tmp_path / "model_repo"
    settings = Settings(model_repo_dir=repo, results_dir=tmp_path / "results", triton_grpc_url=None)
    task_dir = make_task_folder(tmp_path / "task", model_name="polled")
    publish_task(task_dir, settings=settings, task_record=task_record("polled"))
    server = TritonServer(
        repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
        model_control_mode="poll", poll_seconds=1, work_dir=tmp_path / "work", ort_threads=1,
    )
    with server:
        assert ready_versions(server.grpc_url, "polled", settings) == ["1"]
        published = publish_task(task_dir, settings=settings.model_copy(update={"triton_grpc_url": server.grpc_url}), task_record=task_record("polled"))
        assert published.load_requested is False
        assert "explicit" in published.load_message
        deadline = time.monotonic() + 120
        while ready_versions(server.grpc_url, "polled", settings) != ["1", "2"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ready_versions(server.grpc_url, "polled", settings) == ["1", "2"]
    assert not server.is_running()


def test_starting_on_a_port_in_use_fails_with_the_port(triton_server: TritonServer, tmp_path: Path) -> None:
    server = TritonServer(tmp_path / "repo", grpc_port=triton_server.grpc_port, http_port=free_port(), metrics_port=free_port(), work_dir=tmp_path / "w")
    with pytest.raises(ServingError, match=f"port 127.0.0.1:{triton_server.grpc_port} is in use"):
        server.start()


def test_a_server_that_exits_during_start_up_reports_its_exit_code_and_log(tmp_path: Path) -> None:
    server = TritonServer(
        tmp_path / "repo", grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
        work_dir=tmp_path / "w", model_control_mode="bogus",  # type: ignore[arg-type]
    )
    with pytest.raises(ServingError, match="exited with code"):
        server.start()
    assert not server.is_running()


def test_the_error_log_tail_shows_only_this_runs_lines_of_a_shared_log(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tritonserver.log").write_text("line from an earlier server\n")
    server = TritonServer(
        tmp_path / "repo", grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
        work_dir=tmp_path / "w", model_control_mode="bogus",  # type: ignore[arg-type]
    )
    with pytest.raises(ServingError) as info:
        server.start()
    assert "earlier server" not in str(info.value)
    assert server.log_tail() != ""
    assert (tmp_path / "w" / "tritonserver.log").read_text().startswith("line from an earlier server\n")


def test_the_server_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    script = f"""
import os, sys
from pathlib import Path
from pytrain.serving import TritonServer, free_port
server = TritonServer(Path({str(tmp_path / 'repo')!r}), grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      work_dir=Path({str(tmp_path / 'work')!r}))
server.start()
print(server.process.pid, flush=True)
os.kill(os.getpid(), 9)
"""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert result.returncode == -9, result.stderr
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
        if "zombie" in status:
            break
        time.sleep(0.2)
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else "gone"
    assert status == "gone" or "zombie" in status
