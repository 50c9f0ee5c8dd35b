"""Live video sources for :mod:`pytrain.client.stream`: which URLs PyTrain reads, and the ``ffmpeg``
command that turns one into raw frames at the model's size and sampling rate.

Decoding is the system ``ffmpeg`` as a subprocess (the PyAV wheel's FFmpeg has no SRT): it reads
the source, resamples it to ``fps`` frames per second (the ``fps`` filter: frames dropped or
repeated, so any source frame rate works), scales each frame to ``width x height`` (FFmpeg's
scaler, as :func:`pytrain.video.read_clip` resizes while decoding) and writes ``rgb24`` frames,
``height * width * 3`` bytes each, to its stdout.

Accepted sources:

=================================  ==========================================================
``srt://host:port?mode=caller``    SRT; ``mode=listener`` waits for a caller (OBS, a camera)
``rtsp://``, ``rtsps://``          RTSP pulled from a camera (over TCP: loss-free, through
                                   firewalls); ``?listen=1``: be the RTSP server a sender
                                   publishes to (ffmpeg's ``-rtsp_flags listen``)
``rtmp://``, ``rtmps://``          RTMP (``?listen=1`` waits for a publisher)
``udp://host:port``                MPEG-TS over UDP (listens on the port)
``tcp://``                         MPEG-TS over TCP
``http://``, ``https://``          HLS playlists and HTTP streams
``/dev/videoN``                    a V4L2 webcam
a file path                        read at its own pace (``realtime``), repeated with ``loop``
=================================  ==========================================================
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pytrain.errors import ClientError

#: URL schemes ffmpeg reads as network streams.
NETWORK_SCHEMES = ("srt", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "http", "https")
#: How much of a network stream ffmpeg reads to find its video: microseconds, bytes.
PROBE_MICROSECONDS = 1_000_000
PROBE_BYTES = 1_000_000


@dataclass(frozen=True)
class StreamSource:
    """One live source.

    Attributes:
        url: a URL of :data:`NETWORK_SCHEMES`, ``/dev/videoN`` or a video file path.
        name: the name printed in every output line (default: ``url``).
        loop: repeat a file forever (``-stream_loop -1``); only for files.
        realtime: read a file at its own frame rate (``-re``), as a camera would send it; off: as
            fast as it decodes.
    """

    url: str
    name: str = ""
    loop: bool = False
    realtime: bool = True

    @property
    def label(self) -> str:
        """The name printed for this stream."""
        return self.name or self.url

    @property
    def kind(self) -> str:
        """The URL scheme (``srt``, ``udp``...), ``v4l2`` or ``file``."""
        scheme = urlsplit(self.url).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            return scheme
        if self.url.startswith("/dev/video"):
            return "v4l2"
        return "file"

    @property
    def is_file(self) -> bool:
        """A local file (ends unless ``loop``)."""
        return self.kind == "file"

    @property
    def listens(self) -> bool:
        """The reader waits for the sender (SRT listener, UDP, RTMP ``listen=1``): no frame yet is
        normal, not a failed connection."""
        query = {k.lower(): v for k, v in parse_qs(urlsplit(self.url).query).items()}
        return (self.kind == "udp" or (self.kind == "srt" and query.get("mode") == ["listener"])
                or (self.kind.startswith(("rtmp", "rtsp")) and query.get("listen") == ["1"]))

    def check(self) -> None:
        """Refuse a source that can never work, before anything starts.

        Raises:
            ClientError: an unknown URL scheme, a missing file or device, ``loop`` on a network
                stream; the message names the URL and the fix.
        """
        scheme = urlsplit(self.url).scheme
        if self.kind == "file":
            if scheme and len(scheme) > 1:  # "C:" is a drive, "foo://" a scheme PyTrain does not read
                raise ClientError(f"stream {self.url!r}: unknown URL scheme {scheme!r}",
                                  hint=f"use one of {', '.join(s + '://' for s in NETWORK_SCHEMES)}, /dev/videoN or a file path")
            if not Path(self.url).is_file():
                raise ClientError(f"stream {self.url!r}: no such file", hint="pass an existing video file or a stream URL")
        elif self.kind == "v4l2" and not Path(self.url).exists():
            raise ClientError(f"stream {self.url!r}: no such camera device", hint="list cameras with `ls /dev/video*`")
        if self.loop and not self.is_file:
            raise ClientError(f"stream {self.url!r}: --loop repeats files only", hint="drop --loop for live streams")


def ffmpeg_command(source: StreamSource, *, fps: float, height: int, width: int, ffmpeg: str | None = None) -> list[str]:
    """The ``ffmpeg`` argv that writes ``source`` to stdout as ``(height, width, 3)`` rgb24 frames
    at ``fps`` frames per second.

    Args:
        source: the stream (checked with :meth:`StreamSource.check` first).
        fps: output frame rate (frames per second, > 0): the model's ``num_frames / clip_seconds``.
        height, width: output frame size in pixels.
        ffmpeg: the binary (default: ``ffmpeg`` on ``PATH``).

    Raises:
        ClientError: no ``ffmpeg`` binary, or a bad source (see :meth:`StreamSource.check`).
    """
    source.check()
    binary = ffmpeg or shutil.which("ffmpeg")
    if binary is None:
        raise ClientError("pytrain stream needs the ffmpeg program, and none is on PATH", hint="apt-get install ffmpeg")
    url, kind = source.url, source.kind
    before: list[str] = []
    if kind == "file":
        before += ["-re"] if source.realtime else []
        before += ["-stream_loop", "-1"] if source.loop else []
    elif kind == "v4l2":
        before += ["-f", "v4l2"]
    elif kind in ("rtsp", "rtsps"):
        before += ["-rtsp_transport", "tcp"]
        if source.listens:  # ffmpeg's RTSP reader takes "listen" as a flag, not in the URL
            before += ["-rtsp_flags", "listen"]
            url = url.split("?", 1)[0]
    elif kind == "udp" and "overrun_nonfatal" not in url:
        # a burst larger than the socket buffer drops packets instead of ending the stream
        url += ("&" if "?" in url else "?") + "overrun_nonfatal=1&fifo_size=50000"
    if kind in NETWORK_SCHEMES:
        # a live stream has no index: find its video after 1 s / 1 MB instead of ffmpeg's 5 s
        before += ["-analyzeduration", str(PROBE_MICROSECONDS), "-probesize", str(PROBE_BYTES)]
    return [
        binary, "-nostdin", "-hide_banner", "-loglevel", "error", *before, "-i", url,
        "-an", "-sn", "-dn", "-vf", f"fps={fps:.6g},scale={width}:{height}", "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1",
    ]
