"""Triton gRPC latency and throughput next to in-process onnxruntime, on the same model and inputs.

What it does: exports a small 3D-CNN clip classifier (or takes ``--task-dir`` with a trained
``model.onnx`` + ``tensor_spec.json``), publishes it into a temporary model repository with
:func:`pytrain.publish.publish_task`, starts the embedded Triton (:class:`pytrain.serving.TritonServer`,
Python backend running the ONNX model with onnxruntime on the CPU), then times sequential requests
for one clip and for batches, over gRPC (:class:`pytrain.client.TritonClient`) and in-process
(``onnxruntime.InferenceSession.run``). Outputs are compared: it exits 1 on a mismatch.

Run::

    .venv/bin/python benchmarks/bench_triton.py                     # 16x112x112 clips, batches 1 4 8
    .venv/bin/python benchmarks/bench_triton.py --iterations 100 --batches 1 8 --threads 2
    .venv/bin/python benchmarks/bench_triton.py --task-dir model_tasks/task-7-kitchen

Target (issue 4): Triton p50 within 1.5x of in-process onnxruntime for one 16x112x112 clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from pytrain.client import TritonClient  # noqa: E402
from pytrain.publish import publish_task  # noqa: E402
from pytrain.serving import TritonServer, free_port  # noqa: E402
from pytrain.serving.server import default_ort_threads  # noqa: E402
from pytrain.settings import Settings  # noqa: E402
from pytrain.spec import TaskSpec, TensorSpec  # noqa: E402

MODEL = "bench"


def export_bench_model(task_dir: Path, num_frames: int, size: int, num_classes: int) -> None:
    """A small 3D CNN (~0.2 GMAC per 16x112x112 clip): uint8 frames in, softmax out."""
    import torch

    class Clip3D(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1), torch.nn.ReLU(),
                torch.nn.Conv3d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv3d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool3d(1),
            )
            self.head = torch.nn.Linear(64, num_classes)

        def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (N, T, H, W, 3) uint8
            x = frames.permute(0, 4, 1, 2, 3).float() / 255.0
            return torch.softmax(self.head(self.features(x).flatten(1)), dim=-1)

    torch.manual_seed(0)
    classes = [f"class{i}" for i in range(num_classes)]
    spec = TensorSpec(class_list=classes, num_frames=num_frames, height=size, width=size, architecture="bench3d")
    task_dir.mkdir(parents=True, exist_ok=True)
    spec.save(task_dir)
    TaskSpec(task_id=0, model_name=MODEL, class_list=classes, num_frames=num_frames, height=size, width=size).save(task_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Clip3D().eval(), (torch.zeros(1, num_frames, size, size, 3, dtype=torch.uint8),), str(task_dir / "model.onnx"),
            input_names=[spec.input_name], output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}}, dynamo=False,
        )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_interleaved(calls, iterations: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each callable, alternating them so that load from other processes on
    the machine hits both sides alike."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(iterations):
        for call, out in zip(calls, samples):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task-dir", type=Path, help="task folder with model.onnx + tensor_spec.json (default: a small 3D CNN)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--iterations", type=int, default=50, help="timed requests per batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=default_ort_threads(),
                        help="onnxruntime intra-op threads, both sides (default: the embedded server's, half the CPUs)")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pytrain-bench-") as tmp:
        root = Path(tmp)
        task_dir = args.task_dir or root / "task"
        if args.task_dir is None:
            export_bench_model(task_dir, args.frames, args.size, args.classes)
        spec = TensorSpec.load(task_dir)
        settings = Settings(model_repo_dir=root / "model_repo", results_dir=root / "results", data_dir=root / "data",
                            max_batch_size=max(args.batches), triton_grpc_url=None)
        published = publish_task(task_dir, settings=settings, task_record={"model_name": MODEL})

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(published.path / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"])
        all_cores = None
        if args.threads != os.cpu_count():  # also show in-process onnxruntime using every core
            options_all = ort.SessionOptions()
            options_all.intra_op_num_threads = os.cpu_count() or 1
            all_cores = ort.InferenceSession(str(published.path / "model.onnx"), sess_options=options_all, providers=["CPUExecutionProvider"])

        rng = np.random.default_rng(0)
        print(f"model: {spec.architecture or 'task model'}  clip: {spec.num_frames}x{spec.height}x{spec.width}x3 uint8 "
              f"({spec.num_frames * spec.height * spec.width * 3 / 1e6:.2f} MB)  onnxruntime threads: {args.threads}  "
              f"cpus: {os.cpu_count()}  iterations: {args.iterations}")
        server = TritonServer(settings.model_repo_dir, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                              work_dir=root / "triton", ort_threads=args.threads)
        rows = []
        mismatch = False
        with server, TritonClient(server.grpc_url, inference_timeout_s=120, shared_memory=False) as payload, \
                TritonClient(server.grpc_url, inference_timeout_s=120, shared_memory=True) as shm:
            paths = {
                f"in-process, {args.threads} thread{'s' if args.threads > 1 else ''}": lambda frames: session.run([spec.output_name], {spec.input_name: frames})[0],
                **({f"in-process, {os.cpu_count()} threads": lambda frames: all_cores.run([spec.output_name], {spec.input_name: frames})[0]}
                   if all_cores is not None else {}),
                "Triton gRPC": lambda frames: payload.infer(MODEL, frames),
                "Triton gRPC + shm input": lambda frames: shm.infer(MODEL, frames),
            }
            for batch in args.batches:
                frames = rng.integers(0, 256, size=(batch, spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
                expected = session.run([spec.output_name], {spec.input_name: frames})[0]
                for name, call in paths.items():
                    served = call(frames)
                    if not np.allclose(served, expected, rtol=1e-5, atol=1e-6):
                        print(f"MISMATCH {name} at batch {batch}: max abs diff {np.abs(served - expected).max():.3g}")
                        mismatch = True
                timings = time_interleaved([lambda call=call: call(frames) for call in paths.values()], args.iterations, args.warmup)
                local_p50 = percentiles(timings[0])[0]
                for name, samples in zip(paths, timings):
                    p50, p99 = percentiles(samples)
                    rows.append((name, batch, p50, p99, batch * len(samples) / sum(samples), p50 / local_p50))
        print(f"{'path (sequential requests)':<28}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}{'clips/s':>10}{'p50 vs in-process':>19}")
        for name, batch, p50, p99, rate, ratio in rows:
            print(f"{name:<28}{batch:>6}{p50:>10.2f}{p99:>10.2f}{rate:>10.1f}{ratio:>18.2f}x")
        for name in [n for n in paths if n.startswith("Triton")]:
            one = [r for r in rows if r[1] == 1 and r[0] == name]
            if one:
                ratio = one[0][5]
                print(f"target ({name}): p50 <= 1.5x in-process for one clip: {ratio:.2f}x -> {'met' if ratio <= 1.5 else 'NOT met'}")
        print("outputs match onnxruntime in-process" if not mismatch else "OUTPUTS DIFFER")
        return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
