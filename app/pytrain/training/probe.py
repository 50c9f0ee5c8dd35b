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

DEFAULT_TIMEOUT_S = 60.0  # per file: a healthy clip decodes in well under a second, a hung decoder never
_STARTUP_TIMEOUT_S = 120.0  # a spawned child imports the decoder stack first: slow on a loaded machine
_JOIN_TIMEOUT_S = 5.0  # a child told to stop (or killed) exits at once; never wait for one forever


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
        """Start the child and wait for its ``"ready"``.

        Raises:
            TrainingError: the child could not be started, died before it was ready, or was not
                ready within ``_STARTUP_TIMEOUT_S`` (the message says which, and why).
        """
        ctx = mp.get_context("spawn")  # fork would copy the parent's threads and decoder state
        self.conn, child_conn = ctx.Pipe()
        self.process = None
        try:
            process = ctx.Process(target=self._target, args=(child_conn, *self._args), daemon=True)
            process.start()
        except Exception as exc:  # e.g. OSError (no processes or memory left), an unpicklable target
            self.conn.close()
            raise TrainingError(f"the decoder probe process could not start: {type(exc).__name__}: {exc}") from exc
        finally:
            child_conn.close()
        self.process = process
        died = False
        try:
            ready = self.conn.poll(_STARTUP_TIMEOUT_S) and self.conn.recv() == "ready"
        except (EOFError, OSError):  # the child died during its imports
            ready, died = False, True
        if not ready:
            process.join(_JOIN_TIMEOUT_S if died else 0)  # a dying child's exit code is the clue
            code = process.exitcode
            process.kill()
            process.join(_JOIN_TIMEOUT_S)
            self.conn.close()
            why = f"died before it was ready (exit code {code})" if died else f"was not ready within {_STARTUP_TIMEOUT_S:g} s"
            raise TrainingError(f"the decoder probe process {why}")

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
            self.process.join(_JOIN_TIMEOUT_S)
            code = self.process.exitcode
            self._kill()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return f"the decoder crashed ({how})"

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(_JOIN_TIMEOUT_S)
        self.conn.close()
        self._start()

    def close(self) -> None:
        if self.process is None:  # its last start failed: nothing runs
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(_JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(_JOIN_TIMEOUT_S)
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

    Raises:
        TrainingError: a probe child could not start (or restart after a hang or a crash); the
            message names the file the scan had reached and the cause, so the scan never
            reports "no bad file" without having looked.
    """
    bad: dict[int, str] = {}
    if not paths:
        return bad
    processes = max(1, min(processes, len(paths), os.cpu_count() or 1))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(chunk: list[int]) -> None:
        worker, i = None, chunk[0]
        try:
            worker = _Worker(num_frames, height, width, _target)
            for i in chunk:
                reason = worker.check(i, str(paths[i]), timeout)
                if reason is not None:
                    with lock:
                        bad[i] = reason
        except TrainingError as exc:  # a probe child that cannot (re)start: the scan cannot go on
            error = TrainingError(f"cannot pre-scan {paths[i]}: {exc.message}",
                                  hint="check that `python -c 'import pytrain.training.probe'` works in this environment")
            error.__cause__ = exc  # what `raise ... from exc` would do; raised in the calling thread
            errors.append(error)
        except BaseException as exc:  # surfaced in the calling thread below
            errors.append(exc)
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=run, args=(list(range(k, len(paths), processes)),), daemon=True) for k in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return bad
