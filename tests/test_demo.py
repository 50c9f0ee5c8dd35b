"""The newcomer's path: ``pytrain demo`` runs the main job end to end on embedded parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.triton
def test_demo_trains_publishes_serves_and_predicts_held_out_clips(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    for name in ("sources", "model_repo", "model_tasks", "results"):
        (tmp_path / name).mkdir()
    env.update(
        PYTRAIN_DATA_DIR=str(tmp_path / "data"),
        PYTRAIN_SOURCES_DIR=str(tmp_path / "sources"),
        PYTRAIN_MODEL_REPO_DIR=str(tmp_path / "model_repo"),
        PYTRAIN_MODEL_TASKS_DIR=str(tmp_path / "model_tasks"),
        PYTRAIN_RESULTS_DIR=str(tmp_path / "results"),
        COLUMNS="200",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytrain.cli.main", "demo", "--epochs", "6"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    predictions = [json.loads(line.split("}  ")[0] + "}") for line in result.stdout.splitlines() if line.startswith('{"video"')]
    # 6 folders x 10 clips, 20 % of each class held out: Other 2, cooking 4, drinking 4, eating 2.
    assert len(predictions) == 12
    assert {p["true_label"] for p in predictions} == {"Other", "cooking", "drinking", "eating"}
    assert all(0.0 <= p["probability"] <= 1.0 for p in predictions)
    correct = sum(p["label"] == p["true_label"] for p in predictions)
    assert correct >= 10, predictions
    assert "held-out accuracy over gRPC" in result.stdout

    version_dir = tmp_path / "model_repo" / "demo" / "1"
    assert (version_dir / "model.onnx").is_file()
    assert (tmp_path / "model_repo" / "demo" / "demo.config").read_text().startswith("[PREDICTION]\nnum_frames = 8\n")
    # the training clips' median duration (24-36 frames at 12-25 fps) is recorded for live streams
    assert json.loads((version_dir / "tensor_spec.json").read_text())["clip_seconds"] == 2.0
    assert "\nclip_seconds = 2\n" in (tmp_path / "model_repo" / "demo" / "demo.config").read_text()
    assert (tmp_path / "results" / "demo" / "1" / "metrics.json").is_file()

    # `pytrain evaluate` on the same held-out clips (the task's test split) prints the demo's accuracy.
    import re

    from pytrain.serving import TritonServer, free_port
    from pytrain.serving.control import control_key

    demo_accuracy = re.search(r"held-out accuracy over gRPC: ([0-9.]+)", result.stdout).group(1)
    with TritonServer(tmp_path / "model_repo", grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      work_dir=tmp_path / "triton", ort_threads=1, control_key=control_key()) as server:
        evaluated = subprocess.run(
            [sys.executable, "-m", "pytrain.cli.main", "evaluate", "--model", "demo", "--task", "1", "--url", server.grpc_url],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
        assert f"accuracy {demo_accuracy}" in evaluated.stdout, (demo_accuracy, evaluated.stdout)
        check_stream_majority_labels(tmp_path, env, server.grpc_url)


def check_stream_majority_labels(root: Path, env: dict[str, str], grpc_url: str) -> None:
    """`pytrain stream` on one looping held-out clip per class, each sent over SRT by a real ffmpeg:
    every stream's majority label is its clip's class (windows span the model's clip_seconds, read
    from the local model repository)."""
    import collections
    import shutil
    import signal
    import time

    from pytrain.serving import free_port
    from pytrain.spec import read_manifest

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    (task_dir,) = (root / "model_tasks").glob("task-1-demo-*")  # task-<id>-<model>-<uid8>
    held_out = {row.label: row.path for row in read_manifest(task_dir) if row.split == "test"}
    urls, senders = {}, []
    try:
        for label, rel in sorted(held_out.items()):
            port = free_port()
            senders.append(subprocess.Popen(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(root / "sources" / rel), "-c", "copy",
                 "-f", "mpegts", f"srt://127.0.0.1:{port}?mode=listener"], stderr=subprocess.DEVNULL, start_new_session=True))
            urls[f"srt://127.0.0.1:{port}?mode=caller"] = label
        time.sleep(0.5)
        stream = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "stream", *urls, "--model", "demo", "--url", grpc_url],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        labels: dict[str, list[str]] = collections.defaultdict(list)
        while min((len(labels[u]) for u in urls), default=0) < 3:
            line = stream.stdout.readline()
            assert line, stream.stderr.read()[-2000:]
            window = json.loads(line)
            labels[window["stream"]].append(window["label"])
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(timeout=20) == 0
    finally:
        for proc in senders:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    majority = {url: collections.Counter(got).most_common(1)[0][0] for url, got in labels.items()}
    assert majority == urls, labels


def test_demo_fails_below_its_accuracy_threshold() -> None:
    from pytrain.cli.demo import DemoResult, check_accuracy
    from pytrain.errors import TrainingError

    predictions = [{"label": "a", "true_label": "a"}, {"label": "b", "true_label": "a"}]
    check_accuracy(DemoResult(3, 1, predictions, 0.5, 0.5), 0.5)  # at the threshold: passes
    with pytest.raises(TrainingError, match=r"task 3: held-out accuracy over gRPC 0.500 is below the demo's threshold 0.600 \(2 clips\)"):
        check_accuracy(DemoResult(3, 1, predictions, 0.5, 0.5), 0.6)
