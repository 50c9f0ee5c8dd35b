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
process that just opened it); its contents only say who held it last.

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


class RunLockedError(TrainingError):
    """Another run holds the task folder's ``run.lock``.

    Attributes:
        holder: what the holder wrote into the lock file (``{"host", "pid", "started"}``), or
            ``{}`` when it could not be read.
    """

    def __init__(self, message: str, *, holder: dict, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


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
                     "the lock goes away with its process",
            ) from None
        if writable:
            record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
        """What the lock file says about its (last) holder: ``{"host", "pid", "started"}``, or ``{}``."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
