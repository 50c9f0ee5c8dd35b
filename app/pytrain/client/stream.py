"""Continuous clip classification of live streams through Triton (``pytrain stream``).

Example::

    from pytrain.client import StreamClassifier, StreamSource

    sources = [StreamSource("srt://127.0.0.1:9999?mode=listener"), StreamSource("rtsp://cam1/stream")]
    with StreamClassifier(sources, model="kitchen", url="127.0.0.1:8001", smooth=3) as classifier:
        for window in classifier:                    # one StreamPrediction per window, as they come
            print(window.stream, window.label, window.probability, window.latency_ms)

How a stream becomes predictions:

- **Sampling as in training.** A model input spans the tensor spec's ``clip_seconds``: with
  ``uniform`` sampling training spreads ``num_frames`` frames over a whole clip (``clip_seconds``:
  the training clips' median duration); with ``dense`` sampling it takes ``num_frames`` frames
  ``frame_interval`` apart (``clip_seconds``: ``num_frames * frame_interval`` frames at the training
  videos' median frame rate, so the stream's frames are ``frame_interval`` source frames apart at
  that rate). A stream is therefore decoded at ``fps = num_frames / clip_seconds`` frames per
  second (:func:`pytrain.client.sources.ffmpeg_command`: ffmpeg resamples and scales), and a
  window is ``num_frames`` consecutive frames: it spans the time a training clip did. A new window
  starts every ``stride`` frames (default half a window).
- **One reader thread per stream** runs ffmpeg and cuts windows. A stream that ends or stalls (no
  frame for ``stall_timeout_s``) is restarted with capped exponential backoff; a stream that never
  delivers a frame in ``connect_retries`` attempts in a row gives up with an error naming its URL,
  and the other streams go on. Files without ``loop`` end at their end.
- **Bounded memory.** At most ``queue_windows`` windows per stream wait for Triton; when Triton
  falls behind the oldest is dropped (counted in :attr:`StreamStats.dropped`). Of ffmpeg's stderr
  only the last :data:`STDERR_TAIL_LINES` lines are kept.
- **No secret printed.** A stream is named by ``name`` or its URL without password and secret
  query parameters (:func:`pytrain.client.sources.redact`, the one redaction for every line,
  record, log and error); such a URL reaches ffmpeg on its stdin, not in its argv.
- **Batched requests.** Windows that are ready together (from any streams) go to Triton as one
  request (up to the model's ``max_batch_size``); Triton's dynamic batching merges the rest.
- **Failures end the iteration.** A reader that cannot build or start its ffmpeg, or whose ffmpeg
  refuses its command line, ends the iterator with a :class:`ClientError` naming the stream.
- **Clean stop.** :meth:`StreamClassifier.close` (also on ``with`` exit, SIGINT/SIGTERM in the CLI)
  terminates every ffmpeg child and waits for it: none is left running or as a zombie.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pytrain.client.client import ModelInfo, Prediction, TritonClient, repository_spec
from pytrain.client.sources import StreamSource, ffmpeg_command, ffmpeg_stdin
from pytrain.errors import ClientError

log = logging.getLogger(__name__)

#: Clip duration assumed for a model whose tensor spec has no ``clip_seconds`` (exported before
#: PyTrain recorded it), seconds; ``--clip-seconds`` overrides it.
FALLBACK_CLIP_SECONDS = 2.0
#: Windows per stream that may wait for Triton before the oldest is dropped (``--queue-windows``).
DEFAULT_QUEUE_WINDOWS = 8
#: Lines of ffmpeg's stderr kept per run (each cut at :data:`STDERR_LINE_BYTES` bytes): its last error.
STDERR_TAIL_LINES = 20
STDERR_LINE_BYTES = 2000
#: What ffmpeg prints when its command line is wrong (an unknown option): no retry can help.
_COMMAND_REFUSED = "Error splitting the argument list"
_ERROR_LINES = 3  # of the stderr tail in a stream's error (a URL read from stdin ends in a bare "pipe:0: ...")
_TERMINATE_WAIT_S = 3.0  # ffmpeg exits within milliseconds of SIGTERM; then SIGKILL
_POLL_S = 0.5  # how often the iterator checks that its readers are alive while no window comes


@dataclass(frozen=True)
class Window:
    """``num_frames`` consecutive frames of one stream, ready for the model.

    Attributes:
        stream: the stream's name (:attr:`StreamSource.label`).
        index: the window's number in its stream, from 0.
        frames: ``(T, H, W, 3)`` uint8 RGB.
        start_s, end_s: stream time of the first frame and just after the last, seconds since the
            stream's first frame (frames counted at the sampling rate; reconnects continue the count).
        start_utc, end_utc: wall clock (UTC) when the first and the last frame arrived.
        ready: ``time.monotonic()`` when the last frame arrived (the latency's start).
        reconnects: the stream's reconnects so far.
    """

    stream: str
    index: int
    frames: np.ndarray
    start_s: float
    end_s: float
    start_utc: datetime
    end_utc: datetime
    ready: float
    reconnects: int


@dataclass(frozen=True)
class StreamPrediction:
    """The answer for one window (one JSON line of ``pytrain stream``).

    Attributes:
        window: the window (its frames are not printed).
        label, probability: the top class and its probability (0..1); mean of the last ``smooth``
            windows of the stream when smoothing.
        top_k: the ``k`` most probable classes, most probable first.
        model, version: the Triton model and the version asked for (``""``: the newest).
        latency_ms: milliseconds from the window's last frame to the answer.
    """

    window: Window
    label: str
    probability: float
    top_k: list[Prediction]
    model: str
    version: str
    latency_ms: float

    @property
    def stream(self) -> str:
        """The stream's name."""
        return self.window.stream

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's object."""
        w = self.window
        return {
            "stream": w.stream, "window": w.index, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
            "start_utc": w.start_utc.isoformat(timespec="milliseconds"), "end_utc": w.end_utc.isoformat(timespec="milliseconds"),
            "label": self.label, "probability": round(float(self.probability), 4), "top_k": [p.to_dict() for p in self.top_k],
            "model": self.model, "version": self.version, "latency_ms": round(self.latency_ms, 1), "reconnects": w.reconnects,
        }


@dataclass
class StreamStats:
    """What happened to one stream: its name (:attr:`StreamSource.label`), ``windows`` produced,
    ``dropped`` (windows never classified: the oldest waiting, dropped when Triton fell behind), ``reconnects``
    (restarts after a drop, a stall or a failed connection), ``error`` when it gave up or failed
    (else ``None``; secrets redacted), ``fatal`` when its reader failed (no retry could help: the
    iterator raises), ``ended`` when its reader stopped."""

    stream: str
    windows: int = 0
    dropped: int = 0
    reconnects: int = 0
    error: str | None = None
    fatal: bool = False
    ended: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The summary line's object."""
        return {"stream": self.stream, "windows": self.windows, "dropped": self.dropped, "reconnects": self.reconnects,
                "error": self.error}


class WindowQueue:
    """Windows waiting for Triton, at most ``bound`` per stream, and the readers' end markers.

    :meth:`put` of a window past its stream's bound drops that stream's oldest waiting window (a
    late answer is worth less than a fresh one; memory stays at ``bound`` windows per stream); an
    end marker (:class:`StreamStats`) is never dropped. Thread-safe.
    """

    def __init__(self, bound: int = DEFAULT_QUEUE_WINDOWS) -> None:
        if bound < 1:
            raise ClientError(f"queue bound {bound!r} must be >= 1 window", hint="pass --queue-windows 1 or more")
        self.bound = bound
        self._items: collections.deque[Window | StreamStats] = collections.deque()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._ready = threading.Condition()

    def put(self, item: Window | StreamStats) -> Window | None:
        """Add ``item``; returns the window dropped to make room (``None``: none)."""
        dropped = None
        with self._ready:
            if isinstance(item, Window):
                if self._waiting[item.stream] >= self.bound:
                    dropped = self._drop_oldest(item.stream)
                self._waiting[item.stream] += 1
            self._items.append(item)
            self._ready.notify()
        return dropped

    def take(self, limit: int, timeout: float | None = None) -> list[Window | StreamStats]:
        """Up to ``limit`` items in arrival order, waiting at most ``timeout`` seconds for the
        first (``None``: for ever); ``[]`` when none came."""
        with self._ready:
            self._ready.wait_for(lambda: self._items, timeout)
            taken = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
            for item in taken:
                if isinstance(item, Window):
                    self._waiting[item.stream] -= 1
            return taken

    def empty(self) -> bool:
        """Nothing waits."""
        with self._ready:
            return not self._items

    def _drop_oldest(self, stream: str) -> Window:
        index = next(i for i, w in enumerate(self._items) if isinstance(w, Window) and w.stream == stream)
        window = self._items[index]
        del self._items[index]
        self._waiting[stream] -= 1
        return window  # type: ignore[return-value]


@dataclass
class _Sampling:
    """A window's frame size and timing: ``num_frames`` frames of ``height x width`` at ``fps``,
    a new window every ``stride`` frames."""

    num_frames: int
    height: int
    width: int
    fps: float
    stride: int

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3


class StreamReader(threading.Thread):
    """Runs ffmpeg for one source, cuts its frames into :class:`Window` s and puts them on ``out``.

    Reconnects: after an end (network streams, looping files), a stall (no frame for
    ``stall_timeout_s``) or a failed connection it waits ``min(backoff_cap_s, backoff_s * 2**(n-1))``
    (``n``: failed attempts in a row) and starts ffmpeg again, logging each attempt once. ``n``
    returns to 0 when a frame arrives. After ``connect_retries`` attempts in a row without a frame
    the stream gives up: ``stats.error`` names the URL and ffmpeg's last error.

    Failures no retry can help (the ffmpeg command cannot be built, ffmpeg cannot be started or
    refuses its command line, an error of the reader itself) end the reader at once with
    ``stats.error`` and ``stats.fatal`` set. Either way its last act is to put ``stats`` on ``out``.
    Every name, log line and error names the stream by :attr:`StreamSource.label` / ``title``,
    secrets redacted.
    """

    def __init__(self, source: StreamSource, sampling: _Sampling, out: WindowQueue, *,
                 stall_timeout_s: float, connect_retries: int, backoff_s: float, backoff_cap_s: float) -> None:
        super().__init__(name=f"stream-{source.label}", daemon=True)
        self.source, self.sampling, self.out = source, sampling, out
        self.stall_timeout_s, self.connect_retries = stall_timeout_s, connect_retries
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self.stats = StreamStats(source.label)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.pids: list[int] = []  # every ffmpeg started, for tests that check none is left behind
        self._frames_total = 0
        self._buffer: collections.deque[tuple[np.ndarray, datetime]] = collections.deque(maxlen=sampling.num_frames)
        self._since_window = 0

    def stop(self) -> None:
        """Ask the thread to end; it terminates and reaps its ffmpeg."""
        self._halt.set()
        self._kill()

    def run(self) -> None:
        try:
            self._reconnecting()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the classifier must hear of it, not wait
            if self._halt.is_set():
                return  # stopped: the ffmpeg it read was ended under it
            reason = str(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
            self.stats.error, self.stats.fatal = self.source.redact(f"stream {self.source.title} failed: {reason}"), True
            log.error("%s", self.stats.error)
        finally:
            self._kill()
            self.stats.ended = True
            self.out.put(self.stats)  # tells the classifier this reader is done

    def _reconnecting(self) -> None:
        """Run ffmpeg until stopped, the file ended or the stream gave up (``stats.error``)."""
        failures = 0
        command = ffmpeg_command(self.source, fps=self.sampling.fps, height=self.sampling.height, width=self.sampling.width)
        stdin = ffmpeg_stdin(self.source)
        while not self._halt.is_set():
            got_frames, why = self._run_once(command, stdin)
            if self._halt.is_set() or (self.source.is_file and not self.source.loop and why == "ended"):
                return
            failures = 0 if got_frames else failures + 1
            if failures > self.connect_retries:
                self.stats.error = f"stream {self.source.title} gave up after {failures} attempts without a frame: {why}"
                log.error("%s (hint: check the URL, that the sender runs, and the network)", self.stats.error)
                return
            delay = min(self.backoff_cap_s, self.backoff_s * 2 ** max(0, failures - 1))
            self.stats.reconnects += 1
            log.warning("stream %s: %s; reconnecting in %.1f s (attempt %d)", self.source.label, why, delay, self.stats.reconnects)
            if self._halt.wait(delay):
                return

    def _run_once(self, command: list[str], stdin: bytes | None) -> tuple[bool, str]:
        """One ffmpeg run; returns (any frame arrived, why it ended: ``ended``, a stall, ffmpeg's
        last error, redacted).

        Raises:
            ClientError: ffmpeg cannot be started, or it refused its command line.
        """
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)  # Ctrl-C reaches the CLI only; it stops the children
        except OSError as exc:
            raise ClientError(f"cannot start {command[0]}: {exc}", hint="install ffmpeg (apt-get install ffmpeg) or fix PATH") from exc
        with self._lock:
            self._proc = proc
            self.pids.append(proc.pid)
        tail: collections.deque[bytes] = collections.deque(maxlen=STDERR_TAIL_LINES)
        drain = threading.Thread(target=_keep_tail, args=(proc.stderr, tail), daemon=True)
        drain.start()
        try:
            if self._halt.is_set():  # stop() came between the check and the start
                return False, "stopped"
            _send(proc, stdin)
            got, why = self._read_frames(proc)
        finally:  # stop() (another thread) only ends ffmpeg: its pipes are closed here, where they are read
            self._kill()
            proc.stdout.close()
            drain.join(timeout=2.0)
        lines = [self.source.redact(line.decode("utf-8", "replace").strip()) for line in list(tail)]
        lines = [line for line in lines if line]
        if any(_COMMAND_REFUSED in line for line in lines):
            raise ClientError(f"ffmpeg refused its command line: {' | '.join(lines)}",
                              hint="this ffmpeg lacks an option PyTrain uses: PyTrain is tested with FFmpeg 5.1 (`ffmpeg -version`)")
        if why == "ended" and lines and not self._halt.is_set():
            why = f"ffmpeg: {' | '.join(lines[-_ERROR_LINES:])}"
        elif why == "ended" and not got:
            why = "ended without a frame"
        return got, why

    def _read_frames(self, proc: subprocess.Popen) -> tuple[bool, str]:
        """Read ``proc``'s frames until it ends, stalls or the reader is stopped; returns (any frame
        arrived, ``ended`` or the stall)."""
        fd, size = proc.stdout.fileno(), self.sampling.frame_bytes
        got, chunk = False, bytearray()
        last = time.monotonic()
        while not self._halt.is_set():
            # before the first frame a listener may wait for its sender for as long as it takes
            limit = None if (not got and self.source.listens) else self.stall_timeout_s
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                if limit is not None and time.monotonic() - last > limit:
                    return got, f"no frame for {limit:g} s (stalled)"
                continue
            data = os.read(fd, size - len(chunk))
            if not data:
                break
            chunk += data
            if len(chunk) == size:
                got, last = True, time.monotonic()
                self._frame(np.frombuffer(bytes(chunk), np.uint8).reshape(self.sampling.height, self.sampling.width, 3))
                chunk = bytearray()
        return got, "ended"

    def _frame(self, frame: np.ndarray) -> None:
        s = self.sampling
        now = datetime.now(timezone.utc)
        self._buffer.append((frame, now))
        self._frames_total += 1
        self._since_window += 1
        first = self.stats.windows == 0
        if len(self._buffer) == s.num_frames and (self._since_window >= s.stride or (first and self._since_window >= s.num_frames)):
            self._since_window = 0
            end = self._frames_total / s.fps
            window = Window(
                stream=self.source.label, index=self.stats.windows, frames=np.stack([f for f, _ in self._buffer]),
                start_s=end - s.num_frames / s.fps, end_s=end, start_utc=self._buffer[0][1], end_utc=now,
                ready=time.monotonic(), reconnects=self.stats.reconnects,
            )
            self.stats.windows += 1
            if self.out.put(window) is not None:
                self._dropped()

    def _dropped(self) -> None:
        """Count a window dropped because Triton fell behind; the first drop is logged."""
        self.stats.dropped += 1
        if self.stats.dropped == 1:
            log.warning("stream %s: Triton is behind; dropping the oldest waiting windows (more than %d wait; "
                        "the summary counts them)", self.source.label, self.out.bound)

    def _kill(self) -> None:
        """Terminate the running ffmpeg (SIGTERM, then SIGKILL) and reap it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_TERMINATE_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


def _send(proc: subprocess.Popen, data: bytes | None) -> None:
    """Write ``data`` (:func:`ffmpeg_stdin`'s list, a few hundred bytes: the pipe takes it whole)
    to ``proc``'s stdin and close it; an ffmpeg that already exited says why on its stderr."""
    if proc.stdin is None:
        return
    try:
        if data:
            os.write(proc.stdin.fileno(), data)
    except OSError:
        pass
    finally:
        proc.stdin.close()


def _keep_tail(pipe: Any, tail: collections.deque[bytes]) -> None:
    """Read ``pipe`` (ffmpeg's stderr) to its end, keeping only its last lines in ``tail`` (a
    bounded deque), each cut at :data:`STDERR_LINE_BYTES` bytes."""
    for line in iter(lambda: pipe.readline(STDERR_LINE_BYTES), b""):
        tail.append(line)
    pipe.close()


@dataclass
class _Smoother:
    """The mean of the last ``k`` probability vectors of one stream."""

    k: int
    history: collections.deque = field(default_factory=collections.deque)

    def add(self, probabilities: np.ndarray) -> np.ndarray:
        self.history.append(probabilities)
        while len(self.history) > self.k:
            self.history.popleft()
        return np.mean(np.stack(self.history), axis=0)


class StreamClassifier:
    """Classify live streams window by window through Triton; iterate it for :class:`StreamPrediction` s.

    Args:
        sources: the streams (:class:`StreamSource`, or URL strings).
        model: the Triton model name.
        version: the model version (default: the newest Triton serves).
        url: Triton's gRPC ``host:port`` (as :class:`TritonClient` takes it).
        config_path: a PyTrain ``<model>.config`` to read the clip size and ``clip_seconds`` from.
        clip_seconds: the time a window spans, seconds (default: the model's ``clip_seconds``, see
            :func:`resolve_clip_seconds`).
        stride: frames between window starts (default: half a window, at least 1).
        top_k: classes per answer.
        smooth: average the probabilities of the last ``smooth`` windows of a stream (1: none).
        min_probability: windows whose top probability is below it are not yielded.
        events: yield a window only when its stream's (smoothed) label changes.
        stall_timeout_s: seconds without a frame before a stream is restarted.
        connect_retries: attempts in a row without a frame before a stream gives up.
        backoff_s, backoff_cap_s: the reconnect delay's start and cap, seconds.
        queue_windows: windows per stream that may wait for Triton; past it the oldest is dropped
            (:class:`WindowQueue`, counted in :attr:`StreamStats.dropped`).
        client: a connected :class:`TritonClient` to use (default: one made from ``url``).

    Raises:
        ClientError: on entering, a source that can never work (unknown scheme, missing file),
            Triton unreachable or the model not ready; naming the URL (redacted) or the model.
    """

    def __init__(
        self, sources: Sequence[StreamSource | str], model: str, *, version: int | str | None = None, url: str | None = None,
        config_path: Path | None = None, clip_seconds: float | None = None, stride: int | None = None, top_k: int = 1,
        smooth: int = 1, min_probability: float = 0.0, events: bool = False, stall_timeout_s: float = 10.0,
        connect_retries: int = 5, backoff_s: float = 0.5, backoff_cap_s: float = 10.0,
        queue_windows: int = DEFAULT_QUEUE_WINDOWS, client: TritonClient | None = None,
    ) -> None:
        self.sources = [s if isinstance(s, StreamSource) else StreamSource(str(s)) for s in sources]
        if not self.sources:
            raise ClientError("no stream to classify", hint="pass at least one URL or file")
        names = [s.label for s in self.sources]
        if len(set(names)) != len(names):
            raise ClientError(f"streams {names} repeat a name", hint="give each stream its own URL or --name")
        for source in self.sources:
            source.check()
        if clip_seconds is not None and not clip_seconds > 0:
            raise ClientError(f"clip_seconds {clip_seconds!r} must be > 0 seconds")
        self.model, self.version = model, "" if version is None else str(version)
        self.version_served = self.version  # the newest ready version when none is asked for
        self.config_path, self.clip_seconds, self.stride = config_path, clip_seconds, stride
        self.top_k, self.smooth, self.min_probability, self.events = top_k, max(1, smooth), min_probability, events
        self.reader_options = dict(stall_timeout_s=stall_timeout_s, connect_retries=connect_retries, backoff_s=backoff_s,
                                   backoff_cap_s=backoff_cap_s)
        self._own_client = client is None
        self.client = client or TritonClient(url, ready_timeout_s=30.0, inference_timeout_s=30.0)
        self.readers: list[StreamReader] = []
        self._running = 0  # readers whose end-of-stream marker the iterator has not taken yet
        self._queue = WindowQueue(queue_windows)
        self._smoothers: dict[str, _Smoother] = {}
        self._last_label: dict[str, str] = {}
        self.info: ModelInfo | None = None
        self.sampling: _Sampling | None = None

    # --- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> "StreamClassifier":
        try:
            self.start()
        except BaseException:  # __exit__ is not called when entering fails: close the client made here
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect to Triton, read the model's clip size and duration, start one reader per stream.

        Raises:
            ClientError: Triton unreachable, the model not ready or not a PyTrain clip model.
        """
        if self.readers:
            return
        if self._own_client:
            self.client.connect()
        self.info = self.client.model_info(self.model, self.version or None, config_path=self.config_path)
        if not self.version:
            ready = self.client.ready_versions(self.model)
            self.version_served = str(ready[-1]) if ready else ""
        seconds = resolve_clip_seconds(self.info, self.clip_seconds, self.model, self.version)
        t = self.info.num_frames
        stride = self.stride if self.stride is not None else max(1, t // 2)
        if stride < 1:
            raise ClientError(f"stride {stride} must be >= 1 frame", hint="pass --stride 1 or more")
        self.sampling = _Sampling(num_frames=t, height=self.info.height, width=self.info.width, fps=t / seconds, stride=stride)
        log.info("model %s: windows of %d frames at %.3g fps (%.3g s, a new one every %d frames)", self.model, t,
                 self.sampling.fps, seconds, stride)
        for source in self.sources:
            reader = StreamReader(source, self.sampling, self._queue, **self.reader_options)
            self.readers.append(reader)
            self._running += 1
            reader.start()

    def close(self) -> None:
        """Stop every reader (ffmpeg terminated and reaped) and close the Triton client."""
        for reader in self.readers:
            reader.stop()
        for reader in self.readers:
            reader.join(timeout=_TERMINATE_WAIT_S + 2.0)
        if self._own_client:
            self.client.close()

    @property
    def stats(self) -> list[StreamStats]:
        """Per stream: windows, reconnects, error."""
        return [r.stats for r in self.readers]

    # --- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamPrediction]:
        """Predictions as windows become ready, until every stream has ended (files without
        ``loop``, streams that gave up) or :meth:`close`.

        Raises:
            ClientError: inference failed (Triton gone, a timeout); a reader failed (its ffmpeg
                command could not be built or started, or was refused: :attr:`StreamStats.fatal`),
                naming the stream; a reader ended without its end marker.
        """
        self.start()
        assert self.info is not None
        batch_limit = max(1, self.info.max_batch_size or 1)
        while self._running:  # kept on the instance: iterating again after a break goes on where it was
            items = self._queue.take(batch_limit * 4, timeout=_POLL_S)  # all that waits: one request per batch
            if not items:
                self._check_alive()
                continue
            windows = [i for i in items if isinstance(i, Window)]
            ended = [i for i in items if isinstance(i, StreamStats)]
            self._running -= len(ended)
            if windows:
                yield from self._classify(windows)
            failed = [s.error for s in ended if s.fatal]
            if failed:
                raise ClientError("; ".join(e for e in failed if e))

    def _check_alive(self) -> None:
        """Raise when a reader thread is gone without its end marker (a reader bug): waiting on
        would never end."""
        alive = sum(r.is_alive() for r in self.readers)  # before empty(): a marker is put before its thread ends
        if self._running > alive and self._queue.empty():
            lost = [r.source.title for r in self.readers if not r.is_alive() and not r.stats.ended]
            raise ClientError(f"the reader of stream(s) {', '.join(lost) or '?'} ended without a word", hint="a PyTrain bug: please report it")

    def _classify(self, windows: list[Window]) -> Iterator[StreamPrediction]:
        assert self.info is not None
        frames = np.stack([w.frames for w in windows])
        answers = self.client.predict_frames(self.model, frames, version=self.version or None, top_k=self.info.num_classes)
        done = time.monotonic()
        version = self.version_served
        for window, ranked in zip(windows, answers):
            labels = sorted(p.label for p in ranked)
            by_label = {p.label: p.probability for p in ranked}
            probabilities = np.array([by_label[label] for label in labels], dtype=np.float64)
            smoother = self._smoothers.setdefault(window.stream, _Smoother(self.smooth))
            mean = smoother.add(probabilities)
            order = np.argsort(-mean, kind="stable")
            top = [Prediction(labels[i], float(mean[i])) for i in order[: max(1, self.top_k)]]
            if top[0].probability < self.min_probability:
                continue
            if self.events and self._last_label.get(window.stream) == top[0].label:
                continue
            self._last_label[window.stream] = top[0].label
            yield StreamPrediction(window=window, label=top[0].label, probability=top[0].probability, top_k=top,
                                   model=self.model, version=version, latency_ms=(done - window.ready) * 1000.0)


def resolve_clip_seconds(info: ModelInfo, given: float | None, model: str, version: str) -> float:
    """The seconds a window spans: ``given``, else the model's ``clip_seconds`` (its PyTrain config,
    else the local model repository's ``<model>/<version>/tensor_spec.json``), else
    :data:`FALLBACK_CLIP_SECONDS` with a warning."""
    if given is not None:
        return float(given)
    if info.spec.clip_seconds:
        return float(info.spec.clip_seconds)
    seconds = _repository_clip_seconds(model, version)
    if seconds:
        return seconds
    log.warning("model %s has no clip_seconds (trained before PyTrain recorded it): windows span %g s; "
                "pass --clip-seconds with the training clips' typical duration", model, FALLBACK_CLIP_SECONDS)
    return FALLBACK_CLIP_SECONDS


def _repository_clip_seconds(model: str, version: str) -> float | None:
    """``clip_seconds`` from ``PYTRAIN_MODEL_REPO_DIR/<model>/<version or newest>/tensor_spec.json``
    when this host has the repository (:func:`pytrain.client.client.repository_spec`)."""
    local = repository_spec(model, version)
    return None if local is None else local.clip_seconds
