"""Does PyTrain work on this GPU server, and how fast? One command answers both (issue 14).

Sections, each guarded (a failure is recorded as ``{"status": "failed", "error": ...}`` and the run
goes on; the JSON file is rewritten after every section, so a killed run leaves what it measured):

1. ``environment``: device, driver, CUDA, cuDNN, torch and torchvision versions, and which of
   PyTrain's dependencies are missing, each with its ``pip install`` command.
2. ``training``: training throughput (clips/s), achieved TFLOP/s (one step's forward + backward
   counted with ``torch.utils.flop_counter.FlopCounterMode``), MFU against the device's dense bf16
   peak (:data:`KNOWN_PEAKS_BF16_TFLOPS` or ``--peak-tflops``) and peak memory, for ``r3d_18``,
   ``r2plus1d_18``, ``frames_resnet18`` at 16x112x112 and ``mvit_v2_s`` at 16x224x224 and each
   ``--batch-sizes``, as PyTrain trains on CUDA (bf16 autocast, ``channels_last_3d`` for the 3D
   convolution models, AdamW + cross-entropy), eager and ``torch.compile``. A failing case (OOM,
   compile error) is recorded, not fatal; cases left when ``--budget-seconds`` is spent are
   recorded as skipped.
3. ``data``: real H.264 clips made here (system ``ffmpeg``, else PyAV, else the section is
   skipped), decoded by the training loader (PyTrain's ``ClipDataset`` + shuffle-buffer sampler,
   crop/flip applied on the device as the training step does) with 1..N workers (every clip
   decoded: a first epoch) and from the decoded-clip cache; each ``PYTRAIN_DECODER`` choice on the
   same clips, ``nvdec`` (the GPU's hardware decoder, frames kept on the GPU: ``nvdec_frames``)
   beside decord; then whether the GPU would wait for data at the measured training rate, how many
   workers it needs, and whether nvdec keeps up.
4. ``end_to_end``: the real training entrypoint (``python -m pytrain.training``) on a short task of
   synthetic clips on this device, its ONNX export, and the parity of the checkpoint's model on
   the device against onnxruntime (CUDA provider when installed, else CPU).

Run::

    python3 benchmarks/bench_gpu.py --output results/bench_gpu.json           # a CUDA host, ~5 min on an H200
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick --output /tmp/bench.json   # CI: < 2 min, tiny sizes
    benchmarks/gpu_check.sh                                                   # a bare GPU host: wheels, this, tests/gpu

Units: clips/s are training clips per second of wall time (synchronised); TFLOP/s are 1e12
floating-point operations per second as FlopCounterMode counts them (a multiply-add is 2); memory
is GiB (2**30 bytes) from ``torch.cuda.max_memory_allocated``.

Nothing from PyTrain (or torch) is imported at module level: each section imports what it needs and
is recorded as ``skipped: <reason>`` when that import fails, so a GPU host without pydantic or
decord still gets every section that can run there.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "app", REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Dense (no structured sparsity) BF16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets, which
# print the 2:4-sparsity figure (twice these): H100 SXM and H200 SXM 1979 -> 989, H100 NVL 1671 ->
# 835, H100 PCIe 1513 -> 756, A100 624 -> 312, L40S 733 -> 362; GeForce RTX 4090: 165 (Ada
# whitepaper, FP16 accumulate). Matched against torch's device name in this order (first substring
# that occurs wins, so the specific H100 variants come before plain "H100", which is the SXM part,
# named "NVIDIA H100 80GB HBM3").
KNOWN_PEAKS_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.0),
)

# (import name, pip package, what in PyTrain needs it)
DEPENDENCIES: tuple[tuple[str, str, str], ...] = (
    ("decord", "decord", "training and inference: the one decode path (pytrain.video)"),
    ("av", "av", "synthetic mp4 datasets (pytrain demo, the tests)"),
    ("pydantic", "pydantic", "settings: orchestrator, CLI, publishing"),
    ("pydantic_settings", "pydantic-settings", "settings: orchestrator, CLI, publishing"),
    ("sqlalchemy", "sqlalchemy", "the task queue (orchestrator, CLI)"),
    ("psycopg", "psycopg[binary]", "the task queue's PostgreSQL driver"),
    ("onnx", "onnx", "training: ONNX export and its checker"),
    ("onnxruntime", "onnxruntime", "training: the export's parity check; serving"),
    ("tritonclient", "tritonclient[grpc]", "pytrain predict (the Triton client)"),
    ("torchcodec", "torchcodec", "optional: a decoder that can decode on the GPU"),
)

# (architecture, frames, size): the issue's benchmark grid (mvit_v2_s takes exactly 16x224x224)
FULL_MODELS = (("r3d_18", 16, 112), ("r2plus1d_18", 16, 112), ("frames_resnet18", 16, 112), ("mvit_v2_s", 16, 224))
QUICK_MODELS = (("tiny", 4, 32), ("frames_resnet18", 4, 32))


def log(message: str) -> None:
    print(message, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class Skip(Exception):
    """A section or case cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------
# the report: one JSON file, rewritten after every section
# ---------------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (strict JSON readers reject them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Report:
    """The sections measured so far; :meth:`save` writes them atomically to ``path`` (if any)."""

    def __init__(self, path: Path | None, args: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "arguments": args}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(_finite(self.data), indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # a reader never sees half a file

    @contextmanager
    def section(self, name: str):
        """Run a section: its dict is filled by the block; failures and skips are recorded, not raised."""
        log(f"\n== {name}")
        start = time.perf_counter()
        body: dict[str, Any] = {"status": "ok"}
        self.data[name] = body
        try:
            yield body
        except Skip as exc:
            body.update(status="skipped", reason=str(exc))
            log(f"   skipped: {exc}")
        except ImportError as exc:
            body.update(status="skipped", reason=f"cannot import {exc.name or ''}: {exc}".replace(" : ", ": "))
            log(f"   skipped: {body['reason']}")
        except Exception as exc:  # the run goes on: the other sections may still work here
            body.update(status="failed", error=_first_line(exc), traceback=traceback.format_exc(limit=6))
            log(f"   failed: {body['error']}")
        finally:
            body["seconds"] = round(time.perf_counter() - start, 2)
            self.save()


# ---------------------------------------------------------------------------------------------
# 1. environment
# ---------------------------------------------------------------------------------------------


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            return out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device named ``device_name`` (TFLOP/s), or None when not in the table."""
    for key, value in KNOWN_PEAKS_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def check_dependencies() -> list[dict[str, Any]]:
    """Import each of :data:`DEPENDENCIES`; a failure is reported with the package to install, never raised."""
    from importlib import metadata

    rows = []
    for module, package, needed_by in DEPENDENCIES:
        row: dict[str, Any] = {"module": module, "package": package, "needed_by": needed_by}
        try:
            importlib.import_module(module)
            row["installed"] = True
            try:
                row["version"] = metadata.version(package.split("[")[0])
            except metadata.PackageNotFoundError:
                row["version"] = None
        except BaseException as exc:  # ImportError, or a library that fails while loading (OSError, RuntimeError)
            if isinstance(exc, KeyboardInterrupt):
                raise
            row.update(installed=False, error=_first_line(exc), install=f"{Path(sys.executable).name} -m pip install '{package}'")
        rows.append(row)
    return rows


def environment(body: dict[str, Any], device_arg: str, peak_arg: float | None) -> str:
    """Fill ``body`` with versions, the device and the dependency check; returns the device to use (``cuda``/``cpu``)."""
    body.update(python=platform.python_version(), executable=sys.executable, platform=platform.platform(), cpus=os.cpu_count())
    body["dependencies"] = check_dependencies()
    body["missing"] = [{"package": d["package"], "install": d["install"], "needed_by": d["needed_by"], "error": d["error"]}
                       for d in body["dependencies"] if not d["installed"]]
    for d in body["missing"]:
        log(f"   missing {d['package']:<20} ({d['needed_by']}): {d['install']}")
    import torch

    body.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    try:
        import torchvision

        body["torchvision"] = torchvision.__version__
    except Exception as exc:
        body["torchvision"] = None
        body["torchvision_error"] = _first_line(exc)
    body["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        import onnxruntime

        body["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        body["onnxruntime_providers"] = None
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device")
    device = "cuda" if device_arg in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    body["device"] = device
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        body.update(
            device_name=props.name, device_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
            driver=_driver_version(), bf16_supported=torch.cuda.is_bf16_supported(),
            nccl=torch.distributed.is_nccl_available() if torch.distributed.is_available() else False,
        )
    else:
        body.update(device_name=platform.processor() or platform.machine(), driver=None)
    body["peak_bf16_tflops"] = peak_arg if peak_arg is not None else (peak_bf16_tflops(body["device_name"]) if device == "cuda" else None)
    body["peak_source"] = "--peak-tflops" if peak_arg is not None else ("datasheet table (dense bf16)" if body["peak_bf16_tflops"] else None)
    log(f"   device {body['device_name']} ({device}); driver {body.get('driver')}; CUDA {body['cuda']}; cuDNN {body['cudnn']}; "
        f"torch {body['torch']}; torchvision {body['torchvision']}; peak bf16 {body['peak_bf16_tflops']} TFLOP/s")
    return device


# ---------------------------------------------------------------------------------------------
# 2. training throughput
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One training benchmark: a model at a clip size and batch size, eager or compiled."""

    architecture: str
    frames: int
    size: int
    batch_size: int
    compiled: bool

    def label(self) -> str:
        return f"{self.architecture} {self.frames}x{self.size}x{self.size} b{self.batch_size} {'compiled' if self.compiled else 'eager'}"

    def estimate_s(self, quick: bool) -> float:
        """Rough seconds this case needs (model build, cuDNN autotuning, compile): the budget check's unit."""
        if quick:
            return 3.0 if not self.compiled else 10.0
        heavy = 2.0 if self.size >= 224 else 1.0
        return heavy * (70.0 if self.compiled else 8.0)


def make_cases(models, batch_sizes: list[int], compile_mode: str) -> list[Case]:
    """Eager cases first (all of them are cheap), then compiled ones (``largest``: the largest batch size only)."""
    eager = [Case(a, t, s, b, False) for a, t, s in models for b in batch_sizes]
    if compile_mode == "none":
        return eager
    sizes = batch_sizes if compile_mode == "all" else [max(batch_sizes)]
    return eager + [Case(a, t, s, b, True) for a, t, s in models for b in sizes]


def _one_thread(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # loader workers decode; the main process computes (as in training)


def train_case(case: Case, device_type: str, *, warmup: int, steps: int, compile_backend: str, peak: float | None,
               flops_cache: dict, num_classes: int = 10) -> dict[str, Any]:
    """Time ``steps`` training steps of ``case`` after ``warmup``; see the module docstring for the units.

    The step is PyTrain's (``train_one_epoch``): uint8 clips ``(N, T, H, W, 3)`` in, bf16 autocast on
    CUDA, cross-entropy with label smoothing 0.1, backward, AdamW. FLOPs are counted on one eager step
    (the compiled graph does the same arithmetic) and cached per shape.
    """
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from pytrain.training.models import ARCHITECTURES, build_model

    device = torch.device(device_type)
    cuda = device.type == "cuda"
    result: dict[str, Any] = {**asdict(case), "status": "ok"}
    model = optimizer = runner = clips = labels = None
    try:
        torch.manual_seed(0)
        model = build_model(case.architecture, num_classes, case.frames, case.size, case.size).to(device).train()
        channels_last = cuda and ARCHITECTURES[case.architecture].family != "frames"  # as training does: 3D convolutions only
        if channels_last:
            model.preprocess.channels_last_3d = True
            model.to(memory_format=torch.channels_last_3d)
        bf16 = cuda and torch.cuda.is_bf16_supported()
        result.update(channels_last_3d=channels_last, autocast="bf16" if bf16 else None,
                      parameters_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        generator = torch.Generator().manual_seed(0)
        clips = torch.randint(0, 256, (case.batch_size, case.frames, case.size, case.size, 3), dtype=torch.uint8, generator=generator).to(device)
        labels = torch.randint(0, num_classes, (case.batch_size,), generator=generator).to(device)
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def step(module) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = criterion(module(clips), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        key = (case.architecture, case.frames, case.size, case.batch_size)
        if key not in flops_cache:  # one eager step, counted (it is a warm-up step too)
            with FlopCounterMode(display=False) as counter:
                step(model)
            sync()
            flops_cache[key] = counter.get_total_flops()
        flops = flops_cache[key]
        runner = torch.compile(model, backend=compile_backend) if case.compiled else model
        start = time.perf_counter()
        step(runner)
        sync()
        result["first_step_s"] = round(time.perf_counter() - start, 3)  # compile time (and cuDNN autotuning) shows here
        for _ in range(max(0, warmup - 1)):
            step(runner)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(runner)
        sync()
        seconds = time.perf_counter() - start
        tflops = flops * steps / seconds / 1e12
        result.update(
            steps=steps, step_ms=round(1000 * seconds / steps, 2), clips_per_second=round(case.batch_size * steps / seconds, 2),
            flops_per_step=flops, tflops=round(tflops, 3), mfu=round(tflops / peak, 4) if peak else None,
            loss=float(loss.detach().float()),
            peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        )
    except Exception as exc:  # OOM, a compile error, an unsupported size: recorded, the next case runs
        oom = type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
        result.update(status="oom" if oom else "failed", error=_first_line(exc)[:500])
    finally:
        del model, optimizer, runner, clips, labels
        gc.collect()
        if case.compiled:
            try:
                torch._dynamo.reset()
            except Exception:
                pass
        if cuda:
            torch.cuda.empty_cache()
    return result


def _case_line(case: Case, row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"   {case.label():<46} {row['status']}: {row.get('error') or row.get('reason')}"
    line = f"   {case.label():<46} {row['clips_per_second']:9.1f} clips/s {row['tflops']:8.2f} TFLOP/s"
    if row["mfu"] is not None:
        line += f"  MFU {100 * row['mfu']:5.1f}%"
    if row["peak_memory_gib"] is not None:
        line += f"  {row['peak_memory_gib']:6.2f} GiB"
    return line


def training(body: dict[str, Any], args, device: str, peak: float | None, deadline: float, save: Callable[[], None]) -> None:
    """Run every :class:`Case` that fits before ``deadline`` (``time.monotonic()``); the rest are recorded as skipped."""
    models = QUICK_MODELS if args.quick else tuple(m for m in FULL_MODELS if not args.models or m[0] in args.models)
    cases = make_cases(models, args.batch_sizes, args.compile)
    import torch

    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # what training sets on CUDA: fixed clip size, fastest kernels
        body["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    body.update(warmup=args.warmup, steps=args.steps, compile_backend=args.compile_backend, peak_bf16_tflops=peak, cases=[])
    flops_cache: dict = {}
    for case in cases:
        left = deadline - time.monotonic()
        if left < case.estimate_s(args.quick):
            row = {**asdict(case), "status": "skipped", "reason": f"budget: {left:.0f} s left, this case needs ~{case.estimate_s(args.quick):.0f} s"}
        else:
            row = train_case(case, device, warmup=args.warmup, steps=args.steps, compile_backend=args.compile_backend,
                             peak=peak, flops_cache=flops_cache)
        body["cases"].append(row)
        log(_case_line(case, row))
        save()


# ---------------------------------------------------------------------------------------------
# synthetic H.264 clips and task folders (also used by tests/gpu)
# ---------------------------------------------------------------------------------------------


def _synthetic():
    """PyTrain's synthetic clip renderer, :mod:`pytrain.sources.synthetic`.

    Loaded from its file when the package ``pytrain.sources`` cannot be imported: that package's
    ``__init__`` imports the database layer (sqlalchemy, pydantic), which a bare GPU host lacks,
    while the renderer itself needs numpy alone (and PyAV to write mp4).
    """
    try:
        from pytrain.sources import synthetic

        return synthetic
    except ImportError:
        path = REPO / "app" / "pytrain" / "sources" / "synthetic.py"
        spec = importlib.util.spec_from_file_location("_pytrain_synthetic", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        return module


def _ffmpeg_encode(path: Path, frames, fps: int) -> None:
    """``(T, H, W, 3)`` uint8 RGB -> H.264 yuv420p mp4 through the ``ffmpeg`` binary (written aside, then renamed)."""
    t, h, w, _ = frames.shape
    tmp = path.with_name(f".{path.name}.partial.mp4")
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", str(tmp)],
        input=frames.tobytes(), check=True, capture_output=True, timeout=120,
    )
    os.replace(tmp, path)


def clip_encoder() -> str:
    """The H.264 encoder this host has: ``ffmpeg`` (the binary, with libx264) or ``pyav``.

    Raises:
        Skip: neither works here (the reason names both).
    """
    import numpy as np

    reasons = []
    if shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                _ffmpeg_encode(Path(tmp) / "probe.mp4", np.zeros((2, 16, 16, 3), np.uint8), 15)
                return "ffmpeg"
            except (OSError, subprocess.SubprocessError) as exc:
                reasons.append(f"ffmpeg cannot encode H.264 ({_first_line(exc)})")
    else:
        reasons.append("no ffmpeg binary on PATH")
    try:
        import av  # noqa: F401

        return "pyav"
    except ImportError as exc:
        reasons.append(f"no PyAV ({_first_line(exc)}; pip install av)")
    raise Skip("cannot make H.264 clips: " + "; ".join(reasons))


def make_clips(root: Path, *, folders: tuple[str, ...], clips_per_folder: int, height: int, width: int,
               frame_counts: tuple[int, ...], encoder: str | None = None, seed: int = 0) -> Path:
    """Write ``root/<folder>/clip_NNN.mp4`` (H.264), rendered by PyTrain's synthetic dataset maker.

    Classes (the text before the first underscore of a folder) differ in colour and motion, so a
    tiny model learns them. Files are encoded in parallel threads (ffmpeg processes, or PyAV).

    Raises:
        Skip: no H.264 encoder here (see :func:`clip_encoder`).
    """
    synthetic = _synthetic()
    encoder = encoder or clip_encoder()
    jobs = []
    for f_index, folder in enumerate(folders):
        for i in range(clips_per_folder):
            jobs.append((root / folder / f"clip_{i:03d}.mp4", folder, f_index, i))

    def write(job) -> None:
        path, folder, f_index, i = job
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = synthetic.render_frames(synthetic.style_for(folder, i), num_frames=frame_counts[i % len(frame_counts)],
                                         height=height, width=width, seed=seed * 100_003 + f_index * 1009 + i)
        fps = (12, 15, 25)[(i + f_index) % 3]
        if encoder == "ffmpeg":
            _ffmpeg_encode(path, frames, fps)
        else:
            synthetic.write_mp4(path, frames, fps=fps)

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(write, jobs))
    return root


E2E_FOLDERS = ("cooking_cuttingbread", "cooking_peelingpotatoes", "drinking_water", "drinking_coffee", "eating_soup", "walking_dog")


def write_task(task_dir: Path, sources_root: Path, *, dataset: str = "dataset1", **spec_fields) -> Any:
    """Write ``task.json`` + ``manifest.csv`` for every clip of ``sources_root/<dataset>``, as the orchestrator would.

    Class: the text before the first underscore of the clip's folder. Split by clip number ``i`` of
    ``n`` per folder: the last ``max(1, n // 4)`` test, the one before them val, the rest train
    (8 clips: 0-4 train, 5 val, 6-7 test, as ``tests/fixtures/clips.write_task``).

    Returns:
        The :class:`pytrain.spec.TaskSpec` written.
    """
    
    from pytrain.spec import ManifestRow, TaskSpec, write_manifest

    task_dir.mkdir(parents=True, exist_ok=True)
    clips = sorted((sources_root / dataset).glob("*/*.mp4"))
    per_folder: dict[str, int] = {}
    for clip in clips:
        per_folder[clip.parent.name] = per_folder.get(clip.parent.name, 0) + 1
    rows = []
    for clip in clips:
        n, number = per_folder[clip.parent.name], int(clip.stem.split("_")[-1])
        test_from = n - max(1, n // 4)
        split = "test" if number >= test_from else "val" if number == test_from - 1 else "train"
        rows.append((clip.relative_to(sources_root).as_posix(), clip.parent.name.partition("_")[0], split))
    fields = dict(task_id=1, model_name="bench_gpu", class_list=sorted({label for _, label, _ in rows}), architecture="tiny",
                  num_frames=8, height=32, width=32, epochs=2, batch_size=4, shuffle_size=300, learning_rate=3e-3, seed=0,
                  sources_root=str(sources_root), extra={"hflip": 0.0})
    fields.update(spec_fields)
    spec = TaskSpec(**fields)
    spec.save(task_dir)
    write_manifest([ManifestRow(*row) for row in rows], task_dir)
    return spec


def training_command(task_dir: Path, sources_root: Path, device: str, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The training entrypoint's command line and environment (``app/`` put first on ``PYTHONPATH``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "app"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "pytrain.training", "--task-dir", str(task_dir), "--sources-root", str(sources_root), "--device", device, *extra]
    return cmd, env


# ---------------------------------------------------------------------------------------------
# 3. the data path
# ---------------------------------------------------------------------------------------------


def loader_epochs(files: list[Path], frames: int, size: int, workers: int, *, batch_size: int, device_type: str,
                  cache_dir: str | None = None, epochs: int = 1) -> list[float]:
    """clips/s of each epoch of the training loader, the batches moved to the device and augmented there.

    The dataset is ``bench_loader``'s (``ClipDataset`` with jitter and crop/flip boxes); the loader is
    built as training builds it (shuffle-buffer sampler, pinned memory on CUDA, persistent workers,
    one thread per worker); each batch is copied to the device and ``apply_boxes`` runs there, as in
    ``train_one_epoch``. Without a cache every clip is decoded (a first epoch).
    """
    import torch
    from torch.utils.data import DataLoader

    from bench_loader import _dataset  # the same dataset as the CPU loader benchmark
    from pytrain.training.data import ShuffleBufferSampler
    from pytrain.training.transforms import apply_boxes

    device = torch.device(device_type)
    dataset = _dataset(files, frames, size, cache_dir)
    sampler = ShuffleBufferSampler(len(dataset), 300)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, worker_init_fn=_one_thread if workers else None, timeout=300 if workers else 0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates = []
    try:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            count = 0
            for clips, _, boxes in loader:
                count += apply_boxes(clips.to(device, non_blocking=True), boxes).shape[0]
            sync()
            rates.append(count / (time.perf_counter() - start))
    finally:
        del loader
    return rates


def default_workers(cpus: int) -> list[int]:
    """1, 2, 4, ... up to ``cpus - 1`` (one core for the training process), and ``cpus - 1`` itself."""
    top = max(1, cpus - 1)
    counts = [w for w in (1, 2, 4, 8, 16, 32, 64) if w < top] + [top]
    return sorted(set(counts))


def _repeat(files: list[Path], workers: int, batch_size: int) -> list[Path]:
    """The files repeated to ``max(len(files), 4 * batch_size * workers)`` items: every worker gets
    about four batches an epoch, so start-up and the last half-empty round weigh little. Without a
    cache a repeated file is decoded again, like any other clip."""
    n = max(len(files), 4 * batch_size * workers)
    return (files * math.ceil(n / len(files)))[:n]


def data_path(body: dict[str, Any], args, device: str, tmp: Path) -> None:
    import decord  # noqa: F401  (the loader's decoder: skip the section with its name when absent)
    import torch

    from bench_loader import _files, baseline

    frames, size = args.data_frames, args.data_size
    encoder = clip_encoder()
    start = time.perf_counter()
    folder = make_clips(tmp / "data", folders=E2E_FOLDERS, clips_per_folder=args.data_clips // len(E2E_FOLDERS),
                        height=args.data_source[1], width=args.data_source[0], frame_counts=(args.data_source_frames,), encoder=encoder)
    files = _files(folder)
    body.update(encoder=encoder, codec="h264", clips=len(files), source=f"{args.data_source[0]}x{args.data_source[1]}",
                source_frames=args.data_source_frames, frames=frames, size=size, batch_size=args.data_batch_size,
                make_seconds=round(time.perf_counter() - start, 2), cpus=os.cpu_count())
    log(f"   {len(files)} H.264 clips ({body['source']}, {args.data_source_frames} frames, {encoder}) in {body['make_seconds']} s; "
        f"decoding {frames} frames at {size}x{size}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the main process only collates and copies; OpenMP spinning slowed that on shared cores
    try:
        body["decord_baseline"] = round(baseline(files, frames, size), 2)
        log(f"   decord, 1 thread, no loader        {body['decord_baseline']:9.1f} clips/s")
        body["decoders"] = compare_decoders(files, frames, size)
        body["nvdec"] = nvdec_rate(files, frames, size, device)
        body["first_epoch"] = []
        for workers in args.workers or default_workers(os.cpu_count() or 1):
            items = _repeat(files, workers, args.data_batch_size)
            rates = loader_epochs(items, frames, size, workers, batch_size=args.data_batch_size, device_type=device, epochs=2)
            rate = max(rates[1:])  # epoch 1 also starts the workers; without a cache epoch 2 decodes everything again
            body["first_epoch"].append({"workers": workers, "items": len(items), "clips_per_second": round(rate, 2), "per_worker": round(rate / workers, 2)})
            log(f"   loader, {workers:2d} workers, every clip decoded {rate:9.1f} clips/s ({rate / workers:.1f} per worker, {len(items)} clips an epoch)")
        workers = max(row["workers"] for row in body["first_epoch"])
        items = _repeat(files, workers, args.data_batch_size)
        rates = loader_epochs(items, frames, size, workers, batch_size=args.data_batch_size, device_type=device,
                              cache_dir=str(tmp / "cache"), epochs=3)
        body["cached"] = {"workers": workers, "items": len(items), "fill_clips_per_second": round(rates[0], 2), "clips_per_second": round(max(rates[1:]), 2)}
        log(f"   loader, {workers:2d} workers, cached epoch        {body['cached']['clips_per_second']:9.1f} clips/s")
    finally:
        torch.set_num_threads(threads)


def compare_decoders(files: list[Path], frames: int, size: int) -> dict[str, Any]:
    """Each ``PYTRAIN_DECODER`` choice through :func:`pytrain.video.read_clip` (one thread, the
    evaluation clip), in clips/s, and the mean |difference| of its pixels from decord's (0..255).

    torchcodec can also decode on the GPU; PyTrain's loader decodes in CPU workers, so the CPU path
    is what is compared. A decoder that cannot be imported is recorded as skipped with the reason.
    """
    import numpy as np

    from pytrain.video import DECODERS, read_clip

    report: dict[str, Any] = {}
    reference: list[np.ndarray] = []
    for decoder in DECODERS:
        try:
            start = time.perf_counter()
            clips = [read_clip(path, frames, size, size, decoder=decoder) for path in files]
            rate = len(files) / (time.perf_counter() - start)
        except Exception as exc:  # torchcodec absent, or a torch/FFmpeg it cannot load
            report[decoder] = {"status": f"skipped: {_first_line(exc)}"}
            log(f"   read_clip, {decoder:10s}   skipped: {_first_line(exc)}")
            continue
        reference = reference or clips
        diff = float(np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(reference, clips)]))
        report[decoder] = {"status": "ok", "clips_per_second": round(rate, 2), "mean_abs_diff_from_first": round(diff, 3)}
        log(f"   read_clip, {decoder:10s}        {rate:9.1f} clips/s (mean |diff| from {DECODERS[0]}: {diff:.2f} of 255)")
    return report


def nvdec_rate(files: list[Path], frames: int, size: int, device: str) -> dict[str, Any]:
    """``PYTRAIN_DECODER=nvdec`` as training would use it: the evaluation clip's frames of each file
    decoded and resized on the GPU (:func:`pytrain.video.nvdec_frames`), left there; clips/s over
    the files (synchronised), one process. Skipped (with the reason: no CUDA, no torchcodec CUDA
    build, no NVDEC for H.264) where it cannot run."""
    import decord
    import torch

    from pytrain.sampling import clip_indices
    from pytrain.video import nvdec_frames

    if device != "cuda":
        return {"status": "skipped: not a CUDA device"}
    try:
        indices = [clip_indices(len(decord.VideoReader(str(p), num_threads=1)), frames)[0].tolist() for p in files]
        nvdec_frames(files[0], size, size, indices[0])  # warm-up: the CUDA context and the decoder
        torch.cuda.synchronize()
        start = time.perf_counter()
        for path, picked in zip(files, indices):
            nvdec_frames(path, size, size, picked)
        torch.cuda.synchronize()
        rate = len(files) / (time.perf_counter() - start)
    except Exception as exc:  # ConfigurationError naming what is missing, or a decoder error
        log(f"   nvdec (GPU decoder)           skipped: {_first_line(exc)}")
        return {"status": f"skipped: {_first_line(exc)}"}
    log(f"   nvdec (GPU decoder, 1 process)     {rate:9.1f} clips/s (frames stay on the GPU)")
    return {"status": "ok", "clips_per_second": round(rate, 2)}


def data_verdict(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each model measured at the data section's clip size: would its fastest training rate wait for data?

    ``workers_needed`` is the smallest measured worker count whose first-epoch rate keeps up, or
    else the 1-worker rate extrapolated linearly (``ceil(train rate / per-worker rate)``).
    """
    data, train = report.get("data", {}), report.get("training", {})
    if data.get("status") != "ok" or not data.get("first_epoch"):
        return []
    best: dict[str, dict[str, Any]] = {}
    for row in train.get("cases", []):
        if row.get("status") == "ok" and (row["frames"], row["size"]) == (data["frames"], data["size"]):
            if row["architecture"] not in best or row["clips_per_second"] > best[row["architecture"]]["clips_per_second"]:
                best[row["architecture"]] = row
    streaming = data["first_epoch"]
    fastest = max(streaming, key=lambda r: r["clips_per_second"])
    per_worker = min(streaming, key=lambda r: r["workers"])["per_worker"]
    verdicts = []
    for arch, row in best.items():
        need = row["clips_per_second"]
        enough = [r["workers"] for r in streaming if r["clips_per_second"] >= need]
        needed = min(enough) if enough else (math.ceil(need / per_worker) if per_worker > 0 else None)
        verdicts.append({
            "architecture": arch, "train_clips_per_second": need, "batch_size": row["batch_size"], "compiled": row["compiled"],
            "gpu_waits_for_data": fastest["clips_per_second"] < need, "loader_clips_per_second": fastest["clips_per_second"],
            "loader_workers": fastest["workers"], "workers_needed": needed, "workers_needed_measured": bool(enough),
            "cpus": data.get("cpus"), "cache_keeps_up": data.get("cached", {}).get("clips_per_second", 0) >= need,
            "nvdec_clips_per_second": data.get("nvdec", {}).get("clips_per_second"),
            "nvdec_keeps_up": data.get("nvdec", {}).get("clips_per_second", 0) >= need,
        })
    return verdicts


# ---------------------------------------------------------------------------------------------
# 4. the training entrypoint end to end, export and parity on the device
# ---------------------------------------------------------------------------------------------


def device_parity(task_dir: Path, sources_root: Path, device_type: str) -> dict[str, Any]:
    """The best checkpoint's model on ``device_type`` against ``model.onnx`` in onnxruntime, on the test clips.

    onnxruntime runs on the CUDA execution provider when this onnxruntime has it (the
    ``onnxruntime-gpu`` package), else on the CPU. PyTorch runs in float32 with TF32 off (the graph
    is float32), and also under bf16 autocast (how training evaluates on CUDA), for reference.

    Returns:
        ``{"providers", "clips", "fp32": {"max_abs_diff", "top1_agreement"}, "bf16_autocast": {...} | None}``;
        differences are of softmax probabilities.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    from pytrain.spec import MODEL_ONNX, TensorSpec, read_manifest
    from pytrain.training.export import ProbabilityModel
    from pytrain.training.models import rebuild_from_checkpoint
    from pytrain.video import read_clip

    spec = TensorSpec.load(task_dir)
    paths = [sources_root / row.path for row in read_manifest(task_dir) if row.split == "test"]
    clips = np.stack([read_clip(p, spec.num_frames, spec.height, spec.width) for p in paths])
    available = ort.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(task_dir / MODEL_ONNX), providers=providers)
    expected = session.run([spec.output_name], {spec.input_name: clips})[0]

    checkpoint = torch.load(task_dir / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    device = torch.device(device_type)
    model = ProbabilityModel(rebuild_from_checkpoint(checkpoint)).to(device).eval()
    frames = torch.from_numpy(clips).to(device)

    def compare(probs: np.ndarray) -> dict[str, Any]:
        return {"max_abs_diff": float(np.abs(probs - expected).max()), "top1_agreement": float((probs.argmax(1) == expected.argmax(1)).mean())}

    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            fp32 = model(frames).float().cpu().numpy()
            bf16 = None
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    bf16 = model(frames).float().cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"providers": session.get_providers(), "clips": int(len(clips)), "fp32": compare(fp32),
            "bf16_autocast": compare(bf16) if bf16 is not None else None}


def end_to_end(body: dict[str, Any], args, device: str, tmp: Path) -> None:
    import decord  # noqa: F401  (the entrypoint decodes with it: skip with its name when absent)

    sources, task = tmp / "e2e_sources", tmp / "e2e_task"
    t, size = args.e2e_frames, args.e2e_size
    make_clips(sources / "dataset1", folders=E2E_FOLDERS, clips_per_folder=args.e2e_clips, height=64, width=64, frame_counts=(24, 30, 36))
    spec = write_task(task, sources, architecture=args.e2e_architecture, num_frames=t, height=size, width=size,
                      epochs=args.e2e_epochs, batch_size=args.e2e_batch_size, extra={"hflip": 0.5, "patience": 100})
    extra = ["--num-workers", str(args.e2e_workers)] if args.e2e_workers is not None else []
    cmd, env = training_command(task, sources, device, *extra)
    body.update(architecture=spec.architecture, clip=f"{t}x{size}x{size}", epochs=spec.epochs, batch_size=spec.batch_size, command=" ".join(cmd))
    log(f"   {' '.join(cmd[1:])}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.e2e_timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the training entrypoint ran past {args.e2e_timeout} s") from exc
    body.update(exit_code=proc.returncode, wall_seconds=round(time.perf_counter() - start, 2))
    if proc.returncode != 0:
        body["stderr_tail"] = proc.stderr.strip().splitlines()[-25:]
        raise RuntimeError(f"the training entrypoint exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['(no stderr)'])[-1]}")
    metrics = json.loads((task / "metrics.json").read_text(encoding="utf-8"))
    export = metrics.get("export", {})
    body.update(device=metrics.get("device"), test_accuracy=metrics.get("test_accuracy"), epochs_run=metrics.get("epochs_run"),
                train_clips_per_second=metrics.get("train_clips_per_second"), exporter=export.get("exporter"),
                onnx_bytes=export.get("onnx_bytes"), export_parity_cpu=export.get("parity"))
    log(f"   trained on {body['device']} in {body['wall_seconds']} s: test accuracy {body['test_accuracy']}, exported with {body['exporter']}")
    body["parity"] = device_parity(task, sources, device)
    p = body["parity"]
    log(f"   parity on {p['clips']} clips, PyTorch on {device} vs onnxruntime {p['providers'][0]}: "
        f"max |diff| {p['fp32']['max_abs_diff']:.2e} (fp32), top-1 agreement {p['fp32']['top1_agreement']:.2f}"
        + (f"; bf16 autocast max |diff| {p['bf16_autocast']['max_abs_diff']:.2e}" if p["bf16_autocast"] else ""))



# ---------------------------------------------------------------------------------------------
# the table, the arguments, main
# ---------------------------------------------------------------------------------------------


def print_tables(report: dict[str, Any]) -> None:
    """A short summary: the training cases, the data path's verdicts, the end-to-end run."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        log(json.dumps(_finite({k: report.get(k) for k in ("training", "data", "end_to_end", "data_verdict")}), indent=1, default=str))
        return
    console = Console(width=None if sys.stdout.isatty() else 140)  # a log file gets whole rows
    env = report.get("environment", {})
    device = "GPU" if env.get("device") == "cuda" else "training step"
    console.print(f"\n[bold]{env.get('device_name')}[/] ({env.get('device')}), driver {env.get('driver')}, CUDA {env.get('cuda')}, "
                  f"cuDNN {env.get('cudnn')}, torch {env.get('torch')}, torchvision {env.get('torchvision')}")
    for d in env.get("missing", []):
        console.print(f"missing [bold]{d['package']}[/]: {d['install']}  ({d['needed_by']})")
    cases = report.get("training", {}).get("cases", [])
    if cases:
        table = Table(title="training step (bf16 autocast on CUDA), clips/s")
        for name in ("model", "clip", "batch", "compiled", "clips/s", "TFLOP/s", "MFU", "peak GiB", "status"):
            table.add_column(name, justify="right" if name not in ("model", "status") else "left")
        for r in cases:
            ok = r["status"] == "ok"
            table.add_row(r["architecture"], f"{r['frames']}x{r['size']}x{r['size']}", str(r["batch_size"]), "yes" if r["compiled"] else "no",
                          f"{r['clips_per_second']:.1f}" if ok else "-", f"{r['tflops']:.1f}" if ok else "-",
                          f"{100 * r['mfu']:.1f}%" if ok and r.get("mfu") is not None else "-",
                          f"{r['peak_memory_gib']:.2f}" if ok and r.get("peak_memory_gib") is not None else "-",
                          "ok" if ok else f"{r['status']}: {(r.get('error') or r.get('reason') or '')[:60]}")
        console.print(table)
    verdicts = report.get("data_verdict")
    for v in verdicts if isinstance(verdicts, list) else []:
        where = "measured" if v["workers_needed_measured"] else "extrapolated"
        console.print(f"{v['architecture']}: trains at {v['train_clips_per_second']:.0f} clips/s; the loader gives "
                      f"{v['loader_clips_per_second']:.0f} clips/s with {v['loader_workers']} workers -> "
                      + (f"[red]the {device} waits for data[/]" if v["gpu_waits_for_data"] else "[green]it keeps up[/]")
                      + f"; needs {v['workers_needed']} workers ({where}; {v['cpus']} CPUs here)"
                      + ("; the decoded-clip cache keeps up" if v["cache_keeps_up"] else "; the cache does not keep up either")
                      + ("" if v.get("nvdec_clips_per_second") is None else
                         f"; nvdec decodes {v['nvdec_clips_per_second']:.0f} clips/s in one process"
                         + (" (keeps up)" if v["nvdec_keeps_up"] else " (does not keep up)")))
    e2e = report.get("end_to_end", {})
    if e2e.get("status") == "ok":
        p = e2e["parity"]
        console.print(f"end to end: {e2e['architecture']} {e2e['clip']} trained on {e2e['device']} in {e2e['wall_seconds']} s, "
                      f"test accuracy {e2e['test_accuracy']:.2f}; ONNX vs PyTorch on {e2e['device']}: max |diff| "
                      f"{p['fp32']['max_abs_diff']:.1e}, top-1 agreement {p['fp32']['top1_agreement']:.2f} ({p['providers'][0]})")
    for name in ("environment", "end_to_end", "data", "training"):
        section = report.get(name, {})
        if section.get("status") in ("skipped", "failed"):
            console.print(f"{name}: {section['status']}: {section.get('reason') or section.get('error')}")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA when torch sees a device")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI on a CPU, < 2 min): tiny/frames_resnet18 at 4x32x32, batch 2")
    parser.add_argument("--output", type=Path, help="write the whole report as JSON here (rewritten after each section)")
    parser.add_argument("--batch-sizes", type=_ints, default=None, help="training batch sizes, comma-separated (default 8,32; quick 2)")
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=None,
                        help="a subset of r3d_18,r2plus1d_18,frames_resnet18,mvit_v2_s")
    parser.add_argument("--compile", choices=("none", "largest", "all"), default=None,
                        help="torch.compile cases: none, the largest batch size only, or all (default largest)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; quick: eager, which traces but skips code generation)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case, the first one compiles (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5; quick 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this device, TFLOP/s, for MFU (default: the datasheet table)")
    parser.add_argument("--budget-seconds", type=float, default=330.0,
                        help="training cases that would end after this many seconds since the start are skipped (recorded as skipped); "
                             "the default keeps a full H200 run under 6 minutes")
    parser.add_argument("--workers", type=_ints, default=None, help="loader worker counts to measure (default 1,2,4,... up to CPUs - 1; quick 1)")
    parser.add_argument("--skip", action="append", default=[], choices=("training", "data", "end_to_end"), help="leave out a section (repeatable)")
    return parser


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Sizes of the full run, or of ``--quick``, for every option left unset."""
    q = args.quick
    defaults = dict(batch_sizes=[2] if q else [8, 32], compile="largest", compile_backend="eager" if q else "inductor",
                    warmup=1 if q else 3, steps=2 if q else 5, workers=[1] if q else None)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # data section: decode T frames at S x S from (W, H) sources of F frames (real clips are larger than the model's input)
    args.data_frames, args.data_size = (4, 32) if q else (16, 112)
    args.data_source, args.data_source_frames = ((64, 48), 24) if q else ((320, 240), 48)
    args.data_clips, args.data_batch_size = (6, 2) if q else (48, 8)
    # end to end: a short task on the training entrypoint
    args.e2e_architecture = "tiny" if q else "r3d_18"
    args.e2e_frames, args.e2e_size = (4, 32) if q else (8, 64)
    args.e2e_clips, args.e2e_epochs, args.e2e_batch_size = (4, 1, 4) if q else (8, 2, 8)
    args.e2e_workers = 0 if q else None  # None: the entrypoint's default, min(8, CPUs - 1)
    args.e2e_timeout = 240
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sections; returns 0 when every section that ran succeeded (skips are not failures), else 1."""
    started = time.monotonic()
    args = _fill_defaults(get_args_parser().parse_args(argv))
    deadline = started + args.budget_seconds
    report = Report(args.output, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    device = "cpu"
    with report.section("environment") as body:
        device = environment(body, args.device, args.peak_tflops)
    peak = report.data["environment"].get("peak_bf16_tflops")
    tmp = Path(tempfile.mkdtemp(prefix="pytrain-bench-gpu-"))
    try:
        # end to end and the data path first: they are bounded and answer "does it work here"; the
        # training grid last, so the budget only ever cuts its (compiled) cases
        for name, run in (("end_to_end", lambda body: end_to_end(body, args, device, tmp)),
                          ("data", lambda body: data_path(body, args, device, tmp)),
                          ("training", lambda body: training(body, args, device, peak, deadline, report.save))):
            if name in args.skip:
                report.data[name] = {"status": "skipped", "reason": "--skip"}
                continue
            with report.section(name) as body:
                run(body)
        try:
            report.data["data_verdict"] = data_verdict(report.data)
        except Exception as exc:  # a summary must not lose the measurements
            report.data["data_verdict"] = {"status": "failed", "error": _first_line(exc)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.data["total_seconds"] = round(time.monotonic() - started, 1)
    report.save()
    print_tables(report.data)
    log(f"\ntotal {report.data['total_seconds']} s" + (f"; report: {args.output}" if args.output else ""))
    failed = [k for k, v in report.data.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
