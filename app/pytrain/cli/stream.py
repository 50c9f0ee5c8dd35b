"""``pytrain stream``: classify live streams window by window through Triton.

Examples::

    pytrain stream --model kitchen "srt://127.0.0.1:9999?mode=listener&timeout=500000&transtype=live"
    pytrain stream --model kitchen --smooth 3 --events rtsp://camera1/stream1 rtsp://camera2/stream1
    pytrain stream --model kitchen --loop clip.mp4 --output windows.jsonl
    PYTRAIN_STREAM_URLS='rtsp://admin:secret@10.0.0.21/stream1' pytrain stream --model kitchen --name door

A password in a URL is never printed (``rtsp://admin:***@...``) nor put in ffmpeg's argv; give the
URLs in ``PYTRAIN_STREAM_URLS`` to keep it out of this command's argv too (``ps`` shows argv).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import List, Optional

import typer

from pytrain.client.stream import DEFAULT_QUEUE_WINDOWS


def register(app: typer.Typer) -> None:
    """Add ``stream`` to ``app``."""
    app.command("stream")(stream)


def stream(
    urls: List[str] = typer.Argument(..., envvar="PYTRAIN_STREAM_URLS", show_envvar=False,
                                     help="srt://, rtsp://, rtmp://, udp://, tcp://, http(s):// (HLS), /dev/videoN or video files "
                                          "(or env PYTRAIN_STREAM_URLS, space-separated: keeps passwords out of `ps`)."),
    names: List[str] = typer.Option([], "--name", help="Display name of a stream in every line, once per URL in order (default: the URL with its password and secret parameters as ***)."),
    model: str = typer.Option(..., "--model", help="Triton model name."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="Model version, an integer (default: the newest)."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL", help="Triton gRPC host:port (env PYTRAIN_TRITON_GRPC_URL; default 127.0.0.1:PYTRAIN_TRITON_GRPC_PORT)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PyTrain <model>.config to read clip size and clip_seconds from (default: Triton's metadata and the local model repository)."),
    clip_seconds: Optional[float] = typer.Option(None, "--clip-seconds", min=0.01, help="Seconds a window spans (default: the model's clip_seconds, the training clips' median duration)."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Frames between window starts (default: half a window)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Classes per window, most probable first."),
    smooth: int = typer.Option(1, "--smooth", min=1, help="Mean of the last K windows' probabilities, per stream."),
    min_probability: float = typer.Option(0.0, "--min-probability", min=0.0, max=1.0, help="Print no window whose (smoothed) top probability is below this."),
    events: bool = typer.Option(False, "--events", help="Print a window only when its stream's (smoothed) label changes."),
    loop: bool = typer.Option(False, "--loop", help="Repeat the video files among the URLs forever."),
    output: Optional[Path] = typer.Option(None, "--output", help="Also append every line to this file."),
    stall_timeout: float = typer.Option(10.0, "--stall-timeout", min=0.1, help="Seconds without a frame before a stream is reconnected."),
    connect_retries: int = typer.Option(5, "--connect-retries", min=0, help="Attempts in a row without a frame before a stream gives up."),
    ready_timeout: float = typer.Option(30.0, "--ready-timeout", help="How long to wait for the server and the model, seconds."),
    queue_windows: int = typer.Option(DEFAULT_QUEUE_WINDOWS, "--queue-windows", min=1, help="Windows per stream that may wait for Triton; when Triton falls behind the oldest is dropped (counted as \"dropped\" in the summary)."),
) -> None:
    """Classify live streams continuously; prints one JSON line per window.

    Each line: {"stream", "window", "start_s", "end_s" (stream time, s), "start_utc", "end_utc",
    "label", "probability", "top_k", "model", "version", "latency_ms", "reconnects"}. Windows span
    the training clips' duration (--clip-seconds). Streams that drop or stall are reconnected with
    capped exponential backoff; Ctrl-C or SIGTERM stops cleanly and prints one summary line per
    stream on stderr ({"summary": {"stream", "windows", "dropped", "reconnects", "error"}}). Exits 1
    when a stream gave up or its ffmpeg could not run (the error names the URL, password as ***).
    """
    from pytrain.client import StreamClassifier, StreamSource, TritonClient
    from pytrain.errors import ClientError

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    if len(names) > len(urls):
        raise ClientError(f"{len(names)} --name for {len(urls)} stream(s): {names!r}", hint="give at most one --name per URL, in order")
    names = names + [""] * (len(urls) - len(names))  # "": named by the redacted URL
    sources = [StreamSource(u, name=n, loop=loop and StreamSource(u).is_file) for u, n in zip(urls, names)]  # --loop: files only
    client = TritonClient(url, ready_timeout_s=ready_timeout, load_timeout_s=max(ready_timeout, 10.0))
    classifier = StreamClassifier(
        sources, model, version=version, config_path=config, clip_seconds=clip_seconds, stride=stride, top_k=top_k,
        smooth=smooth, min_probability=min_probability, events=events, stall_timeout_s=stall_timeout,
        connect_retries=connect_retries, queue_windows=queue_windows, client=client,
    )
    sink = output.open("a", encoding="utf-8") if output is not None else None
    try:
        with client, classifier:
            for prediction in classifier:
                line = json.dumps(prediction.to_dict())
                if sink is not None:  # the file first: every line printed is also in it when a signal stops us
                    sink.write(line + "\n")
                    sink.flush()
                typer.echo(line)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sink is not None:
            sink.close()
        for stats in classifier.stats:
            typer.echo(json.dumps({"summary": stats.to_dict()}), err=True)
    failed = [s for s in classifier.stats if s.error]
    if failed:
        raise ClientError("; ".join(s.error for s in failed if s.error), hint="check the URL, that the sender runs, and the network")
