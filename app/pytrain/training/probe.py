"""Pre-scan of the manifest's videos in child processes, so a hanging or crashing decoder cannot
take training down.

Each child decodes the evaluation clip of every file it is sent (:func:`pytrain.video.read_clip`,
the exact call evaluation makes later). The parent waits at most ``timeout`` seconds per file; a
child that hangs is killed, a child that dies (e.g. a segfault inside FFmpeg) is noticed, and in
both cases the file is reported bad and a fresh child continues with the next file.

This module imports neither torch nor the rest of the training package: it is what the spawned
children import.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from pathlib import Path
from typing import Sequence

from pytrain.errors import TrainingError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_STARTUP_TIMEOUT_S = 120.0


def _child(conn, num_frames: int, height: int, width: int) -> None:  # runs in the spawned child
    from pytrain.errors import VideoDecodeError
    from pytrain.video import read_clip

    conn.send("ready")  # the per-file timeout starts after the imports
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, path = job
        try:
            read_clip(path, num_frames, height, width)
            reason = None
        except VideoDecodeError as exc:
            reason = exc.reason
        except Exception as exc:  # anything else is still a bad file, not a scan failure
            reason = f"{type(exc).__name__}: {exc}"
        conn.send((index, reason))


class _Worker:
    """One child process and its pipe; restarted after a hang or a crash."""

    def __init__(self, num_frames: int, height: int, width: int, target=None) -> None:
        self._args = (num_frames, height, width)
        self._target = target or _child  # tests pass a decoder stand-in that hangs or crashes
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork would copy the parent's threads and decoder state
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=self._target, args=(child_conn, *self._args), daemon=True)
        self.process.start()
        child_conn.close()
        if not self.conn.poll(_STARTUP_TIMEOUT_S) or self.conn.recv() != "ready":
            self.process.kill()
            raise TrainingError(f"the decoder probe process did not start within {_STARTUP_TIMEOUT_S:g} s")

    def check(self, index: int, path: str, timeout: float) -> str | None:
        """``None`` when ``path`` decodes, else the reason; restarts the child when it hangs or dies."""
        try:
            self.conn.send((index, path))
            if self.conn.poll(timeout):
                got, reason = self.conn.recv()
                return reason
            self._kill()
            return f"the decoder hung for more than {timeout:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self._kill()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return f"the decoder crashed ({how})"

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()
        self._start()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def scan_videos(
    paths: Sequence[str | Path],
    num_frames: int,
    height: int,
    width: int,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    processes: int = 1,
    _target=None,
) -> dict[int, str]:
    """Find the files that cannot be decoded.

    Args:
        paths: video files.
        num_frames, height, width: the clip size training will decode.
        timeout: seconds one file may take before its decoder is killed.
        processes: child processes decoding in parallel (>= 1).

    Returns:
        ``{index into paths: reason}`` for every bad file; empty when all decode.
    """
    bad: dict[int, str] = {}
    if not paths:
        return bad
    processes = max(1, min(processes, len(paths), os.cpu_count() or 1))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(chunk: list[int]) -> None:
        worker = _Worker(num_frames, height, width, _target)
        try:
            for i in chunk:
                reason = worker.check(i, str(paths[i]), timeout)
                if reason is not None:
                    with lock:
                        bad[i] = reason
        except BaseException as exc:  # surfaced in the calling thread below
            errors.append(exc)
        finally:
            worker.close()

    threads = [threading.Thread(target=run, args=(list(range(k, len(paths), processes)),), daemon=True) for k in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return bad
