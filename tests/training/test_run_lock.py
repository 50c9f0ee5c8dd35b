"""Two runs of one task never write the same files at once (issue 9): the training process holds an
exclusive ``flock`` on ``<task>/run.lock`` for the whole run.

Budgets: the two-process test 20 s (measured 18.6 s under load; the first run is killed once the
second has failed); the in-process test under 1 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.clips import write_task
from fixtures.processes import communicate_or_kill
from pytrain.spec import PROGRESS, RUN_LOCK
from pytrain.training.run_lock import RUN_LOCKED_EXIT_CODE, RunLock, RunLockedError, local_holder_pid
from training.conftest import SMALL, small_rows

REPO = Path(__file__).resolve().parents[2]


def training_process(task_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "app")}
    return subprocess.Popen([sys.executable, "-m", "pytrain.training", "--task-dir", str(task_dir), "--device", "cpu", "--num-workers", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def lock_holder_pid(task_dir: Path) -> int | None:
    try:
        return json.loads((task_dir / RUN_LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_training_process_on_one_folder_fails_at_once_naming_the_holder(tmp_path, small_sources):
    task = tmp_path / "task"
    write_task(task, small_sources, rows=small_rows(small_sources), epochs=100, **SMALL)  # trains far longer than the test waits
    first = training_process(task)
    try:
        deadline = time.monotonic() + 120
        while lock_holder_pid(task) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        started = time.monotonic()
        second = training_process(task)
        _, err = communicate_or_kill(second, 120)
        seconds = time.monotonic() - started
        assert second.returncode == RUN_LOCKED_EXIT_CODE, err[-3000:]  # not a failure: the worker re-queues the task
        assert err.strip().splitlines()[-1].startswith(
            f"error: task folder {task} is in use by another run (host {socket.gethostname()} pid {first.pid} since "), err[-1000:]
        assert first.poll() is None  # the holder trains on, undisturbed
        starts = [line for line in (task / PROGRESS).read_text().splitlines() if '"start"' in line] if (task / PROGRESS).exists() else []
        assert len(starts) <= 1  # the second run wrote no record
        print(f"second run refused after {seconds:.1f} s (interpreter and torch import included)")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    with RunLock(task):  # the lock went away with its process: no stale lock to clean up
        pass


def test_the_lock_is_exclusive_within_one_process_and_released_on_exit(tmp_path):
    with RunLock(tmp_path) as held:
        with pytest.raises(RunLockedError, match=rf"is in use by another run \(host .* pid {os.getpid()} since ") as refused:
            RunLock(tmp_path).acquire()
        assert refused.value.holder["pid"] == os.getpid() and held.holder() == refused.value.holder
    again = RunLock(tmp_path).acquire()  # released by the with block
    again.release()
    assert (tmp_path / RUN_LOCK).is_file()  # kept: deleting a lock file races with a process that just opened it


def test_the_lock_records_host_pid_namespace_and_pid_so_only_this_namespace_finds_a_local_holder(tmp_path):
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / RUN_LOCK).read_text())
        assert (holder["host"], holder["pidns"], holder["pid"]) == (socket.gethostname(), os.readlink("/proc/self/ns/pid"), os.getpid())
        assert local_holder_pid(tmp_path) == os.getpid()
        (tmp_path / RUN_LOCK).write_text(json.dumps({**holder, "pidns": "pid:[1]"}))  # written in another PID namespace
        assert local_holder_pid(tmp_path) is None
        (tmp_path / RUN_LOCK).write_text(json.dumps({**holder, "host": "elsewhere"}))
        assert local_holder_pid(tmp_path) is None
