"""``--gpus 0,1`` with the local runner: torchrun starts one training rank per GPU.

On this CPU-only machine the two "GPUs" are only a launch decision (CUDA_VISIBLE_DEVICES=0,1 and
two ranks); torch sees no CUDA device, so the ranks train on the CPU over gloo, for real, to the
exported model. Budget: ~60 s on 2 busy cores (measured in the report), the env test ~2 s.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest
from fixtures.clips import write_task

from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.spec import TaskSpec


@pytest.fixture
def cpu_ranks(monkeypatch):
    """Train on the CPU however many GPUs the task names (a GPU CI host too), one thread per rank."""
    monkeypatch.setenv("PYTRAIN_DEVICE", "cpu")
    monkeypatch.setenv("PYTRAIN_NUM_WORKERS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_two_gpus_start_two_ranks_that_train_tiny_to_the_end(settings, synthetic_sources, cpu_ranks):
    task_dir = settings.model_tasks_dir / "task-1-test_model"
    spec = write_task(task_dir, synthetic_sources, epochs=2)
    task = PreparedTask(spec=spec, task_dir=task_dir, sources_root=synthetic_sources, gpus="0,1", timeout_seconds=300)

    result = LocalRunner(settings, grace_seconds=2.0).run(task, threading.Event())

    log = task.log_path.read_text()
    assert result.outcome is Outcome.SUCCEEDED, log[-3000:]
    launch = next(line for line in log.splitlines() if line.startswith("=== pytrain local runner: "))
    assert launch.removeprefix("=== pytrain local runner: ") == (
        f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 -m pytrain.training "
        f"--task-dir {task_dir} --sources-root {synthetic_sources}"
    )
    events = [json.loads(line) for line in (task_dir / "progress.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "done"]  # rank 0 alone writes progress
    assert events[0]["world_size"] == 2 and events[0]["device"] == "cpu"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["epochs_run"]) == (2, 2)
    assert (task_dir / "model.onnx").is_file()
    # validation runs once per epoch, on rank 0; the final test evaluation is rank 0's alone (_finish)
    validated = [line.split("validated ", 1)[1] for line in log.splitlines() if "validated " in line]
    assert validated == ["6 clips on rank 0 of 2"] * 2


def test_gpu_list_sets_cuda_visible_devices_and_torch_home(settings, tmp_path):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    spec = TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"])
    task = PreparedTask(spec=spec, task_dir=task_dir, sources_root=tmp_path, gpus="0,1")
    show = "import os; print('env', os.environ['CUDA_VISIBLE_DEVICES'], os.environ['TORCH_HOME'])"
    result = LocalRunner(settings, command=[sys.executable, "-c", show]).run(task, threading.Event())
    assert result.outcome is Outcome.SUCCEEDED
    assert f"env 0,1 {settings.torch_home}\n" in task.log_path.read_text()
