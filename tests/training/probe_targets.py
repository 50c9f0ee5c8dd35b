"""Decoder stand-ins for the probe tests, importable by spawned children (``tests`` is on sys.path)."""

from __future__ import annotations

import os
import signal
import time


def misbehaving_child(conn, num_frames: int, height: int, width: int) -> None:
    """Like ``pytrain.training.probe._child``, but hangs on ``*hang*`` paths and segfaults on ``*crash*``."""
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        index, path = job
        path = os.path.basename(path)
        if "hang" in path:
            time.sleep(3600)
        if "crash" in path:
            os.kill(os.getpid(), signal.SIGSEGV)
        conn.send((index, None))


def dies_at_start(conn, num_frames: int, height: int, width: int) -> None:
    """A probe child that exits before it says "ready" (as one whose imports fail would)."""
    os._exit(3)

