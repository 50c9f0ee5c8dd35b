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
from typing import Callable, Sequence

from pytrain.errors import TrainingError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0  # per file: a healthy clip decodes in well under a second, a hung decoder never
_STARTUP_TIMEOUT_S = 120.0  # a spawned child imports the decoder stack first: slow on a loaded machine
_JOIN_TIMEOUT_S = 5.0  # a child told to stop (or killed) exits at once; never wait for one forever


def _child(conn, num_frames: int, height: int, width: int) -> None:  # runs in the spawned child
    """The pre-scan's child: answers each path with ``None`` (it decodes) or the reason it does not."""
    _serve(conn, lambda path: _clip_reason(path, num_frames, height, width))


def _catalog_child(conn, num_frames: int, height: int, width: int) -> None:  # runs in the spawned child
    """The catalog's child: answers each path with :func:`_describe` (status, metadata, content hash)."""
    _serve(conn, lambda path: _describe(path, num_frames, height, width))


def _serve(conn, handle) -> None:
    """Answer ``(index, path)`` jobs with ``(index, handle(path))`` until ``None`` or the pipe closes."""
    conn.send("ready")  # the per-file timeout starts after the imports
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, path = job
        conn.send((index, handle(path)))


def _clip_reason(path: str, num_frames: int, height: int, width: int) -> str | None:
    """``None`` when the evaluation clip of ``path`` decodes, else why not (never raises)."""
    from pytrain.errors import VideoDecodeError
    from pytrain.video import read_clip

    try:
        read_clip(path, num_frames, height, width)
        return None
    except VideoDecodeError as exc:
        return exc.reason
    except Exception as exc:  # anything else is still a bad file, not a scan failure
        return f"{type(exc).__name__}: {exc}"


HASH_EDGE_BYTES = 1 << 20  # content hash: the first and last MiB (the whole file up to 2 MiB)


def content_hash(path: str | Path) -> str:
    """A fast content hash: BLAKE2b-128 (hex) of the size, the first and the last MiB.

    Files up to 2 MiB are hashed whole, so for them equal hashes mean equal bytes; for larger
    files equal hashes mean equal size, head and tail (a copy, in practice). See docs/adr/0008.

    Raises:
        OSError: the file cannot be read.
    """
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        if size <= 2 * HASH_EDGE_BYTES:
            digest.update(f.read())
        else:
            digest.update(f.read(HASH_EDGE_BYTES))
            f.seek(size - HASH_EDGE_BYTES)
            digest.update(f.read(HASH_EDGE_BYTES))
    return digest.hexdigest()


def _describe(path: str, num_frames: int, height: int, width: int) -> dict:
    """Status, stream metadata and content hash of one file; never raises.

    Returns:
        ``{"reason": str | None, "content_hash", "duration_s", "frame_count", "fps", "width",
        "height", "codec", "pixel_format"}``; metadata the file does not give is ``None``.
    """
    info: dict = dict.fromkeys(("content_hash", "duration_s", "frame_count", "fps", "width", "height", "codec", "pixel_format"))
    info["reason"] = _clip_reason(path, num_frames, height, width)
    try:
        info["content_hash"] = content_hash(path)
        info.update(_stream_metadata(path))
    except Exception as exc:  # a bad file's metadata may be missing: its reason already says why
        if info["reason"] is None:  # the clip decoded, yet the file cannot be read to its end
            info["reason"] = f"the file cannot be read to its end: {type(exc).__name__}: {exc}"
    present = info.pop("frames_present", None)
    if info["reason"] is None and present is not None and info["frame_count"] and present < info["frame_count"]:
        # decoders conceal missing data (a cut AVI decodes to grey frames): count what is there
        info["reason"] = f"truncated: the container lists {info['frame_count']} frames, only {present} are present"
    return info


def _stream_metadata(path: str) -> dict:
    """The first video stream's metadata: PyAV when installed (codec, pixel format, and the
    frames really present, counted by demuxing without decoding), else decord.

    Returns:
        Some of ``duration_s`` (seconds), ``frame_count`` (frames the container lists), ``fps``,
        ``width``, ``height`` (pixels), ``codec``, ``pixel_format``, ``frames_present``.

    Raises:
        Exception: whatever the library raises for a file it cannot read.
    """
    try:
        import av
    except ImportError:
        import decord

        reader = decord.VideoReader(path)
        frames, fps = len(reader), float(reader.get_avg_fps())
        h, w = reader[0].shape[:2]
        return {"frame_count": frames, "fps": fps, "width": int(w), "height": int(h), "duration_s": frames / fps if fps else None}
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # av.time_base: microseconds
        else:
            duration = None
        frames = stream.frames or (round(duration * fps) if duration and fps else None)
        ctx = stream.codec_context
        info = {"duration_s": duration, "frame_count": frames, "fps": fps, "width": ctx.width, "height": ctx.height,
                "codec": ctx.name, "pixel_format": ctx.pix_fmt}
        info["frames_present"] = sum(1 for packet in container.demux(stream) if packet.size) if stream.frames else None
        return info


class _Worker:
    """One child process and its pipe; restarted after a hang or a crash.

    ``target(conn, *args)`` is the child's function (:func:`_child`, :func:`_catalog_child`, or in
    tests a decoder stand-in that hangs or crashes).
    """

    def __init__(self, target, args: tuple) -> None:
        self._args = args
        self._target = target
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

    def check(self, index: int, path: str, timeout: float) -> tuple[object, str | None]:
        """``(the child's answer, None)``, or ``(None, why)`` when the child hung or died (it is restarted)."""
        try:
            self.conn.send((index, path))
            if self.conn.poll(timeout):
                got, answer = self.conn.recv()
                return answer, None
            self._kill()
            return None, f"the decoder hung for more than {timeout:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self.process.join(_JOIN_TIMEOUT_S)
            code = self.process.exitcode
            self._kill()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return None, f"the decoder crashed ({how})"

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

    def keep(i: int, reason: str | None, failure: str | None) -> None:
        if (failure or reason) is not None:
            bad[i] = failure or reason

    _probe_all(paths, _target or _child, (num_frames, height, width), timeout=timeout, processes=processes, on_result=keep)
    return bad


#: The clip the catalog decodes to call a file ``ok``: frames and size (pixels) small enough to be
#: quick, spread over the whole video like every evaluation clip (docs/adr/0008).
CATALOG_CLIP = (8, 32, 32)


def probe_videos(
    paths: Sequence[str | Path], *, timeout: float = DEFAULT_TIMEOUT_S, processes: int = 1,
    on_result: Callable[[int, dict], None],
) -> None:
    """Describe files for the video catalog, in child processes like :func:`scan_videos`.

    ``on_result(index into paths, info)`` is called once per file, from a worker thread, one call
    at a time; ``info`` is :func:`_describe`'s dict (``reason`` ``None`` for a good file; a hang or
    a crash of the decoder is the reason of a bad one).

    Args:
        timeout: seconds one file may take before its decoder is killed.
        processes: child processes in parallel (>= 1; capped at the CPU count).

    Raises:
        TrainingError: a probe child could not start (see :func:`scan_videos`).
    """
    def forward(i: int, info: dict | None, failure: str | None) -> None:
        on_result(i, info if failure is None else {"reason": failure})

    _probe_all(paths, _catalog_child, CATALOG_CLIP, timeout=timeout, processes=processes, on_result=forward)


def _probe_all(paths: Sequence[str | Path], target, args: tuple, *, timeout: float, processes: int, on_result) -> None:
    """Send every path to ``processes`` children of ``target``; ``on_result(i, answer, failure)`` under a lock."""
    if not paths:
        return
    processes = max(1, min(processes, len(paths), os.cpu_count() or 1))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(chunk: list[int]) -> None:
        worker, i = None, chunk[0]
        try:
            worker = _Worker(target, args)
            for i in chunk:
                answer, failure = worker.check(i, str(paths[i]), timeout)
                with lock:
                    on_result(i, answer, failure)
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
