"""pytrain.client and ``pytrain predict`` against the session's real Triton server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.clips import make_bad_files
from fixtures.triton import TEST_CLASSES, make_task_folder, run_onnx, task_record
from pytrain.client import ModelInfo, TritonClient
from pytrain.errors import ClientError
from pytrain.publish import publish_task
from pytrain.serving import TritonServer, free_port
from pytrain.settings import Settings
from pytrain.spec import TensorSpec
from pytrain.video import read_clip

pytestmark = pytest.mark.triton
MODEL = "client_kitchen"


@pytest.fixture(scope="module")
def served_model(triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model ``client_kitchen`` published into the session server; returns its task folder."""
    root = tmp_path_factory.mktemp("client_model")
    task_dir = make_task_folder(root / "task", model_name=MODEL)
    settings = Settings(
        model_repo_dir=triton_server.model_repository, results_dir=root / "results", triton_grpc_url=triton_server.grpc_url, max_batch_size=8
    )
    assert publish_task(task_dir, settings=settings, task_record=task_record(MODEL)).load_requested is True
    return task_dir


def clips_of(sources: Path) -> list[tuple[Path, str]]:
    """One clip per folder of the synthetic dataset, with its class."""
    folders = sorted(p for p in (sources / "dataset1").iterdir() if p.is_dir())
    return [(sorted(f.glob("*.mp4"))[0], f.name.split("_")[0]) for f in folders]


def test_predict_decodes_like_evaluation_and_matches_onnxruntime(triton_server: TritonServer, served_model: Path, synthetic_sources: Path) -> None:
    videos = clips_of(synthetic_sources)
    with TritonClient(triton_server.grpc_url) as client:
        info = client.model_info(MODEL)
        predictions = client.predict(MODEL, [v for v, _ in videos], top_k=4)

    assert (info.num_frames, info.height, info.width, info.input_name, info.output_name) == (8, 32, 32, "time_distributed_input", "dense")
    frames = np.stack([read_clip(v, 8, 32, 32) for v, _ in videos])
    expected = run_onnx(served_model / "model.onnx", frames)
    for row, probabilities, (_, cls) in zip(predictions, expected, videos):
        assert [p.label for p in row] == [TEST_CLASSES[i] for i in np.argsort(-probabilities)]
        np.testing.assert_allclose([p.probability for p in row], np.sort(probabilities)[::-1], atol=1e-5)
        assert row[0].label == cls  # the nearest-colour model knows the synthetic classes


def test_infer_returns_the_raw_probabilities(triton_server: TritonServer, served_model: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(11, 8, 32, 32, 3), dtype=np.uint8)
    with TritonClient(triton_server.grpc_url) as client:
        probabilities = np.concatenate([client.infer(MODEL, frames[i : i + 4]) for i in range(0, 11, 4)])
        top = client.predict_frames(MODEL, frames, top_k=1)  # 11 clips > max_batch_size: sent in chunks
    np.testing.assert_allclose(probabilities, run_onnx(served_model / "model.onnx", frames), rtol=1e-6, atol=1e-7)
    assert [t[0].label for t in top] == [TEST_CLASSES[i] for i in probabilities.argmax(axis=1)]


def test_shared_memory_and_grpc_payload_give_the_same_answer_and_clean_up(triton_server: TritonServer, served_model: Path) -> None:
    frames = np.random.default_rng(2).integers(0, 256, size=(5, 8, 32, 32, 3), dtype=np.uint8)
    with TritonClient(triton_server.grpc_url, shared_memory=False) as payload:
        by_payload = payload.infer(MODEL, frames)
    with TritonClient(triton_server.grpc_url, shared_memory=True) as shm:
        by_shm = shm.infer(MODEL, frames)
        chunked = shm.predict_frames(MODEL, np.concatenate([frames, frames]), top_k=1)  # 10 clips: 2 requests
        assert shm._use_shm, "the loopback server should accept the region"
        name = shm._shm.name  # one region, reused by both requests (others' clients may hold theirs: by name)
        assert name in server_regions(triton_server)
    np.testing.assert_array_equal(by_shm, by_payload)
    assert [c[0].label for c in chunked] == [TEST_CLASSES[i] for i in np.concatenate([by_payload, by_payload]).argmax(axis=1)]
    assert name not in server_regions(triton_server)
    assert not Path("/dev/shm", name).exists()


def server_regions(triton_server: TritonServer) -> set[str]:
    """Names of the system shared-memory regions registered on the session's server (by any client)."""
    with TritonClient(triton_server.grpc_url, shared_memory=False) as check:
        return set(check._grpc.get_system_shared_memory_status(as_json=True).get("regions", {}))


def test_a_region_is_unregistered_even_when_the_server_answers_after_the_deadline(triton_server: TritonServer, served_model: Path) -> None:
    """A server too busy to answer the unregister call within its deadline (a loaded host; here it is
    stopped for 7 s) kept the region registered, and mapped, for the rest of its life: the next
    client's status showed two regions. The client now asks again until ``inference_timeout_s``."""
    frames = np.zeros((2, 8, 32, 32, 3), np.uint8)
    with TritonClient(triton_server.grpc_url, shared_memory=True) as client:
        client.infer(MODEL, frames)
        name = client._shm.name
        assert name in server_regions(triton_server)
        pid = triton_server.process.pid
        os.kill(pid, signal.SIGSTOP)
        wait_stopped(pid)  # a thread busy on the other core stops a moment later and could still answer
        resume = threading.Timer(7.0, os.kill, (pid, signal.SIGCONT))
        resume.start()
        try:
            started = time.monotonic()
            client.close()
            closed_after = time.monotonic() - started
        finally:
            resume.cancel()
            os.kill(pid, signal.SIGCONT)
    assert name not in server_regions(triton_server)
    assert closed_after >= 6.0  # it did wait for the stopped server
    assert not Path("/dev/shm", name).exists()


def wait_stopped(pid: int, timeout: float = 60.0) -> None:
    """Wait until every thread of ``pid`` is in the stopped state (``T`` in /proc/PID/task/*/stat)."""
    deadline = time.monotonic() + timeout
    while True:
        states = set()
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                states.add(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # a thread that ended meanwhile
        if states and states <= {"T", "t"}:
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: thread states {sorted(states)}"
        time.sleep(0.01)


def test_model_info_can_come_from_the_pytrain_config(triton_server: TritonServer, served_model: Path) -> None:
    config = triton_server.model_repository / MODEL / f"{MODEL}.config"
    with TritonClient(triton_server.grpc_url) as client:
        from_config = client.model_info(MODEL, "1", config_path=config)
    assert from_config == ModelInfo(MODEL, "1", TensorSpec(list(TEST_CLASSES), 8, 32, 32, "time_distributed_input", "dense"), max_batch_size=8)


def test_a_config_that_disagrees_with_the_served_model_is_refused(triton_server: TritonServer, served_model: Path, tmp_path: Path) -> None:
    from pytrain.publish.triton_config import pytrain_ini

    other = tmp_path / f"{MODEL}.config"  # the INI of a version with another clip size
    other.write_text(pytrain_ini(TensorSpec(list(TEST_CLASSES), 16, 32, 32), epochs=1, shuffle_size=1, batch_size=1))
    with TritonClient(triton_server.grpc_url) as client:
        with pytest.raises(ClientError, match=r"Triton serves input time_distributed_input UINT8 \[-1, 8, 32, 32, 3\].*tensor spec says input time_distributed_input UINT8 \[-1, 16, 32, 32, 3\]"):
            client.model_info(MODEL, "1", config_path=other)


def test_unreachable_server_names_the_address_tried() -> None:
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClientError, match=f"unreachable at {url}"):
        with TritonClient(url, ready_timeout_s=1.0):
            pass


@pytest.mark.parametrize("scheme", ["http://", "grpc://"])
def test_a_url_with_a_scheme_reaches_the_grpc_endpoint(triton_server: TritonServer, served_model: Path, scheme: str) -> None:
    with TritonClient(f"{scheme}{triton_server.grpc_url}/") as client:
        assert client.url == triton_server.grpc_url
        assert client.model_info(MODEL).num_frames == 8


def test_unknown_model_is_reported_as_not_in_the_repository(triton_server: TritonServer) -> None:
    with TritonClient(triton_server.grpc_url, load_timeout_s=1.0) as client:
        with pytest.raises(ClientError, match="'no_such_model' is not in the model repository"):
            client.predict_frames("no_such_model", np.zeros((1, 8, 32, 32, 3), np.uint8))


def test_a_version_that_is_not_served_is_reported_not_ready(triton_server: TritonServer, served_model: Path) -> None:
    with TritonClient(triton_server.grpc_url, load_timeout_s=1.0) as client:
        with pytest.raises(ClientError, match=f"model '{MODEL}' version 7 is not ready"):
            client.model_info(MODEL, 7)


def test_a_model_published_without_asking_the_server_to_load_it_names_the_fix(triton_server: TritonServer, tmp_path: Path) -> None:
    """Explicit model control (`pytrain serve`'s default) serves a model published after its start
    only when publishing asked it to load it (PYTRAIN_TRITON_GRPC_URL); the error says so."""
    name = "client_not_loaded"
    settings = Settings(model_repo_dir=triton_server.model_repository, results_dir=tmp_path / "results", max_batch_size=8)
    assert publish_task(make_task_folder(tmp_path / "task", model_name=name), settings=settings,
                        task_record=task_record(name)).load_requested is None
    with TritonClient(triton_server.grpc_url, load_timeout_s=1.0) as client:
        with pytest.raises(ClientError) as caught:
            client.wait_model_ready(name)
    assert str(caught.value).startswith(f"model '{name}' is not ready on Triton at {triton_server.grpc_url} after 1 s (")
    assert caught.value.hint == (
        "Triton has not loaded it: if it was published after the server started, set PYTRAIN_TRITON_GRPC_URL=<its "
        "host:port> for `pytrain orchestrate` / `pytrain publish` so publishing loads new models, or restart "
        "`pytrain serve`; else see the server log for why it failed to load"
    )


def test_a_malformed_pytrain_config_is_one_line_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "kitchen.config"
    config.write_text("hello\nworld\n")
    with pytest.raises(ClientError) as caught:
        ModelInfo.from_pytrain_config(config)
    assert str(caught.value) == (
        f"{config}: invalid PyTrain model config: MissingSectionHeaderError: File contains no section headers. "
        "(hint: expected [PREDICTION] and [TRAINING] as publishing writes them)"
    )
    config.write_text("[PREDICTION]\nnum_frames = 4\n")
    with pytest.raises(ClientError, match=r"missing section or key 'TRAINING'"):
        ModelInfo.from_pytrain_config(config)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_an_undecodable_video_names_the_file(triton_server: TritonServer, served_model: Path, tmp_path: Path, kind: str) -> None:
    bad = make_bad_files(tmp_path / "bad")[kind]
    with TritonClient(triton_server.grpc_url) as client:
        with pytest.raises(ClientError, match=f"cannot decode video {bad}"):
            client.predict(MODEL, [bad])


def test_wrong_clip_shape_is_rejected_before_sending(triton_server: TritonServer, served_model: Path) -> None:
    with TritonClient(triton_server.grpc_url) as client:
        with pytest.raises(ClientError, match=r"takes \(N, 8, 32, 32, 3\) uint8"):
            client.predict_frames(MODEL, np.zeros((1, 8, 16, 16, 3), np.uint8))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    return subprocess.run([sys.executable, "-m", "pytrain.cli.main", *args], capture_output=True, text=True, env=env, timeout=120)


def test_predict_cli_prints_one_json_line_per_video(triton_server: TritonServer, served_model: Path, synthetic_sources: Path, tmp_path: Path) -> None:
    videos = clips_of(synthetic_sources)[:2]
    bad = make_bad_files(tmp_path / "bad")["text"]
    result = run_cli("predict", "--model", MODEL, "--top-k", "2", "--url", triton_server.grpc_url, str(videos[0][0]), str(bad), str(videos[1][0]))

    assert result.returncode == 1, result.stderr  # one video failed
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["video"] for line in lines] == [str(videos[0][0]), str(bad), str(videos[1][0])]
    assert lines[0]["label"] == videos[0][1] and lines[2]["label"] == videos[1][1]
    assert set(lines[0]) == {"video", "label", "probability", "top_k"} and len(lines[0]["top_k"]) == 2
    assert lines[0]["probability"] == lines[0]["top_k"][0]["probability"] == round(lines[0]["probability"], 4)
    assert "cannot decode video" in lines[1]["error"]


def test_predict_cli_reports_an_unreachable_server_in_one_line() -> None:
    url = f"127.0.0.1:{free_port()}"
    result = run_cli("predict", "--model", MODEL, "--url", url, "--ready-timeout", "1", "x.mp4")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: Triton server unreachable at {url}")
    assert "Traceback" not in result.stderr


def test_predict_cli_rejects_a_version_that_is_not_an_integer_before_connecting() -> None:
    result = run_cli("predict", "--model", MODEL, "--version", "latest", "--url", f"127.0.0.1:{free_port()}", "x.mp4")
    assert result.returncode == 2
    assert result.stderr.startswith("error: Invalid value for '--version': Input should be a valid integer")
    assert len(result.stderr.strip().splitlines()) == 1
