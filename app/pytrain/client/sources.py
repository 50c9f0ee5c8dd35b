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

Secrets: a URL's password (``rtsp://admin:secret@cam``) and password-like query parameters
(:data:`SECRET_PARAMETERS`: SRT's ``passphrase=``, ``password=``, ``token=``...) never leave
PyTrain in clear. :func:`redact` is the one function that hides them, for every name, log line,
record and error; a source that carries one reaches ffmpeg through its stdin as a one-entry
``ffconcat`` list (:func:`ffmpeg_stdin`), not in its argv, which any user can read with ``ps``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pytrain.errors import ClientError

#: URL schemes ffmpeg reads as network streams.
NETWORK_SCHEMES = ("srt", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "http", "https")
#: How much of a network stream ffmpeg reads to find its video: microseconds, bytes.
PROBE_MICROSECONDS = 1_000_000
PROBE_BYTES = 1_000_000
#: Query parameters that hold a secret (names compared without case): SRT's ``passphrase`` and the
#: usual password, token and key names of HTTP, RTMP and camera URLs.
SECRET_PARAMETERS = ("passphrase", "password", "passwd", "pass", "pwd", "token", "access_token", "auth_token", "auth",
                     "secret", "key", "api_key", "apikey", "stream_key", "streamkey", "sig", "signature")
#: What :func:`redact` writes instead of a secret.
REDACTED = "***"
#: Protocols ffmpeg may open for a source read through its stdin (``pipe``: the ffconcat list
#: itself); ffmpeg's default whitelist for a list read from a pipe allows none of the network ones.
STDIN_PROTOCOLS = ("pipe", "crypto", "data", "tcp", "tls", "udp", "rtp", "srtp", "srt", "http", "https", "httpproxy",
                   "rtmp", "rtmps", "rtmpt", "rtmpts", "ffrtmphttp")

_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:'\"]*):[^\s/?#'\"]*@")
_SECRET_QUERY = re.compile(r"(?P<head>[?&;](?:" + "|".join(SECRET_PARAMETERS) + r")=)[^&;#\s'\"]*", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` (a URL, a log line, ffmpeg's stderr) with every secret replaced by ``***``.

    Hidden: the password of any ``scheme://user:password@host`` in it (the user name stays), the
    value of any query parameter named in :data:`SECRET_PARAMETERS`, and each of
    ``secrets`` (a source's own, :attr:`StreamSource.secrets`: ffmpeg may print them decoded).
    The one redaction of :mod:`pytrain.client.stream`: names, log lines, records, errors.
    """
    text = _USERINFO.sub(rf"\g<head>:{REDACTED}@", text)
    text = _SECRET_QUERY.sub(rf"\g<head>{REDACTED}", text)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: no piece of one is left
        text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class StreamSource:
    """One live source.

    Attributes:
        url: a URL of :data:`NETWORK_SCHEMES`, ``/dev/videoN`` or a video file path; it may hold a
            password or a secret query parameter (never printed: :func:`redact`).
        name: the name printed in every output line (default: the URL, redacted).
        loop: repeat a file forever (``-stream_loop -1``); only for files.
        realtime: read a file at its own frame rate (``-re``), as a camera would send it; off: as
            fast as it decodes.
    """

    url: str
    name: str = ""
    loop: bool = False
    realtime: bool = True

    def __repr__(self) -> str:
        return (f"StreamSource(url={self.safe_url!r}, name={self.name!r}, loop={self.loop!r}, "
                f"realtime={self.realtime!r})")

    @property
    def label(self) -> str:
        """The name printed for this stream: ``name``, else the redacted URL."""
        return self.name or self.safe_url

    @property
    def safe_url(self) -> str:
        """The URL with its secrets replaced by ``***`` (:func:`redact`)."""
        return self.redact(self.url)

    @property
    def title(self) -> str:
        """How errors name the stream: the redacted URL quoted, after ``name`` when there is one."""
        return f"{self.name!r} ({self.safe_url})" if self.name else repr(self.safe_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The URL's password and secret query values, as written and percent-decoded (empty: none)."""
        if self.kind not in NETWORK_SCHEMES:
            return ()
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        found = [userinfo.partition(":")[2]] if ":" in userinfo else []
        found += [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer("?" + parts.query)]
        return tuple(sorted({v for raw in found if raw for v in (raw, unquote(raw))}))

    def redact(self, text: str) -> str:
        """``text`` with this source's secrets and any other URL secret hidden (:func:`redact`)."""
        return redact(text, self.secrets)

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
                raise ClientError(f"stream {self.title}: unknown URL scheme {scheme!r}",
                                  hint=f"use one of {', '.join(s + '://' for s in NETWORK_SCHEMES)}, /dev/videoN or a file path")
            if not Path(self.url).is_file():
                raise ClientError(f"stream {self.title}: no such file", hint="pass an existing video file or a stream URL")
        elif self.kind == "v4l2" and not Path(self.url).exists():
            raise ClientError(f"stream {self.title}: no such camera device", hint="list cameras with `ls /dev/video*`")
        if self.loop and not self.is_file:
            raise ClientError(f"stream {self.title}: --loop repeats files only", hint="drop --loop for live streams")
        if any(c in self.url for c in "\r\n\0"):
            raise ClientError(f"stream {self.title}: a line break or NUL in the URL", hint="pass the URL on one line")


def ffmpeg_command(source: StreamSource, *, fps: float, height: int, width: int, ffmpeg: str | None = None) -> list[str]:
    """The ``ffmpeg`` argv that writes ``source`` to stdout as ``(height, width, 3)`` rgb24 frames
    at ``fps`` frames per second.

    A source with secrets (:attr:`StreamSource.secrets`) is not in the argv (``ps`` shows any
    process's argv to every user): ffmpeg reads it from stdin, :func:`ffmpeg_stdin`'s list.

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
    before, url = _input_options(source)
    if source.secrets:  # the concat demuxer opens the URL it reads from stdin, with the same options
        before = ["-f", "concat", "-safe", "0", "-protocol_whitelist", ",".join(STDIN_PROTOCOLS), *_probe_options()]
        url = "pipe:0"
    return [
        binary, "-nostdin", "-hide_banner", "-loglevel", "error", *before, "-i", url,
        "-an", "-sn", "-dn", "-vf", f"fps={fps:.6g},scale={width}:{height}", "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1",
    ]


def ffmpeg_stdin(source: StreamSource) -> bytes | None:
    """What :func:`ffmpeg_command`'s ffmpeg reads on stdin: for a source with secrets, a one-entry
    ffconcat list (FFmpeg's concat demuxer: ``file 'URL'`` and one ``option NAME VALUE`` per input
    option); ``None`` for a source without secrets (its URL is in the argv)."""
    if not source.secrets:
        return None
    before, url = _input_options(source)
    lines = ["ffconcat version 1.0", f"file {_ffconcat_quote(url)}"]
    lines += [f"option {flag.lstrip('-')} {_ffconcat_quote(value)}" for flag, value in zip(before[::2], before[1::2])]
    return ("\n".join(lines) + "\n").encode()


def _input_options(source: StreamSource) -> tuple[list[str], str]:
    """ffmpeg's options before ``-i`` for ``source`` (a network source's come in flag/value pairs)
    and the URL it opens."""
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
        before += _probe_options()
    return before, url


def _probe_options() -> list[str]:
    """A live stream has no index: find its video after 1 s / 1 MB instead of ffmpeg's 5 s."""
    return ["-analyzeduration", str(PROBE_MICROSECONDS), "-probesize", str(PROBE_BYTES)]


def _ffconcat_quote(value: str) -> str:
    """``value`` as one ffconcat token: in single quotes, each ``'`` written ``'\\''``."""
    return "'" + value.replace("'", "'\\''") + "'"
