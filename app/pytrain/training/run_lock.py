"""One run per task folder: an exclusive ``flock`` on ``<task>/run.lock`` held for the whole run.

Two runs of one task must never write the same checkpoints, ``scan.json`` or clip cache at once
(a worker cut off from the database may still be training when another worker claims the task).
The training entrypoint takes the lock before it writes anything into the task folder and keeps it
until it exits; a second run of the same folder fails at once with :class:`RunLockedError`, naming
the holder's host, pid and start time, which the holder wrote into the lock file.

Under ``torchrun`` only global rank 0 takes the lock: the ranks of one run are one run (with
several nodes they share the folder and would lock each other out), and only rank 0 writes the
task folder's files. The ranks of a second run never get that far: its rank 0 fails and
``torchrun`` stops the others.

The lock is the kernel's: it goes away with the process (crash, SIGKILL, a container stopped), so
there is never a stale lock to clean up. The file itself stays (deleting a lock file races with a
process that just opened it); its contents only say who held it last: host name, PID namespace and
pid, so a runner on the same host and in the same PID namespace can find (and stop) a run its dead
worker left behind (:func:`local_holder_pid`).

A run that finds the folder locked is not a failed task: the entrypoint exits with
:data:`RUN_LOCKED_EXIT_CODE`, the runners map it to ``Outcome.LOCKED`` and the worker re-queues the
task with a backoff, without counting an attempt, until the old run has gone.

File systems:

- Local file systems and bind mounts into containers (one kernel): exact.
- NFS: Linux emulates ``flock`` with NFS byte-range locks (since 2.6.12), so the lock holds across
  hosts on NFSv4 and on NFSv3 with ``lockd`` -- but NOT when the share is mounted with ``nolock``
  or ``local_lock=flock``/``all`` (the lock is then local to each host and two hosts can both "hold"
  it). An NFSv4 client cut off from the server for longer than its lease (90 s by default) loses
  its locks while its process may keep running; PyTrain's worker fencing (the run stops itself
  when it cannot renew its task lease) covers that case, not this lock.
- SMB/CIFS and FUSE file systems: depends on the server; check with two hosts before relying on it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from pytrain.errors import ConfigurationError, TrainingError
from pytrain.spec import RUN_LOCK

#: The training entrypoint's exit status when another run holds the task folder: ``EX_TEMPFAIL``
#: of ``sysexits.h`` ("temporary failure; the user is invited to retry").
#: :func:`pytrain.runners.base.run_result` maps it to ``Outcome.LOCKED``.
RUN_LOCKED_EXIT_CODE = 75


class RunLockedError(TrainingError):
    """Another run holds the task folder's ``run.lock``.

    Attributes:
        holder: what the holder wrote into the lock file (``{"host", "pidns", "pid", "started"}``),
            or ``{}`` when it could not be read.
        exit_code: the entrypoint's exit status for it (:data:`RUN_LOCKED_EXIT_CODE`).
    """

    exit_code = RUN_LOCKED_EXIT_CODE

    def __init__(self, message: str, *, holder: dict, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or ``""`` where ``/proc`` does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _this_process() -> dict:
    """What a holder writes into the lock file about itself."""
    return {"host": socket.gethostname(), "pidns": _pid_namespace(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def local_holder_pid(task_dir: Path) -> int | None:
    """The pid of the (last) holder of ``task_dir``'s run lock when this process can signal it: it
    ran on this host, in this PID namespace, and that pid is alive; else ``None``.

    The pid may have been reused since the holder ended: callers check what the process runs
    (its command line names the task folder) before they stop it.
    """
    holder = RunLock(task_dir).holder()
    here = _this_process()
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 1 or (holder.get("host"), holder.get("pidns")) != (here["host"], here["pidns"]):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


class RunLock:
    """``with RunLock(task_dir):`` -- the task folder's exclusive run lock (see the module docstring).

    Args:
        task_dir: the task folder; ``run.lock`` is created in it when missing.

    Raises (on enter):
        RunLockedError: another process holds the lock (names its host, pid and start time).
        ConfigurationError: ``task_dir`` is not a folder.
    """

    def __init__(self, task_dir: Path) -> None:
        self.path = Path(task_dir) / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting and write this process's host, pid and start time into it."""
        if not self.path.parent.is_dir():
            raise ConfigurationError(f"task folder {self.path.parent} does not exist", hint="pass the task folder with task.json and manifest.csv")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            writable = True
        except PermissionError:  # a lock file left by another user: locking needs no write access
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = (f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} since {holder.get('started', '?')}"
                   if holder else "a process that has not written its name yet")
            raise RunLockedError(
                f"task folder {self.path.parent} is in use by another run ({who}; {self.path})",
                holder=holder,
                hint="two runs of one task never train at once: wait for that run to end, or stop it; "
                     "the lock goes away with its process (the orchestrator re-queues the task meanwhile)",
            ) from None
        if writable:
            record = _this_process()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict:
        """What the lock file says about its (last) holder: ``{"host", "pidns", "pid", "started"}``, or ``{}``."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
