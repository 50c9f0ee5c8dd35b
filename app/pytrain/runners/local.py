"""The ``local`` runner: the training entrypoint as a subprocess in this Python environment.

The run gets its own process group (``start_new_session``), so cancelling, a timeout or a worker
shutdown stops the entrypoint *and* its children (DataLoader workers): SIGTERM to the group, then
SIGKILL after ``grace_seconds``. stdout and stderr go to ``train.log`` in the task folder. The
group id is written to ``runner.pid`` in the task folder, so a restarted worker can kill runs that
its crashed predecessor left behind (:meth:`LocalRunner.cleanup_orphans`). Before a run starts, a
run still alive in its folder on this host (its worker died or lost the lease) is stopped: the one
``runner.pid`` names, and the holder of the folder's run lock when it runs on this host in this PID
namespace (:meth:`LocalRunner.reap_lost_run`). A holder this runner cannot reach (another host,
another PID namespace) makes the run end ``LOCKED``: the worker re-queues the task until it has
gone. Watching the run and mapping its end to an outcome is :func:`pytrain.runners.base.supervise`.
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
from pytrain.runners.base import TRAINING_MODULE, PreparedTask, RunResult, parse_gpus, supervise, torchrun_args, without_secrets
from pytrain.settings import Settings, get_settings
from pytrain.training.run_lock import local_holder_pid

log = logging.getLogger(__name__)

PID_FILE = "runner.pid"
#: What PyTorch and Python write when an allocation fails (the local and slurm runners look for them).
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "DefaultCPUAllocator: can't allocate memory")


def oom_marker(output: str, markers: Sequence[str] = OOM_MARKERS) -> str | None:
    """The first of ``markers`` that ``output`` (a run's log tail) contains, or ``None``."""
    return next((marker for marker in markers if marker in output), None)


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


class _ProcessGroupRun:
    """A started local run (:class:`~pytrain.runners.base.RunHandle`): the entrypoint leading its own process group."""

    subject = "training"

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def wait(self, seconds: float) -> int | None:
        if seconds <= 0:
            return self.proc.poll()
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_seconds: float) -> None:
        _kill_group(self.proc.pid, grace_seconds, self.proc)
        self.proc.wait()

    def output_tail(self) -> str:
        return tail(self.log_path)  # stdout and stderr share train.log

    def oom_evidence(self, exit_code: int | None) -> str | None:
        # Without a cgroup limit of its own, the kernel's OOM killer (SIGKILL) or the allocator's
        # own message in the log are the only evidence a local run leaves.
        if exit_code == -signal.SIGKILL:
            return "killed by SIGKILL, as the kernel's OOM killer does"
        marker = oom_marker(self.output_tail())
        return f"the log says {marker!r}" if marker else None

    def close(self) -> None:
        """Leave nothing running: the entrypoint if still alive, and children that outlived it."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, 0.0, self.proc)
            self.proc.wait()
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # orphaned children of a finished entrypoint
        except (ProcessLookupError, PermissionError):
            pass


def _runs_task(pid: int, task_dir: Path) -> bool:
    """Whether process ``pid`` is alive and its command line names ``task_dir`` (a training run of it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(task_dir) in cmdline


def _unlink_if_ours(pid_path: Path, pid: int) -> None:
    """Remove ``runner.pid`` if it still names ``pid`` (another worker's run may have written its own since)."""
    try:
        if int(pid_path.read_text().split()[0]) != pid:
            return
    except (OSError, ValueError, IndexError):
        return
    pid_path.unlink(missing_ok=True)


def training_environment(settings: Settings) -> dict[str, str]:
    """The environment a training process started on a host (the local runner's child, a Slurm
    job) inherits: this process's, less every secret-looking and database variable
    (:func:`pytrain.runners.base.is_secret_variable`: training needs neither the database nor
    Triton nor credentials), unbuffered output, and ``TORCH_HOME`` = the weights folder
    (``settings.torch_home``), from which ``pretrained`` tasks load."""
    env = without_secrets(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TORCH_HOME"] = str(settings.torch_home)
    return env


class LocalRunner:
    """Runs ``<command> --task-dir DIR --sources-root ROOT`` as a local subprocess.

    With several GPUs (``--gpus 0,1``: ``CUDA_VISIBLE_DEVICES=0,1``) the command is
    ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m pytrain.training``
    (torchrun with this interpreter; :func:`pytrain.runners.base.torchrun_args`, shared with the
    docker runner): one rank per GPU. ``TORCH_HOME`` is the weights folder
    (``settings.torch_home``), from which ``pretrained`` tasks load and which training never
    writes to.

    Args:
        settings: PyTrain settings (default: the process settings); ``task_timeout_seconds`` and
            ``gpus`` are read from the prepared task instead.
        command: the entrypoint for every run, in place of ``python -m pytrain.training`` and of
            torchrun. Tests pass a small script here.
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
        self.command = list(command) if command else None
        self.grace_seconds = grace_seconds
        self.poll_seconds = poll_seconds

    def _env(self, task: PreparedTask) -> dict[str, str]:
        env = training_environment(self.settings)
        # No --gpus: the run sees what this shell sees (CUDA_VISIBLE_DEVICES inherited);
        # "all": every GPU; "0,1": those; "none": an empty list hides every GPU.
        if task.gpus is None:
            return env
        selection = parse_gpus(task.gpus)
        if selection.all:
            env.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(selection.ids)
        return env

    def _command(self, task: PreparedTask) -> list[str]:
        """The entrypoint for ``task``: torchrun with one rank per GPU when it has several."""
        if self.command is not None:
            return self.command
        launch = torchrun_args(parse_gpus(task.gpus).count)
        if launch is None:
            return [sys.executable, "-m", TRAINING_MODULE]
        return [sys.executable, "-m", "torch.distributed.run", *launch]

    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Run the entrypoint for ``task`` and block until it ends (see :class:`pytrain.runners.base.Runner`).

        Returns:
            ``SUCCEEDED`` on exit code 0; ``CANCELLED`` / ``INTERRUPTED`` / ``TIMED_OUT`` when this
            runner stopped it; ``OUT_OF_MEMORY`` when killed by SIGKILL or its log says so;
            ``FAILED`` otherwise, with the exit code and the log's tail
            (:func:`pytrain.runners.base.run_result`). ``details``: ``seconds``, ``log``.

        Raises:
            RunnerError: the entrypoint cannot be started.
            ConfigurationError: ``task.gpus`` is not a GPU list.
        """
        argv = [*self._command(task), "--task-dir", str(task.task_dir), "--sources-root", str(task.sources_root)]
        env = self._env(task)
        task.task_dir.mkdir(parents=True, exist_ok=True)
        log_path = task.log_path
        pid_path = task.task_dir / PID_FILE
        # This worker holds the lease now: a run still alive in this folder is a lost one (its
        # worker died) and must not train alongside the new run.
        self.reap_lost_run(task.task_dir, task.task_id)
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n=== pytrain local runner: {' '.join(argv)}\n".encode())
            log_file.flush()
            try:
                proc = subprocess.Popen(
                    argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=task.task_dir, start_new_session=True,
                )
            except OSError as exc:
                raise RunnerError(f"task {task.task_id}: cannot start {argv[0]}: {exc}", hint="check the Python environment") from exc
        pid_path.write_text(f"{proc.pid}\n{task.task_dir}\n")
        handle = _ProcessGroupRun(proc, log_path)
        try:
            return supervise(
                handle, task, cancel, stop, timeout_seconds=task.timeout_seconds, grace_seconds=self.grace_seconds,
                poll_seconds=self.poll_seconds, details={"log": str(log_path)},
            )
        finally:
            # Whatever happened (even an exception in this thread), leave nothing running behind.
            handle.close()
            _unlink_if_ours(pid_path, proc.pid)

    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """Kill runs left behind by a crashed worker on this host.

        Every ``model_tasks/*/runner.pid`` whose task is not in ``active_task_ids`` (tasks that
        other workers run right now) names a process group that nobody owns any more; it is killed
        if its process still runs this task (checked against ``/proc/<pid>/cmdline``, so a reused
        pid is left alone).

        Returns:
            The ids of the tasks whose runs were killed.
        """
        killed: set[int] = set()
        root = self.settings.model_tasks_dir
        if not root.is_dir():
            return killed
        for pid_path in root.glob(f"task-*/{PID_FILE}"):
            task_dir = pid_path.parent
            try:
                task_id = int(task_dir.name.split("-")[1])
            except (ValueError, IndexError):
                continue
            if task_id not in active_task_ids and self._kill_recorded_run(task_dir, task_id):
                killed.add(task_id)
        return killed

    def reap_lost_run(self, task_dir: Path, task_id: int) -> bool:
        """Stop a lost run of this task still alive on this host, before a new run starts.

        The caller holds the task's lease, so any other run in ``task_dir`` is lost (its worker died,
        or was stopped past its lease and fences itself when it wakes up). Two records name it:
        ``runner.pid`` (the process group a local runner started) and the run lock's holder
        (:func:`pytrain.training.run_lock.local_holder_pid`: only when it runs on this host, in this
        PID namespace). Either is stopped (its process group: SIGTERM, SIGKILL after the grace
        time) when its command line names ``task_dir``; a pid reused by another program is left alone.

        Returns:
            Whether a run was found alive and stopped.
        """
        reaped = self._kill_recorded_run(task_dir, task_id)
        holder = local_holder_pid(task_dir)
        if holder is None or not _runs_task(holder, task_dir):
            return reaped
        try:
            group = os.getpgid(holder)
        except ProcessLookupError:
            return reaped
        if group == os.getpgrp():  # a run in this process's own group is not a lost run's
            return reaped
        log.warning("task %s: stopping a lost run (pid %s, process group %s) that still holds %s", task_id, holder, group, task_dir)
        _kill_group(group, self.grace_seconds)
        return True

    def _kill_recorded_run(self, task_dir: Path, task_id: int) -> bool:
        """Kill the process group recorded in ``task_dir/runner.pid`` if it still runs this task.

        Returns:
            Whether a run was found alive and killed.
        """
        pid_path = task_dir / PID_FILE
        try:
            pid = int(pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError, OSError):
            return False
        alive = _runs_task(pid, task_dir)  # the same pid could belong to an unrelated process by now
        if alive:
            log.warning("task %s: killing a lost run (process group %s) left by a crashed worker", task_id, pid)
            _kill_group(pid, self.grace_seconds)
        pid_path.unlink(missing_ok=True)
        return alive
