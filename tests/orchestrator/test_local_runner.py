"""The LocalRunner with a real subprocess (a stub training entrypoint).

What every runner must do is pinned in ``test_runner_contract.py`` (a stop interrupting the run
is tested there, through the worker); this file keeps what is the local runner's own.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.spec import TaskSpec

STUB = str(Path(__file__).with_name("stub_training.py"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting to be reaped counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def prepared(tmp_path: Path):
    def make(timeout: float | None = None, gpus: str | None = None) -> PreparedTask:
        task_dir = tmp_path / "model_tasks" / "task-1-kitchen"
        task_dir.mkdir(parents=True, exist_ok=True)
        sources = tmp_path / "sources"
        sources.mkdir(exist_ok=True)
        spec = TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"])
        return PreparedTask(spec=spec, task_dir=task_dir, sources_root=sources, timeout_seconds=timeout, gpus=gpus)

    return make


def runner(mode: str, settings=None) -> LocalRunner:
    return LocalRunner(settings, command=[sys.executable, STUB, mode], grace_seconds=1.0, poll_seconds=0.05)


def test_successful_run_logs_output_and_cleans_pid_file(prepared, settings):
    task = prepared()
    result = runner("succeed", settings).run(task, threading.Event())
    assert (result.outcome, result.exit_code, result.message) == (Outcome.SUCCEEDED, 0, "")
    assert "stub training done" in task.log_path.read_text()
    assert (task.task_dir / "metrics.json").is_file()
    assert not (task.task_dir / "runner.pid").exists()


def test_failed_run_reports_exit_code_and_last_log_line(prepared, settings):
    result = runner("fail", settings).run(prepared(), threading.Event())
    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 3)
    assert result.message == "training exited with code 3: ValueError: the manifest names no training clip"
    assert "epoch 1 ..." in result.stderr_tail


def test_cancel_kills_the_whole_process_group_within_seconds(prepared, settings):
    task = prepared()
    cancel = threading.Event()
    results = []
    thread = threading.Thread(target=lambda: results.append(runner("hang", settings).run(task, cancel)))
    thread.start()
    wait_for(lambda: (task.task_dir / "hanging").exists() and (task.task_dir / "grandchild.pid").exists())
    entry = int((task.task_dir / "hanging").read_text())
    grandchild = int((task.task_dir / "grandchild.pid").read_text())
    started = time.monotonic()
    cancel.set()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 4  # SIGTERM is ignored by the stub: SIGKILL after 1 s grace
    assert results[0].outcome is Outcome.CANCELLED
    wait_for(lambda: not pid_alive(grandchild), timeout=3)
    assert not pid_alive(entry)


def test_timeout_kills_the_run(prepared, settings):
    task = prepared(timeout=0.5)
    started = time.monotonic()
    result = runner("hang", settings).run(task, threading.Event())
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == "timed out after 0.5 s (PYTRAIN_TASK_TIMEOUT_SECONDS)"
    assert time.monotonic() - started < 5
    wait_for(lambda: not pid_alive(int((task.task_dir / "grandchild.pid").read_text())), timeout=3)


@pytest.mark.parametrize(("gpus", "visible"), [(None, "7"), ("1,2", "1,2"), ("all", "<unset>")])
def test_gpus_become_cuda_visible_devices(prepared, settings, monkeypatch, gpus, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # the worker's own environment
    task = prepared(gpus=gpus)
    assert runner("env", settings).run(task, threading.Event()).outcome is Outcome.SUCCEEDED
    assert (task.task_dir / "env.txt").read_text() == visible


def test_missing_entrypoint_raises_runner_error(prepared, settings):
    from pytrain.errors import RunnerError

    with pytest.raises(RunnerError, match="cannot start /nonexistent/python"):
        LocalRunner(settings, command=["/nonexistent/python"]).run(prepared(), threading.Event())


def test_get_runner_picks_the_local_runner(settings):
    from pytrain.runners import get_runner

    assert isinstance(get_runner(settings), LocalRunner)
