"""Live-stream classification: window-to-answer latency and how many 640x480 25 fps streams one
``pytrain stream`` process keeps up with in real time on this machine.

What it does: encodes a 640x480 25 fps H.264 clip (ffmpeg's ``testsrc2``), exports the small 3D
CNN of ``bench_triton.py`` (16x112x112 clips), publishes it into a temporary model repository and
starts the embedded Triton (CPU). Then, for 1, 2, 4, ... streams, one
:class:`pytrain.client.StreamClassifier` reads that many copies of the clip in real time (``-re
-stream_loop -1``: ffmpeg paces the file as a camera would send it, decoding every 25 fps frame)
for ``--seconds`` and records each window's latency (its last frame's arrival to Triton's answer).

A stream is kept up with when its stream time advanced at least 95 % of the wall time (no frame
backlog: decoding kept pace) and the p99 latency stayed below the time between two windows (no
answer backlog). The largest stream count that passes is the figure in docs/performance.md.

Run::

    .venv/bin/python benchmarks/bench_stream.py                       # 1, 2, 4, 8, 12, 16 streams, 15 s each
    .venv/bin/python benchmarks/bench_stream.py --streams 1 4 --seconds 30
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_triton import MODEL, export_bench_model  # noqa: E402

from pytrain.client import StreamClassifier, StreamSource, TritonClient  # noqa: E402
from pytrain.publish import publish_task  # noqa: E402
from pytrain.serving import TritonServer, free_port  # noqa: E402
from pytrain.settings import Settings  # noqa: E402


def make_camera_clip(path: Path, seconds: float = 10.0) -> Path:
    """A 640x480 25 fps H.264 mp4 (keyframe every second, as cameras send)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x480:rate=25", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def measure(server_url: str, clip: Path, streams: int, seconds: float, clip_seconds: float) -> dict:
    """Run ``streams`` real-time copies of ``clip`` for ``seconds``; latency percentiles and pace."""
    sources = [StreamSource(str(clip), name=f"cam{i}", loop=True) for i in range(streams)]
    latencies: list[float] = []
    last: dict[str, tuple[float, float]] = {}  # stream -> (end_s, ready) of its latest window
    first_wall: dict[str, float] = {}
    with TritonClient(server_url, inference_timeout_s=60) as client, \
            StreamClassifier(sources, MODEL, client=client, clip_seconds=clip_seconds, stall_timeout_s=30) as classifier:
        start = time.monotonic()
        for prediction in classifier:
            w = prediction.window
            first_wall.setdefault(w.stream, w.ready - w.end_s)  # the wall time of the stream's time 0
            last[w.stream] = (w.end_s, w.ready)
            if w.index >= 1:  # the first window includes the connection and model warm-up
                latencies.append(prediction.latency_ms)
            if time.monotonic() - start > seconds:
                break
        stride_s = classifier.sampling.stride / classifier.sampling.fps
    # stream seconds delivered per wall second, for the slowest stream (1.0: real time)
    pace = min(last[s.label][0] / max(1e-9, last[s.label][1] - first_wall[s.label]) if s.label in last else 0.0 for s in sources)
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if latencies else (float("nan"), float("nan"))
    return {"streams": streams, "windows": len(latencies), "p50_ms": p50, "p99_ms": p99, "pace": pace,
            "kept_up": bool(latencies) and pace >= 0.95 and p99 < stride_s * 1000.0, "stride_s": stride_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16], help="stream counts to try, ascending")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per stream count")
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="seconds a window spans (16 frames: 8 fps)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pytrain-bench-stream-") as tmp:
        root = Path(tmp)
        clip = make_camera_clip(root / "camera.mp4")
        export_bench_model(root / "task", 16, 112, 5)
        settings = Settings(model_repo_dir=root / "model_repo", results_dir=root / "results", data_dir=root / "data",
                            max_batch_size=16, triton_grpc_url=None)
        publish_task(root / "task", settings=settings, task_record={"model_name": MODEL})
        server = TritonServer(settings.model_repo_dir, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                              work_dir=root / "triton")
        print(f"640x480 25 fps H.264 streams -> 16x112x112 windows of {args.clip_seconds:g} s (8 fps), stride half a window; "
              f"{args.seconds:g} s per run; embedded Triton (CPU)")
        print(f"{'streams':>7} {'windows':>7} {'p50 ms':>8} {'p99 ms':>8} {'pace':>6}  kept up")
        best = 0
        with server:
            for count in args.streams:
                row = measure(server.grpc_url, clip, count, args.seconds, args.clip_seconds)
                print(f"{row['streams']:>7} {row['windows']:>7} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['pace']:>6.2f}  "
                      f"{'yes' if row['kept_up'] else 'no'}", flush=True)
                if not row["kept_up"]:
                    break
                best = count
        print(f"streams kept up with in real time: {best} (of {args.streams}); the stride is {row['stride_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
