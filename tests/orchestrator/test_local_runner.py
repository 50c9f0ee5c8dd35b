"""The LocalRunner with a real subprocess (a stub training entrypoint).

What every runner must do is pinned in ``test_runner_contract.py`` (a stop interrupting the run
is tested there, through the worker); this file keeps what is the local runner's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures.processes import pid_alive

from pytrain.runners import LocalRunner, Outcome, PreparedTask
from pytrain.spec import TaskSpec
from pytrain.training.run_lock import RUN_LOCKED_EXIT_CODE

STUB = str(Path(__file__).with_name("stub_training.py"))


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


# A training stand-in that holds the task folder's run lock as the entrypoint does, and exits as
# the entrypoint does when another run holds it (RUN_LOCKED_EXIT_CODE).
LOCKING = """
import sys, time
from pytrain.training.run_lock import RunLock, RunLockedError
task_dir = sys.argv[sys.argv.index("--task-dir") + 1]
try:
    with RunLock(task_dir):
        open(task_dir + "/" + sys.argv[1], "w").write("locked")
        time.sleep(float(sys.argv[2]))
except RunLockedError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def lost_run(task: PreparedTask, *prefix: str) -> subprocess.Popen:
    """A run whose worker is gone: it holds the folder's run lock, in its own session, with no runner.pid."""
    proc = subprocess.Popen([*prefix, sys.executable, "-c", LOCKING, "lost", "600", "--task-dir", str(task.task_dir)],
                            start_new_session=True)
    wait_for(lambda: (task.task_dir / "lost").exists(), timeout=30)
    return proc


def test_a_lost_run_holding_the_folder_on_this_host_is_stopped_before_the_new_run(prepared, settings):
    task = prepared()
    lost = lost_run(task)
    try:
        new = LocalRunner(settings, command=[sys.executable, "-c", LOCKING, "new", "0"], grace_seconds=1.0, poll_seconds=0.05)
        result = new.run(task, threading.Event())
        assert (result.outcome, result.exit_code) == (Outcome.SUCCEEDED, 0), result
        assert lost.wait(10) == -signal.SIGTERM  # stopped (its process group) before the new run took the lock
    finally:
        if lost.poll() is None:
            os.killpg(lost.pid, signal.SIGKILL)
            lost.wait()


def test_a_run_holding_the_folder_beyond_reach_makes_the_new_run_end_locked(prepared, settings):
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --pid --fork --mount-proc` (root, util-linux)")
    task = prepared()
    lost = lost_run(task, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child")  # as on another machine
    try:
        new = LocalRunner(settings, command=[sys.executable, "-c", LOCKING, "new", "0"], grace_seconds=1.0, poll_seconds=0.05)
        result = new.run(task, threading.Event())
        holder = json.loads((task.task_dir / "run.lock").read_text())
        assert (result.outcome, result.exit_code) == (Outcome.LOCKED, RUN_LOCKED_EXIT_CODE), result
        assert result.message.startswith(f"training did not start: task folder {task.task_dir} is in use by another run "
                                         f"(host {socket.gethostname()} pid {holder['pid']} since "), result.message
        assert lost.poll() is None and not (task.task_dir / "new").exists()  # left alone: this runner cannot reach it
    finally:
        os.killpg(lost.pid, signal.SIGKILL)
        lost.wait()
