"""``pytrain stream`` / :class:`pytrain.client.StreamClassifier` on real streams: ffmpeg publishing
on loopback (SRT, UDP, RTSP), the session's real Triton, the nearest-colour test model (a clip's
class is its background colour)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fixtures.triton import TEST_CLASSES, publish_test_model, run_onnx
from pytrain.client import StreamClassifier, StreamSource
from pytrain.client.sources import ffmpeg_command
from pytrain.client.stream import StreamReader, _Sampling
from pytrain.errors import ClientError
from pytrain.publish.triton_config import pytrain_ini, read_pytrain_ini
from pytrain.serving import free_port
from pytrain.spec import TensorSpec
from pytrain.video import read_clip, video_seconds

MODEL = "stream_kitchen"
T, H, W = 8, 32, 32
# windows of 8 frames over 1 s (8 fps), a new one every 4 frames: one answer per 0.5 s of stream
FAST = dict(clip_seconds=1.0, stride=4, stall_timeout_s=3.0, backoff_s=0.2, backoff_cap_s=1.0)

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


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition()`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """No process (running or zombie) has ``pid``."""
    return not Path(f"/proc/{pid}").exists()


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


@needs_ffmpeg
def test_stream_path_gives_read_clips_top1_on_every_demo_clip(synthetic_sources: Path, stream_model_onnx: Path) -> None:
    """Each synthetic clip through ffmpeg (resampled so one window spans the clip) and through
    read_clip: the same top-1, probabilities within the bound below."""
    import queue

    clips = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))
    worst = 0.0
    for clip in clips:
        seconds = video_seconds(clip)
        out: queue.Queue = queue.Queue()
        # a touch faster than T frames per clip, so ffmpeg's rounding never leaves fewer than T
        reader = StreamReader(StreamSource(str(clip), realtime=False), _Sampling(T, H, W, fps=T / (seconds * 0.95), stride=T), out,
                              stall_timeout_s=10, connect_retries=0, backoff_s=0.1, backoff_cap_s=0.1)
        reader.run()
        window = out.get_nowait()
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
            children = [int(c) for task in Path(f"/proc/{proc.pid}/task").iterdir() for c in (task / "children").read_text().split()]
            children = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().strip() == "ffmpeg"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
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
            stats = {s.url: s for s in classifier.stats}
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
