"""The ``local`` runner: the training entrypoint as a subprocess in this Python environment.

The run gets its own process group (``start_new_session``), so cancelling, a timeout or a worker
shutdown stops the entrypoint *and* its children (DataLoader workers): SIGTERM to the group, then
SIGKILL after ``grace_seconds``. stdout and stderr go to ``train.log`` in the task folder. The
group id is written to ``runner.pid`` in the task folder, so a restarted worker can kill runs that
its crashed predecessor left behind (:meth:`LocalRunner.cleanup_orphans`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pytrain.errors import RunnerError
from pytrain.runners.base import Outcome, PreparedTask, RunResult
from pytrain.settings import Settings, get_settings

log = logging.getLogger(__name__)

PID_FILE = "runner.pid"
_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "DefaultCPUAllocator: can't allocate memory")


def tail(path: Path, *, lines: int = 20, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _kill_group(pgid: int, grace_seconds: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, wait up to ``grace_seconds`` for it to end, then SIGKILL it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is None:
            time.sleep(0.05)
            continue
        try:
            os.killpg(pgid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalRunner:
    """Runs ``<command> --task-dir DIR --sources-root ROOT`` as a local subprocess.

    Args:
        settings: PyTrain settings (default: the process settings); ``task_timeout_seconds`` and
            ``gpus`` are read from the prepared task instead.
        command: the entrypoint; default ``[sys.executable, "-m", "pytrain.training"]``. Tests pass
            a small script here.
        grace_seconds: time between SIGTERM and SIGKILL when stopping a run (seconds).
        poll_seconds: how often the run is checked for cancellation and timeout (seconds).
    """

    name = "local"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        command: Sequence[str] | None = None,
        grace_seconds: float = 5.0,
        poll_seconds: float = 0.2,
    ) -> None:
        self.settings = settings or get_settings()
        self.command = list(command) if command else [sys.executable, "-m", "pytrain.training"]
        self.grace_seconds = grace_seconds
        self.poll_seconds = poll_seconds

    def _env(self, task: PreparedTask) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # No --gpus: the run sees what this shell sees (CUDA_VISIBLE_DEVICES inherited);
        # "all": every GPU; "0,1": those.
        if task.gpus == "all":
            env.pop("CUDA_VISIBLE_DEVICES", None)
        elif task.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = task.gpus
        return env

    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Run the entrypoint for ``task`` and block until it ends (see :class:`pytrain.runners.base.Runner`).

        Returns:
            ``SUCCEEDED`` on exit code 0; ``CANCELLED`` / ``INTERRUPTED`` / ``TIMED_OUT`` when this
            runner stopped it; ``OUT_OF_MEMORY`` when killed by SIGKILL or its log says so;
            ``FAILED`` otherwise, with the exit code and the log's tail.

        Raises:
            RunnerError: the entrypoint cannot be started.
        """
        argv = [*self.command, "--task-dir", str(task.task_dir), "--sources-root", str(task.sources_root)]
        task.task_dir.mkdir(parents=True, exist_ok=True)
        log_path = task.log_path
        pid_path = task.task_dir / PID_FILE
        # This worker holds the lease now: a run still alive in this folder is a lost one (its
        # worker died) and must not train alongside the new run.
        self._kill_recorded_run(task.task_dir, task.task_id)
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n=== pytrain local runner: {' '.join(argv)}\n".encode())
            log_file.flush()
            try:
                proc = subprocess.Popen(
                    argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self._env(task), cwd=task.task_dir, start_new_session=True,
                )
            except OSError as exc:
                raise RunnerError(f"task {task.task_id}: cannot start {argv[0]}: {exc}", hint="check the Python environment") from exc
        pid_path.write_text(f"{proc.pid}\n{task.task_dir}\n")
        started = time.monotonic()
        stopped_by: Outcome | None = None
        try:
            while proc.poll() is None:
                if cancel.is_set():
                    stopped_by = Outcome.CANCELLED
                elif stop is not None and stop.is_set():
                    stopped_by = Outcome.INTERRUPTED
                elif task.timeout_seconds is not None and time.monotonic() - started > task.timeout_seconds:
                    stopped_by = Outcome.TIMED_OUT
                if stopped_by is not None:
                    log.info("task %s: stopping the run (%s)", task.task_id, stopped_by.value)
                    _kill_group(proc.pid, self.grace_seconds, proc)
                    proc.wait()
                    break
                try:
                    proc.wait(timeout=self.poll_seconds)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Whatever happened (even an exception in this thread), leave nothing running behind.
            if proc.poll() is None:
                _kill_group(proc.pid, 0.0, proc)
                proc.wait()
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # orphaned children of a finished entrypoint
                except (ProcessLookupError, PermissionError):
                    pass
            pid_path.unlink(missing_ok=True)
        return self._result(task, proc.returncode, stopped_by, time.monotonic() - started)

    def _result(self, task: PreparedTask, code: int, stopped_by: Outcome | None, seconds: float) -> RunResult:
        output = tail(task.log_path)
        details = {"seconds": round(seconds, 3), "log": str(task.log_path)}
        if stopped_by is Outcome.CANCELLED:
            return RunResult(Outcome.CANCELLED, code, "cancelled", output, details)
        if stopped_by is Outcome.INTERRUPTED:
            return RunResult(Outcome.INTERRUPTED, code, "interrupted: the worker is shutting down", output, details)
        if stopped_by is Outcome.TIMED_OUT:
            return RunResult(
                Outcome.TIMED_OUT, code,
                f"timed out after {task.timeout_seconds:g} s (PYTRAIN_TASK_TIMEOUT_SECONDS)", output, details,
            )
        if code == 0:
            return RunResult(Outcome.SUCCEEDED, 0, "", "", details)
        last = next((line for line in reversed(output.splitlines()) if line.strip()), "")
        if code == -signal.SIGKILL or any(marker in output for marker in _OOM_MARKERS):
            return RunResult(
                Outcome.OUT_OF_MEMORY, code,
                f"training ran out of memory (exit code {code}); lower batch_size, num_frames or the frame size",
                output, details,
            )
        return RunResult(Outcome.FAILED, code, f"training exited with code {code}: {last}".rstrip(": "), output, details)

    def cleanup_orphans(self, active_task_ids: set[int]) -> None:
        """Kill runs left behind by a crashed worker on this host.

        Every ``model_tasks/*/runner.pid`` whose task is not in ``active_task_ids`` (tasks that
        other workers run right now) names a process group that nobody owns any more; it is killed
        if its process still runs this task (checked against ``/proc/<pid>/cmdline``, so a reused
        pid is left alone).
        """
        root = self.settings.model_tasks_dir
        if not root.is_dir():
            return
        for pid_path in root.glob(f"task-*/{PID_FILE}"):
            task_dir = pid_path.parent
            try:
                task_id = int(task_dir.name.split("-")[1])
            except (ValueError, IndexError):
                continue
            if task_id not in active_task_ids:
                self._kill_recorded_run(task_dir, task_id)

    def _kill_recorded_run(self, task_dir: Path, task_id: int) -> None:
        """Kill the process group recorded in ``task_dir/runner.pid`` if it still runs this task."""
        pid_path = task_dir / PID_FILE
        try:
            pid = int(pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError, OSError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if str(task_dir) in cmdline:  # the same pid could belong to an unrelated process by now
            log.warning("task %s: killing a lost run (process group %s) left by a crashed worker", task_id, pid)
            _kill_group(pid, self.grace_seconds)
        pid_path.unlink(missing_ok=True)
