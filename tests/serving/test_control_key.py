"""Triton's model control behind a key: the running ``pytrain serve`` refuses load/unload without it
on gRPC and HTTP, accepts them with it, and keeps inference open; the key file and its secrecy.

One ``pytrain serve`` process for the module (its key generated into its data folder).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pydantic import SecretStr

from fixtures.triton import make_task_folder, task_record
from pytrain.errors import ConfigurationError
from pytrain.publish import publish_task
from pytrain.publish.loader import request_load
from pytrain.serving import free_port
from pytrain.serving.control import (
    CONTROL_HEADER,
    KEY_FILE_NAME,
    control_headers,
    control_key,
    redact,
    restricted_api_args,
)
from pytrain.settings import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    folders: dict[str, object] = {"data_dir": tmp_path / "data", "model_repo_dir": tmp_path / "repo", "results_dir": tmp_path / "results"}
    return Settings(**{**folders, **values})


# --- the key: where it comes from ------------------------------------------------------------
def test_a_generated_key_is_kept_in_the_data_folder_with_mode_0600_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = control_key(settings)
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.get_secret_value()
    assert len(first.get_secret_value()) >= 32
    assert control_key(settings) == first
    assert sorted(p.name for p in path.parent.iterdir()) == [KEY_FILE_NAME]  # no temporary file left


def test_the_setting_overrides_the_file_and_a_client_never_creates_one(tmp_path: Path) -> None:
    assert control_key(_settings(tmp_path), create=False) is None
    assert control_headers(_settings(tmp_path), create=False) == {}
    assert not (tmp_path / "data").exists()
    key = "k" * 24
    settings = _settings(tmp_path, triton_control_key=SecretStr(key))
    assert control_headers(settings) == {"triton-grpc-protocol-pytrain-control-key": key}
    assert control_headers(settings, protocol="http") == {CONTROL_HEADER: key}
    assert not (tmp_path / "data").exists()
    assert key not in repr(settings) and key not in str(settings.model_dump())


def test_a_malformed_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    bad = "short,key=x"
    with pytest.raises(ConfigurationError) as info:
        control_key(_settings(tmp_path, triton_control_key=SecretStr(bad)))
    assert str(info.value) == ("the Triton control key from PYTRAIN_TRITON_CONTROL_KEY is not usable (11 characters) (hint: use 16..256 "
                               "characters from A-Z a-z 0-9 . _ ~ -, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    ok, message = request_load("127.0.0.1:1", "m", settings=_settings(tmp_path, triton_control_key=SecretStr(bad)))
    assert not ok and "not usable" in message and bad not in message


def test_restricted_flags_and_redaction() -> None:
    control, inference = SecretStr("c" * 20), SecretStr("i" * 20)
    args = restricted_api_args(control, inference)
    assert args == [
        f"--grpc-restricted-protocol=model-repository,model-config:pytrain-control-key={'c' * 20}",
        f"--http-restricted-api=model-repository,model-config:pytrain-control-key={'c' * 20}",
        f"--grpc-restricted-protocol=inference:pytrain-inference-key={'i' * 20}",
        f"--http-restricted-api=inference:pytrain-inference-key={'i' * 20}",
    ]
    assert redact(" ".join(args), control, inference).count("**********") == 4
    assert "c" * 20 not in redact(" ".join(args), control, inference)


# --- a running `pytrain serve` ----------------------------------------------------------------
@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``pytrain serve`` over a repository holding model ``kitchen``; yields its ports, paths and output."""
    pytest.importorskip("pytriton", reason="the embedded Triton server needs nvidia-pytriton")
    tmp_path = tmp_path_factory.mktemp("serve-key")
    repo = tmp_path / "model_repo"
    publish_task(make_task_folder(tmp_path / "task"), settings=_settings(tmp_path, model_repo_dir=repo), task_record=task_record())
    ports = {name: free_port() for name in ("GRPC", "HTTP", "METRICS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env.update(PYTRAIN_MODEL_REPO_DIR=str(repo), PYTRAIN_DATA_DIR=str(tmp_path / "data"),
               **{f"PYTRAIN_TRITON_{name}_PORT": str(port) for name, port in ports.items()})
    process = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "serve"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Press Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        key = (tmp_path / "data" / KEY_FILE_NAME).read_text().strip()
        yield {"grpc": f"127.0.0.1:{ports['GRPC']}", "http": f"127.0.0.1:{ports['HTTP']}", "key": key, "lines": lines,
               "pid": process.pid, "data": tmp_path / "data"}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _refusal(call) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value)


@pytest.mark.triton
def test_serve_listens_on_loopback_and_says_so(serve: dict) -> None:
    text = "".join(serve["lines"])
    assert "listening on 127.0.0.1 (loopback only; --host to change)" in text
    assert f"control load/unload/config need the key: {serve['data'] / KEY_FILE_NAME}" in text


@pytest.mark.triton
def test_grpc_load_and_unload_need_the_key(serve: dict) -> None:
    import tritonclient.grpc as grpcclient

    key = {"triton-grpc-protocol-pytrain-control-key": serve["key"]}
    wrong = {"triton-grpc-protocol-pytrain-control-key": "x" * 43}
    with grpcclient.InferenceServerClient(serve["grpc"]) as client:
        for headers in (None, wrong):
            assert "This protocol is restricted" in _refusal(lambda: client.unload_model("kitchen", headers=headers))
            assert "This protocol is restricted" in _refusal(lambda: client.load_model("kitchen", headers=headers))
            assert "This protocol is restricted" in _refusal(lambda: client.get_model_config("kitchen", headers=headers))
        assert client.is_model_ready("kitchen")  # nothing was unloaded
        client.unload_model("kitchen", headers=key)
        deadline = time.monotonic() + 120
        while client.is_model_ready("kitchen") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not client.is_model_ready("kitchen")
        client.load_model("kitchen", headers=key)
        assert client.is_model_ready("kitchen")
    ok, message = request_load(serve["grpc"], "kitchen", settings=Settings(triton_control_key=SecretStr("y" * 43)))
    assert not ok and "This protocol is restricted" in message and "PYTRAIN_TRITON_CONTROL_KEY" in message


@pytest.mark.triton
def test_http_load_and_unload_need_the_key(serve: dict) -> None:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(serve["http"]) as client:
        for headers in (None, {CONTROL_HEADER: "x" * 43}):
            assert "[403] This API is restricted" in _refusal(lambda: client.unload_model("kitchen", headers=headers))
            assert "[403] This API is restricted" in _refusal(lambda: client.load_model("kitchen", headers=headers))
        client.load_model("kitchen", headers={CONTROL_HEADER: serve["key"]})
        assert client.is_model_ready("kitchen")


@pytest.mark.triton
def test_inference_health_and_metadata_need_no_key(serve: dict) -> None:
    import tritonclient.grpc as grpcclient

    frames = np.zeros((2, 8, 32, 32, 3), dtype=np.uint8)
    with grpcclient.InferenceServerClient(serve["grpc"]) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_model_metadata("kitchen", as_json=True)["name"] == "kitchen"
        tensor = grpcclient.InferInput("time_distributed_input", list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        assert client.infer("kitchen", [tensor]).as_numpy("dense").shape == (2, 4)


@pytest.mark.triton
def test_the_key_is_in_no_output_log_or_pytrain_command_line(serve: dict) -> None:
    key = serve["key"]
    assert stat.S_IMODE((serve["data"] / KEY_FILE_NAME).stat().st_mode) == 0o600
    assert key not in "".join(serve["lines"])
    assert key not in (serve["data"] / "triton" / "tritonserver.log").read_text()
    # `pytrain serve` itself: its command line holds no key (tritonserver's must: Triton has no other way).
    assert key not in Path(f"/proc/{serve['pid']}/cmdline").read_bytes().decode()


def test_a_local_training_process_inherits_neither_key_nor_the_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytrain.runners.base import PreparedTask
    from pytrain.runners.local import LocalRunner
    from pytrain.spec import TaskSpec

    for name in ("PYTRAIN_TRITON_CONTROL_KEY", "PYTRAIN_TRITON_INFERENCE_KEY", "PYTRAIN_DATABASE_URL"):
        monkeypatch.setenv(name, "s" * 24)
    monkeypatch.setenv("PYTRAIN_DECODER_TEST_MARKER", "kept")
    task = PreparedTask(spec=TaskSpec(task_id=1, model_name="m", class_list=["a", "b"]), task_dir=tmp_path, sources_root=tmp_path)
    env = LocalRunner(_settings(tmp_path))._env(task)
    assert "s" * 24 not in env.values()
    assert env["PYTRAIN_DECODER_TEST_MARKER"] == "kept"
