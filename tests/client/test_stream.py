"""``pytrain stream`` / :class:`pytrain.client.StreamClassifier` on real streams: ffmpeg publishing
on loopback (SRT, UDP, RTSP), the session's real Triton, the nearest-colour test model (a clip's
class is its background colour)."""

from __future__ import annotations

import base64
import collections
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fixtures.processes import wait_for
from fixtures.triton import TEST_CLASSES, publish_test_model, run_onnx
from pytrain.client import StreamClassifier, StreamSource
from pytrain.client import stream as stream_module
from pytrain.client.sources import ffmpeg_command, redact
from pytrain.client.stream import StreamReader, StreamStats, Window, WindowQueue, _Sampling
from pytrain.errors import ClientError
from pytrain.publish.triton_config import pytrain_ini, read_pytrain_ini
from pytrain.serving import free_port
from pytrain.spec import TensorSpec
from pytrain.video import read_clip, video_seconds

MODEL = "stream_kitchen"
T, H, W = 8, 32, 32
# windows of 8 frames over 1 s (8 fps), a new one every 4 frames: one answer per 0.5 s of stream
FAST = dict(clip_seconds=1.0, stride=4, stall_timeout_s=3.0, backoff_s=0.2, backoff_cap_s=1.0)

# secrets in the test URLs: no output, log, summary, error or ffmpeg argv may contain them
PASSWORD = "Pa55-w0rd-Xq7"  # of an RTSP or HTTP URL
PASSPHRASE = "srt-passphrase-Zk4"  # of an SRT URL (10 to 79 characters)

needs_ffmpeg = pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs the ffmpeg program (scripts/test.sh installs it)")


def clip_of(sources: Path, cls: str) -> Path:
    """The first clip of a folder of class ``cls`` in the synthetic dataset."""
    folder = sorted(p for p in (sources / "dataset1").iterdir() if p.name.split("_")[0] == cls)[0]
    return sorted(folder.glob("*.mp4"))[0]


@contextmanager
def publisher(clip: Path, url: str, *output: str):
    """``ffmpeg -re -stream_loop -1 -i clip -c copy <output...> url``: a looping live sender."""
    proc = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                             *(output or ("-f", "mpegts")), url], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_bound(port: int, protocol: str, timeout: float = 120.0) -> None:
    """Wait until a socket of this host listens on TCP ``port`` or is bound to UDP ``port`` (SRT runs
    over UDP): the ffmpeg on that end is ready for its peer."""
    tables, listening = {"tcp": (("tcp", "tcp6"), {"0A"}), "udp": (("udp", "udp6"), None)}[protocol]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in tables:
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and (listening is None or state in listening):
                    return
        time.sleep(0.1)
    raise AssertionError(f"nothing bound to {protocol} port {port} after {timeout:.0f} s")


def gone(pid: int) -> bool:
    """No process (running or zombie) has ``pid``."""
    return not Path(f"/proc/{pid}").exists()


def ffmpeg_children(pid: int) -> list[int]:
    """The ffmpeg processes ``pid`` runs now (threads and children may end while they are listed)."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in read(f"{task}/children").split()]
    return [c for c in children if read(f"/proc/{c}/comm").strip() == "ffmpeg"]


def argv_of(pid: int) -> str | None:
    """The argv of process ``pid`` as ``ps -eo args`` shows it (``None``: it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


@contextmanager
def http_server_with_password(body: Path, password: str):
    """A loopback HTTP server that sends ``body`` (MPEG-TS) only with HTTP Basic ``admin:password``
    (401 otherwise); yields its port."""
    expected = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ok = self.headers.get("Authorization") == expected
            data = body.read_bytes() if ok else b""
            self.send_response(200 if ok else 401)
            if not ok:
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def first_window(source: StreamSource, sampling: _Sampling, *, send: Callable[[], subprocess.Popen] | None = None,
                 retries: int = 3, timeout: float = 60.0) -> tuple[Window | None, StreamReader, dict[int, str | None]]:
    """Run a :class:`StreamReader` until its first window or its end; ``send`` (re)starts a sender
    once the reader's ffmpeg runs. Returns (the window or ``None``, the reader, the argv of each
    ffmpeg it started, read from /proc as soon as it appeared)."""
    out = WindowQueue()
    reader = StreamReader(source, sampling, out, stall_timeout_s=5.0, connect_retries=retries, backoff_s=0.2, backoff_cap_s=0.5)
    argvs: dict[int, str | None] = {}
    sender: subprocess.Popen | None = None
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in list(reader.pids):
                argvs.setdefault(pid, argv_of(pid))
            if send is not None and reader.pids and (sender is None or sender.poll() is not None):
                time.sleep(0.5)  # the reader's ffmpeg listens before the sender calls (a sender that came too early is restarted)
                sender = send()
            items = out.take(1, timeout=0.01)
            if items:
                return (items[0] if isinstance(items[0], Window) else None), reader, argvs
        return None, reader, argvs
    finally:
        reader.stop()
        reader.join(10)
        if sender is not None:
            stop(sender)


def send(clip: Path, url: str, *output: str) -> Callable[[], subprocess.Popen]:
    """A starter of :func:`publisher`'s looping live sender, for :func:`first_window`."""
    return lambda: subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
                                     *(output or ("-f", "mpegts")), url], stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def stream_model(triton_server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nearest-colour model (8x32x32, classes cooking/drinking/eating/walking) served as ``stream_kitchen``."""
    return publish_test_model(triton_server, tmp_path_factory.mktemp("stream_model"), MODEL)


# --- without Triton -------------------------------------------------------------------------


def test_sources_that_can_never_work_are_refused_naming_the_url(tmp_path: Path) -> None:
    cases = {
        "ftp://camera/x": "unknown URL scheme 'ftp'",
        str(tmp_path / "missing.mp4"): "no such file",
        "/dev/video99": "no such camera device",
    }
    for url, reason in cases.items():
        with pytest.raises(ClientError, match=reason) as caught:
            StreamSource(url).check()
        assert repr(url) in str(caught.value)
    with pytest.raises(ClientError, match="--loop repeats files only"):
        StreamSource("udp://127.0.0.1:5000", loop=True).check()


def test_ffmpeg_command_resamples_scales_and_knows_listeners(tmp_path: Path) -> None:
    rtsp = ffmpeg_command(StreamSource("rtsp://0.0.0.0:8554/live?listen=1"), fps=4.0, height=H, width=W, ffmpeg="ffmpeg")
    assert rtsp[rtsp.index("-i") + 1] == "rtsp://0.0.0.0:8554/live"
    assert "-rtsp_flags" in rtsp and rtsp[rtsp.index("-vf") + 1] == "fps=4,scale=32:32"
    assert rtsp[-5:] == ["-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
    udp = ffmpeg_command(StreamSource("udp://127.0.0.1:5000"), fps=8, height=H, width=W, ffmpeg="ffmpeg")
    assert udp[udp.index("-i") + 1] == "udp://127.0.0.1:5000?overrun_nonfatal=1&fifo_size=50000"
    assert StreamSource("srt://h:1?mode=listener").listens and not StreamSource("srt://h:1?mode=caller").listens


def test_pytrain_ini_carries_clip_seconds_and_old_files_still_load(tmp_path: Path) -> None:
    spec = TensorSpec(class_list=["a", "b"], num_frames=T, height=H, width=W)
    historical = pytrain_ini(spec, epochs=1, shuffle_size=2, batch_size=3)
    assert "clip_seconds" not in historical and "clip_seconds" not in read_pytrain_ini(historical)
    text = pytrain_ini(TensorSpec(class_list=["a", "b"], num_frames=T, height=H, width=W, clip_seconds=2.4),
                       epochs=1, shuffle_size=2, batch_size=3)
    assert text == historical.replace("output_name = dense\n", "output_name = dense\nclip_seconds = 2.4\n")
    assert read_pytrain_ini(text)["clip_seconds"] == 2.4
    old = spec.to_dict()
    old.pop("clip_seconds")
    (tmp_path / "tensor_spec.json").write_text(json.dumps(old))
    assert TensorSpec.load(tmp_path).clip_seconds is None


def test_redact_hides_url_passwords_and_secret_parameters_everywhere_in_a_text() -> None:
    text = ("Connection to srt://127.0.0.1:9?mode=caller&PassPhrase=s3cret-phrase&pbkeylen=16 failed; "
            "[concat] Impossible to open 'rtsp://admin:pw:x@cam:554/s1?token=abc&profile=2' http://h/a?password=p@ss&x=1 "
            "rtsp://viewer@cam/s2 rtmp://host/app?key=k1;streamkey=k2")
    assert redact(text) == (
        "Connection to srt://127.0.0.1:9?mode=caller&PassPhrase=***&pbkeylen=16 failed; "
        "[concat] Impossible to open 'rtsp://admin:***@cam:554/s1?token=***&profile=2' http://h/a?password=***&x=1 "
        "rtsp://viewer@cam/s2 rtmp://host/app?key=***;streamkey=***")
    source = StreamSource("rtsp://admin:p%40ss%2Fw@cam/s1?passphrase=other-secret", name="door")
    assert source.secrets == ("other-secret", "p%40ss%2Fw", "p@ss/w")
    assert source.redact("auth p@ss/w failed for other-secret") == "auth *** failed for ***"  # ffmpeg may print them decoded
    assert source.label == "door" and "p%40ss" not in repr(source)
    assert StreamSource("rtsp://admin:p%40ss@cam/s1").label == "rtsp://admin:***@cam/s1"
    assert StreamSource("/data/pass=1.mp4").secrets == () and StreamSource("udp://127.0.0.1:5000").secrets == ()
    with pytest.raises(ClientError, match=r"stream 'srt://h:1\?passphrase=\*\*\*': --loop repeats files only") as caught:
        StreamSource("srt://h:1?passphrase=abcdefghijk", loop=True).check()
    assert "abcdefghijk" not in str(caught.value)


def test_ffmpeg_reads_a_url_with_secrets_from_its_stdin_with_the_same_options() -> None:
    from pytrain.client.sources import ffmpeg_stdin

    source = StreamSource(f"rtsp://admin:{PASSWORD}@0.0.0.0:8554/live?listen=1")
    argv = ffmpeg_command(source, fps=4.0, height=H, width=W, ffmpeg="ffmpeg")
    assert PASSWORD not in " ".join(argv)
    assert argv[5:10] == ["-f", "concat", "-safe", "0", "-protocol_whitelist"] and argv[argv.index("-i") + 1] == "pipe:0"
    assert ffmpeg_stdin(source).decode().splitlines() == [
        "ffconcat version 1.0", f"file 'rtsp://admin:{PASSWORD}@0.0.0.0:8554/live'", "option rtsp_transport 'tcp'",
        "option rtsp_flags 'listen'", "option analyzeduration '1000000'", "option probesize '1000000'"]
    quoted = ffmpeg_stdin(StreamSource("http://h/it's?token=t")).decode().splitlines()[1]
    assert quoted == "file 'http://h/it'\\''s?token=t'"
    assert ffmpeg_stdin(StreamSource("udp://127.0.0.1:5000")) is None


@needs_ffmpeg
@pytest.mark.parametrize("protocol", ["srt", "rtsp", "http"])
def test_a_url_with_a_secret_is_read_but_never_in_ffmpegs_argv(protocol: str, synthetic_sources: Path, tmp_path: Path) -> None:
    """The real ffmpeg child's /proc/<pid>/cmdline (what ``ps`` shows any user) has no secret, and
    the secret reached ffmpeg: SRT refuses a wrong passphrase, the HTTP server a wrong password."""
    port, clip = free_port(), clip_of(synthetic_sources, "cooking")
    sampling = _Sampling(T, H, W, fps=8.0, stride=T)
    if protocol == "srt":  # the reader listens with a passphrase; the sender calls with the same
        url, secret = f"srt://127.0.0.1:{port}?mode=listener&passphrase={PASSPHRASE}", PASSPHRASE
        window, reader, argvs = first_window(StreamSource(url), sampling,
                                             send=send(clip, f"srt://127.0.0.1:{port}?mode=caller&passphrase={PASSPHRASE}"))
    elif protocol == "rtsp":  # the reader is the RTSP server a sender publishes to
        url, secret = f"rtsp://admin:{PASSWORD}@127.0.0.1:{port}/live?listen=1", PASSWORD
        window, reader, argvs = first_window(StreamSource(url), sampling,
                                             send=send(clip, f"rtsp://127.0.0.1:{port}/live", "-rtsp_transport", "tcp", "-f", "rtsp"))
    else:
        ts = tmp_path / "clip.ts"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts", str(ts)], check=True)
        with http_server_with_password(ts, PASSWORD) as http_port:
            url, secret = f"http://admin:{PASSWORD}@127.0.0.1:{http_port}/clip.ts", PASSWORD
            window, reader, argvs = first_window(StreamSource(url), _Sampling(T, H, W, fps=T / (video_seconds(clip) * 0.95), stride=T))
    assert window is not None, reader.stats.error
    assert window.stream == url.replace(secret, "***") and window.frames.shape == (T, H, W, 3)
    seen = [argv for argv in argvs.values() if argv]
    assert seen and all("-i pipe:0" in argv and secret not in argv for argv in seen), seen


@needs_ffmpeg
@pytest.mark.parametrize("protocol", ["srt", "http"])
def test_a_wrong_secret_is_refused_and_the_error_does_not_print_it(protocol: str, synthetic_sources: Path, tmp_path: Path) -> None:
    clip, wrong = clip_of(synthetic_sources, "eating"), "wrong-secret-Jy5"
    sampling = _Sampling(T, H, W, fps=8.0, stride=T)
    if protocol == "srt":
        port = free_port()
        with publisher(clip, f"srt://127.0.0.1:{port}?mode=listener&passphrase={PASSPHRASE}"):
            wait_bound(port, "udp")
            window, reader, _ = first_window(StreamSource(f"srt://127.0.0.1:{port}?mode=caller&passphrase={wrong}"), sampling, retries=0)
    else:
        ts = tmp_path / "clip.ts"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts", str(ts)], check=True)
        with http_server_with_password(ts, PASSWORD) as port:
            window, reader, _ = first_window(StreamSource(f"http://admin:{wrong}@127.0.0.1:{port}/clip.ts"), sampling, retries=0)
    error = reader.stats.error
    assert window is None and error is not None and "gave up after 1 attempts without a frame: ffmpeg: " in error
    assert wrong not in error and wrong not in json.dumps(reader.stats.to_dict()), error


def test_window_queue_bounds_each_stream_and_never_drops_an_end_marker() -> None:
    now = datetime.now(timezone.utc)

    def window(stream: str, index: int) -> Window:
        return Window(stream, index, np.zeros((1, 1, 1, 3), np.uint8), 0.0, 0.1, now, now, 0.0, 0)

    out = WindowQueue(bound=2)
    assert out.put(window("a", 0)) is None and out.put(window("b", 0)) is None and out.put(window("a", 1)) is None
    marker = StreamStats("c")
    assert out.put(marker) is None
    assert out.put(window("a", 2)).index == 0  # a's oldest; b's window stays
    assert [i if isinstance(i, StreamStats) else (i.stream, i.index) for i in out.take(10, timeout=0)] == [
        ("b", 0), ("a", 1), marker, ("a", 2)]
    assert out.take(1, timeout=0) == [] and out.empty()
    with pytest.raises(ClientError, match="queue bound 0 must be >= 1 window"):
        WindowQueue(bound=0)


@needs_ffmpeg
def test_a_slow_consumer_makes_the_oldest_windows_drop_and_they_are_counted(synthetic_sources: Path) -> None:
    """Nobody takes windows while a file is read as fast as it decodes: 2 wait, the rest dropped."""
    out = WindowQueue(bound=2)
    reader = StreamReader(StreamSource(str(clip_of(synthetic_sources, "walking")), realtime=False), _Sampling(T, H, W, fps=24.0, stride=1),
                          out, stall_timeout_s=10, connect_retries=0, backoff_s=0.1, backoff_cap_s=0.1)
    reader.run()
    *windows, ended = out.take(100, timeout=0)
    stats = reader.stats
    assert ended is stats and stats.error is None and stats.windows > 4
    assert [w.index for w in windows] == [stats.windows - 2, stats.windows - 1]
    assert stats.dropped == stats.windows - 2 and stats.to_dict()["dropped"] == stats.dropped


@needs_ffmpeg
def test_ffmpeg_keeps_only_the_tail_of_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ffmpeg that writes 100000 error lines and exits: the reader keeps the last lines."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nseq 1 100000 | sed 's/^/error line /' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    seen: list[int] = []
    real_keep_tail = stream_module._keep_tail

    def keep_tail(pipe, tail) -> None:
        real_keep_tail(pipe, tail)
        seen.append(len(tail))

    monkeypatch.setattr(stream_module, "_keep_tail", keep_tail)
    out = WindowQueue()
    reader = StreamReader(StreamSource("udp://127.0.0.1:1"), _Sampling(T, H, W, fps=8.0, stride=T), out,
                          stall_timeout_s=10, connect_retries=0, backoff_s=0.1, backoff_cap_s=0.1)
    reader.run()
    assert seen == [stream_module.STDERR_TAIL_LINES]
    assert reader.stats.error.endswith("ffmpeg: error line 99998 | error line 99999 | error line 100000")


@needs_ffmpeg
def test_stream_path_gives_read_clips_top1_on_every_demo_clip(synthetic_sources: Path, stream_model_onnx: Path) -> None:
    """Each synthetic clip through ffmpeg (resampled so one window spans the clip) and through
    read_clip: the same top-1, probabilities within the bound below."""
    clips = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))
    worst = 0.0
    for clip in clips:
        seconds = video_seconds(clip)
        out = WindowQueue()
        # a touch faster than T frames per clip, so ffmpeg's rounding never leaves fewer than T
        reader = StreamReader(StreamSource(str(clip), realtime=False), _Sampling(T, H, W, fps=T / (seconds * 0.95), stride=T), out,
                              stall_timeout_s=10, connect_retries=0, backoff_s=0.1, backoff_cap_s=0.1)
        reader.run()
        *windows, ended = out.take(10, timeout=0)
        window = windows[0]
        assert ended is reader.stats and reader.stats.error is None
        assert window.frames.shape == (T, H, W, 3) and window.frames.dtype == np.uint8
        by_stream, by_file = run_onnx(stream_model_onnx, np.stack([window.frames, read_clip(clip, T, H, W)]))
        assert by_stream.argmax() == by_file.argmax(), clip
        worst = max(worst, float(np.abs(by_stream - by_file).max()))
    print(f"stream vs read_clip on {len(clips)} clips: max |probability difference| {worst:.4f}")
    assert worst < 0.05


@pytest.fixture(scope="module")
def stream_model_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.triton import make_task_folder

    return make_task_folder(tmp_path_factory.mktemp("stream_onnx") / "task") / "model.onnx"


# --- through the real Triton ----------------------------------------------------------------


def majority(labels: list[str]) -> str:
    return collections.Counter(labels).most_common(1)[0][0]


def take(classifier: StreamClassifier, count: int, *, stream: str | None = None, timeout: float = 120.0) -> list:
    """The first ``count`` predictions (of ``stream`` when given), within ``timeout`` seconds."""
    got, deadline = [], time.monotonic() + timeout
    for prediction in classifier:
        if stream is None or prediction.stream == stream:
            got.append(prediction)
        if len(got) >= count or time.monotonic() > deadline:
            break
    return got


@needs_ffmpeg
@pytest.mark.triton
def test_cli_classifies_an_srt_stream_and_sigterm_reaps_ffmpeg(triton_server, stream_model: Path, synthetic_sources: Path, tmp_path: Path) -> None:
    port = free_port()
    clip = clip_of(synthetic_sources, "drinking")
    with publisher(clip, f"srt://127.0.0.1:{port}?mode=listener"):
        wait_bound(port, "udp")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytrain.cli.main", "stream", f"srt://127.0.0.1:{port}?mode=caller", "--model", MODEL,
             "--url", triton_server.grpc_url, "--clip-seconds", "1", "--stride", "4", "--top-k", "2", "--output", str(tmp_path / "w.jsonl")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            lines = [json.loads(proc.stdout.readline()) for _ in range(5)]
            children = ffmpeg_children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            stop(proc)
    assert proc.returncode == 0, err
    assert majority([line["label"] for line in lines]) == "drinking"
    first = lines[0]
    assert set(first) == {"stream", "window", "start_s", "end_s", "start_utc", "end_utc", "label", "probability", "top_k", "model",
                          "version", "latency_ms", "reconnects"}
    assert (first["model"], first["version"], len(first["top_k"]), first["end_s"] - first["start_s"]) == (MODEL, "1", 2, 1.0)
    assert [line["window"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[1]["start_s"] - lines[0]["start_s"] == pytest.approx(0.5)
    assert children and all(gone(pid) for pid in children), "an ffmpeg child outlived pytrain stream"
    assert '"summary"' in err and (tmp_path / "w.jsonl").read_text().count("\n") >= 5


@needs_ffmpeg
@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["udp", "rtsp"])
def test_udp_and_rtsp_streams_are_classified_by_their_majority_label(triton_server, stream_model: Path, synthetic_sources: Path,
                                                                     protocol: str) -> None:
    port, cls = free_port(), {"udp": "eating", "rtsp": "walking"}[protocol]
    if protocol == "udp":  # the reader listens on the port, the sender sends to it
        url, send_to, output = f"udp://127.0.0.1:{port}", f"udp://127.0.0.1:{port}", ("-f", "mpegts")
    else:  # the reader is the RTSP server (-rtsp_flags listen), the sender publishes to it
        url, send_to, output = f"rtsp://127.0.0.1:{port}/live?listen=1", f"rtsp://127.0.0.1:{port}/live", ("-rtsp_transport", "tcp", "-f", "rtsp")
    with StreamClassifier([url], MODEL, url=triton_server.grpc_url, **FAST) as classifier:
        wait_bound(port, "udp" if protocol == "udp" else "tcp")  # the reader listens before the sender starts
        with publisher(clip_of(synthetic_sources, cls), send_to, *output):
            predictions = take(classifier, 5)
    assert len(predictions) == 5
    assert majority([p.label for p in predictions]) == cls
    assert all(0 < p.latency_ms < classifier.client.inference_timeout_s * 1000 for p in predictions)


@needs_ffmpeg
@pytest.mark.triton
def test_a_dropped_stream_reconnects_by_itself_and_no_ffmpeg_is_left(triton_server, stream_model: Path, synthetic_sources: Path) -> None:
    port = free_port()
    clip = clip_of(synthetic_sources, "cooking")
    sender = f"srt://127.0.0.1:{port}?mode=listener"
    with StreamClassifier([f"srt://127.0.0.1:{port}?mode=caller"], MODEL, url=triton_server.grpc_url, connect_retries=10, **FAST) as classifier:
        with publisher(clip, sender):
            before = take(classifier, 3)
        reader = classifier.readers[0]
        wait_for(lambda: reader.stats.reconnects >= 1, "the reader noticed the sender is gone")
        with publisher(clip, sender):
            after = take(classifier, 3)
    assert [p.label for p in before + after] == ["cooking"] * 6
    assert after[-1].window.reconnects >= 1 and reader.stats.reconnects >= 1 and reader.stats.error is None
    assert after[0].window.index > before[-1].window.index
    assert len(reader.pids) >= 2 and all(gone(pid) for pid in reader.pids)


@needs_ffmpeg
@pytest.mark.triton
def test_when_one_of_two_streams_dies_the_other_keeps_producing_windows(triton_server, stream_model: Path, synthetic_sources: Path) -> None:
    live, dying = free_port(), free_port()
    live_url, dying_url = f"srt://127.0.0.1:{live}?mode=caller", f"srt://127.0.0.1:{dying}?mode=caller"
    with publisher(clip_of(synthetic_sources, "eating"), f"srt://127.0.0.1:{live}?mode=listener"), \
            publisher(clip_of(synthetic_sources, "drinking"), f"srt://127.0.0.1:{dying}?mode=listener") as doomed:
        wait_bound(live, "udp")
        wait_bound(dying, "udp")
        with StreamClassifier([live_url, dying_url], MODEL, url=triton_server.grpc_url, **{**FAST, "connect_retries": 1}) as classifier:
            first = take(classifier, 6)
            stop(doomed)
            later = take(classifier, 10, stream=live_url)
            deadline = time.monotonic() + 120
            while classifier.readers[1].stats.error is None and time.monotonic() < deadline:
                take(classifier, 1, stream=live_url)
            stats = {s.stream: s for s in classifier.stats}
    assert {p.stream for p in first} == {live_url, dying_url}
    assert len(later) == 10 and {p.label for p in later} == {"eating"}
    assert stats[dying_url].error is not None and repr(dying_url) in stats[dying_url].error
    assert stats[live_url].error is None


@pytest.mark.triton
def test_a_classifier_that_fails_to_start_closes_the_client_it_made(triton_server, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never read: the model check fails first
    classifier = StreamClassifier([str(clip)], "no_such_model", url=triton_server.grpc_url)
    classifier.client.load_timeout_s = 1.0
    with pytest.raises(ClientError, match="'no_such_model' is not in the model repository"):
        with classifier:
            pass
    assert classifier.client._client is None  # the gRPC channel is closed


@needs_ffmpeg
@pytest.mark.triton
def test_a_url_that_never_answers_ends_with_an_error_naming_it(triton_server, stream_model: Path) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    result = subprocess.run(
        [sys.executable, "-m", "pytrain.cli.main", "stream", url, "--model", MODEL, "--url", triton_server.grpc_url,
         "--connect-retries", "1", "--clip-seconds", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"error: stream {url!r} gave up after 2 attempts without a frame" in result.stderr
    assert result.stdout == ""


def iterate_until_the_end(classifier: StreamClassifier, timeout: float = 90.0) -> tuple[int, BaseException | None]:
    """Iterate ``classifier`` to its end in a thread: (predictions, the error that ended it or
    ``None``); fails when it still iterates after ``timeout`` seconds (it hangs)."""
    result: dict = {"count": 0, "error": None}

    def consume() -> None:
        try:
            for _ in classifier:
                result["count"] += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the iterator still waits after {timeout} s"
    return result["count"], result["error"]


@needs_ffmpeg
@pytest.mark.triton
def test_no_ffmpeg_on_path_ends_the_iterator_with_an_error_at_once(triton_server, stream_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"srt://127.0.0.1:{free_port()}?mode=caller&passphrase={PASSPHRASE}"
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg there (Triton's client needs no PATH)
    with StreamClassifier([url], MODEL, url=triton_server.grpc_url, **FAST) as classifier:
        count, error = iterate_until_the_end(classifier)
    assert count == 0 and isinstance(error, ClientError)
    assert str(error).startswith(f"stream {url.replace(PASSPHRASE, '***')!r} failed: pytrain stream needs the ffmpeg program")
    assert PASSPHRASE not in str(error) and classifier.stats[0].fatal


@needs_ffmpeg
@pytest.mark.triton
def test_an_ffmpeg_that_refuses_its_command_line_ends_the_iterator_without_retrying(triton_server, stream_model: Path,
                                                                                     synthetic_sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = stream_module.ffmpeg_command

    def with_a_bad_option(*args: object, **kwargs: object) -> list[str]:
        binary, *rest = real(*args, **kwargs)
        return [binary, "-no_such_option", "1", *rest]

    monkeypatch.setattr(stream_module, "ffmpeg_command", with_a_bad_option)
    clip = clip_of(synthetic_sources, "cooking")
    with StreamClassifier([StreamSource(str(clip), loop=True)], MODEL, url=triton_server.grpc_url, **FAST) as classifier:
        count, error = iterate_until_the_end(classifier)
        reader = classifier.readers[0]
    assert count == 0 and isinstance(error, ClientError)
    assert "ffmpeg refused its command line: Unrecognized option 'no_such_option'." in str(error)
    assert reader.stats.reconnects == 0 and len(reader.pids) == 1 and gone(reader.pids[0])


@pytest.mark.triton
def test_a_reader_gone_without_its_end_marker_ends_the_iterator(triton_server, stream_model: Path, synthetic_sources: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net behind the readers' own error handling: a thread that ended without a word."""
    monkeypatch.setattr(StreamReader, "run", lambda self: None)
    with StreamClassifier([str(clip_of(synthetic_sources, "eating"))], MODEL, url=triton_server.grpc_url, **FAST) as classifier:
        count, error = iterate_until_the_end(classifier)
    assert count == 0 and isinstance(error, ClientError) and "ended without a word" in str(error)


@needs_ffmpeg
@pytest.mark.triton
def test_cli_without_ffmpeg_exits_1_with_the_error_instead_of_hanging(triton_server, stream_model: Path, tmp_path: Path) -> None:
    url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/cam"
    result = subprocess.run(
        [sys.executable, "-m", "pytrain.cli.main", "stream", url, "--model", MODEL, "--url", triton_server.grpc_url, "--clip-seconds", "1"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "PATH": str(tmp_path)},
    )
    assert result.returncode == 1, result.stderr
    assert f"error: stream 'rtsp://admin:***@{url.split('@')[1]}' failed: pytrain stream needs the ffmpeg program" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout and '"summary"' in result.stderr


@needs_ffmpeg
@pytest.mark.triton
def test_cli_never_prints_a_password_nor_passes_it_in_any_argv(triton_server, stream_model: Path, synthetic_sources: Path,
                                                                tmp_path: Path) -> None:
    """An SRT stream with a passphrase (named ``door``) and an RTSP camera with a password that
    never answers: the lines, the output file, the log (at DEBUG), the warnings, the error and the
    summaries name them without their secrets, and neither pytrain's argv (the URLs come from
    PYTRAIN_STREAM_URLS) nor ffmpeg's hold them."""
    live, dead = free_port(), free_port()
    srt, rtsp = f"srt://127.0.0.1:{live}?mode=caller&passphrase={PASSPHRASE}", f"rtsp://admin:{PASSWORD}@127.0.0.1:{dead}/cam"
    err_file, out_file = tmp_path / "stderr.txt", tmp_path / "w.jsonl"
    with publisher(clip_of(synthetic_sources, "drinking"), f"srt://127.0.0.1:{live}?mode=listener&passphrase={PASSPHRASE}"), \
            err_file.open("w") as err:
        wait_bound(live, "udp")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytrain.cli.main", "--verbose", "stream", "--name", "door", "--model", MODEL,
             "--url", triton_server.grpc_url, "--clip-seconds", "1", "--stride", "4", "--connect-retries", "1", "--output", str(out_file)],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True, env={**os.environ, "PYTRAIN_STREAM_URLS": f"{srt} {rtsp}"},
        )
        try:
            lines = [proc.stdout.readline() for _ in range(5)]
            argvs = [argv_of(proc.pid)] + [argv_of(pid) for pid in ffmpeg_children(proc.pid)]
            wait_for(lambda: "gave up" in err_file.read_text(), "the RTSP stream gave up")
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=120)
        finally:
            stop(proc)
    stderr = err_file.read_text()
    printed = "".join(lines) + rest + stderr + out_file.read_text() + " ".join(a for a in argvs if a)
    assert PASSPHRASE not in printed and PASSWORD not in printed
    assert len(argvs) >= 2 and argvs[0] is not None and all("-i pipe:0" in a for a in argvs[1:] if a)
    assert {json.loads(line)["stream"] for line in lines} == {"door"}
    summaries = {s["summary"]["stream"]: s["summary"] for s in map(json.loads, (l for l in stderr.splitlines() if l.startswith('{"summary"')))}
    redacted = f"rtsp://admin:***@127.0.0.1:{dead}/cam"
    assert set(summaries) == {"door", redacted} and summaries["door"]["dropped"] == 0
    assert f"error: stream {redacted!r} gave up after 2 attempts without a frame" in stderr
    assert f"stream {redacted}: " in stderr and "reconnecting in" in stderr  # the warning names it redacted
    assert proc.returncode == 1

