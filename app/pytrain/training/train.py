"""Train a video clip classifier from a task folder, then export and check the ONNX model.

Run (what the runners run)::

    python -m pytrain.training --task-dir model_tasks/task-7-kitchen --sources-root sources
    torchrun --nproc-per-node 4 -m pytrain.training --task-dir ...   # data-parallel on 4 GPUs

Read top to bottom (torchvision's ``references/video_classification/train.py`` layout):
:func:`train_one_epoch`, :func:`evaluate`, the builders (:func:`build_data`,
:func:`build_model_and_optimizer`), the loop (:class:`EarlyStopping`, :func:`resume`,
:func:`run_epoch`), :func:`_finish`, then :func:`main`, which calls them in that order, and the
argument parser at the bottom. Every epoch appends a :class:`~pytrain.spec.ProgressRecord` to
``progress.jsonl``.

Hyperparameters beyond :class:`~pytrain.spec.TaskSpec`'s fields come from the task row's ``options``
(``TaskSpec.extra``) and are typed and defaulted by :class:`pytrain.task_options.TrainConfig`.

Re-running a task resumes from ``checkpoint_last.pt`` when it exists (same model, same data order:
randomness depends only on ``(seed, epoch, clip)`` and the saved RNG state), so a run that crashed
at epoch 7 continues with epoch 8 and ends with the weights an uninterrupted run would have had
on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from pytrain.errors import ConfigurationError, TrainingError
from pytrain.spec import (
    CHECKPOINT_BEST, CLIP_CACHE, MODEL_ONNX, PLOTS, PROGRESS, SKIPPED, MetricsRecord, ProgressRecord, ScanResult, TaskSpec,
    TensorSpec, data_wait_hint, format_progress, read_scan, scan_stamp, write_json_atomic, write_metrics, write_scan,
)
from pytrain.spec import NODE_NAME_VARIABLE
from pytrain.task_options import TrainConfig, balanced_class_weights
from pytrain.training import data as data_mod
from pytrain.training import export, metrics, plots
from pytrain.training.checkpoints import find_resumable, move_aside, run_fingerprint, save_checkpoint, save_last
from pytrain.training.clip_cache import CACHE_DIR_ENV, CACHE_GB_ENV, cache_bytes_from_env
from pytrain.training.models import ARCHITECTURES, build_model
from pytrain.training.probe import scan_videos
from pytrain.training.run_lock import RunLock
from pytrain.training.transforms import TrainPreset, apply_boxes
from pytrain.video import default_decoder

log = logging.getLogger("pytrain.training")


# ---------------------------------------------------------------------------------------------
# progress and files
# ---------------------------------------------------------------------------------------------


class ProgressLog:
    """Appends one :class:`~pytrain.spec.ProgressRecord` per line to ``progress.jsonl``, flushed
    and fsynced (the orchestrator's heartbeat reads it while training runs). Silent on ranks
    other than 0."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: ProgressRecord) -> None:
        """Append ``record`` as one JSON line, its ``time`` set to now (Unix seconds) when unset."""
        if not self.enabled:
            return
        if record.time is None:
            record = replace(record, time=time.time())
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------
# one pass: training and evaluation
# ---------------------------------------------------------------------------------------------


def _autocast(device: torch.device):
    # bf16 autocast only on CUDA: on the CPU it is slower for 3D convolutions and would make CPU
    # runs differ from the float32 ONNX graph.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _progress_bar(iterable, total: int, desc: str, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    *,
    grad_clip: float = 0.0,
    desc: str = "train",
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader`` of ``(clips (N, T, H, W, 3) uint8, labels (N,) int64, boxes (N, 5) int64)``.

    The augmentation boxes (random resized crop + flip, drawn by the dataset) are applied here, on
    the device, to the whole batch (:func:`~pytrain.training.transforms.apply_boxes`): the workers
    only decode. A loader of ``(clips, labels)`` pairs trains without augmentation.

    Returns:
        ``{"loss", "accuracy", "clips", "seconds", "clips_per_second", "data_wait_seconds"}`` over
        all ranks under ``torchrun`` (mean loss over clips; ``seconds`` include waiting for data;
        ``data_wait_seconds`` is this rank's time blocked on the loader for the next batch, so
        ``data_wait_seconds / seconds`` is the share of the pass the device waited for decoding),
        plus on a CUDA device ``gpu_memory_peak_bytes`` (``torch.cuda.max_memory_allocated`` over
        the pass) and, where NVML answers, ``gpu_utilization`` (the mean of
        ``torch.cuda.utilization`` sampled after each step, percent 0..100).
    """
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    gpu = _GpuSampler(device)
    batches = _WaitTimed(_progress_bar(loader, len(loader), desc, show_progress))
    start = time.perf_counter()
    for clips, labels, *boxes in batches:
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if boxes:
            clips = apply_boxes(clips, boxes[0])
        with _autocast(device):
            logits = model(clips)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        n = labels.shape[0]
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == labels).sum())
        count += n
        gpu.sample()
    seconds = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():  # totals over all ranks
        totals = torch.tensor([total_loss, correct, count], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        total_loss, correct, count = float(totals[0]), int(totals[1]), int(totals[2])
    if count == 0:
        raise TrainingError("the training loader yielded no clips")
    return {"loss": total_loss / count, "accuracy": correct / count, "clips": count, "seconds": seconds,
            "clips_per_second": count / seconds, "data_wait_seconds": batches.waited, **gpu.figures()}


class _WaitTimed:
    """Iterate ``iterable``, adding to :attr:`waited` the seconds each ``next()`` blocked: the time
    the training loop waited for the loader's next batch (decoding it, or a worker's queue)."""

    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable
        self.waited = 0.0

    def __iter__(self) -> Any:
        iterator = iter(self.iterable)
        while True:
            begin = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - begin
            yield item


class _GpuSampler:
    """Peak memory and mean utilisation of a CUDA device over one training pass; nothing on a CPU.

    ``torch.cuda.utilization`` asks NVML (the ``pynvml`` package) for the percent of the last
    sample period the GPU was busy; without NVML it raises and utilisation is left out.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.utilization: list[float] = []
        self.nvml = self.cuda
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        """Sample utilisation once (after a step); stops asking after NVML's first failure."""
        if not self.nvml:
            return
        try:
            self.utilization.append(float(torch.cuda.utilization(self.device)))
        except Exception:  # no pynvml / NVML: utilisation is simply not reported
            self.nvml = False

    def figures(self) -> dict[str, float]:
        """``{"gpu_memory_peak_bytes", "gpu_utilization"}`` as far as known; ``{}`` on a CPU."""
        if not self.cuda:
            return {}
        figures: dict[str, float] = {"gpu_memory_peak_bytes": int(torch.cuda.max_memory_allocated(self.device))}
        if self.utilization:
            figures["gpu_utilization"] = sum(self.utilization) / len(self.utilization)
        return figures


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, *, desc: str = "eval", show_progress: bool = True) -> dict[str, Any]:
    """Deterministic evaluation (the task's evaluation clips, no augmentation, eval mode).

    Batches of ``(N, T, H, W, 3)`` clips, or ``(N, K, T, H, W, 3)`` with ``K`` views per video
    (``test_clips``, :mod:`pytrain.sampling`): a video's probabilities are then the mean of its
    views' softmax, as the client averages them, and the loss is the criterion on their log.

    Returns:
        ``{"loss", "accuracy", "labels": (N,) int64, "probabilities": (N, C) float32}``; loss and
        accuracy are NaN for an empty loader.
    """
    model.eval()
    all_labels, all_probs, total_loss = [], [], 0.0
    for clips, labels in _progress_bar(loader, len(loader), desc, show_progress):
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        views = clips.shape[1] if clips.ndim == 6 else 0
        with _autocast(device):
            logits = model(clips.flatten(0, 1) if views else clips)
        logits = logits.float()
        if views:
            probs = torch.softmax(logits, dim=1).view(labels.shape[0], views, -1).mean(dim=1)
            # log-probabilities are logits whose softmax is probs: the criterion's smoothing and weights apply
            total_loss += float(criterion(torch.log(probs.clamp_min(1e-12)), labels)) * labels.shape[0]
        else:
            probs = torch.softmax(logits, dim=1)
            total_loss += float(criterion(logits, labels)) * labels.shape[0]
        all_labels.append(labels.cpu().numpy())
        all_probs.append(probs.cpu().numpy())
    if not all_labels:
        return {"loss": float("nan"), "accuracy": float("nan"), "labels": np.zeros(0, np.int64), "probabilities": np.zeros((0, 0), np.float32)}
    labels_np = np.concatenate(all_labels)
    probs = np.concatenate(all_probs)
    return {
        "loss": total_loss / len(labels_np),
        "accuracy": float((probs.argmax(1) == labels_np).mean()),
        "labels": labels_np,
        "probabilities": probs,
    }


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LambdaLR factor: linear from ``1/warmup_steps`` to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ---------------------------------------------------------------------------------------------
# building the run: devices, data, model and optimiser
# ---------------------------------------------------------------------------------------------


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_arg: str) -> tuple[_Distributed, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        ddp = _Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        use_cuda = device_arg != "cpu" and torch.cuda.is_available()
        if device_arg == "cuda" and not use_cuda:
            raise ConfigurationError("--device cuda asked for, but torch sees no CUDA device")
        if use_cuda:
            torch.cuda.set_device(ddp.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return ddp, torch.device("cuda", ddp.local_rank) if use_cuda else torch.device("cpu")
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda asked for, but torch sees no CUDA device", hint="use --device auto or cpu")
    if device_arg == "cpu" or not torch.cuda.is_available():
        return _Distributed(), torch.device("cpu")
    return _Distributed(), torch.device("cuda", 0)


def _placement(ddp: _Distributed, device: torch.device) -> list[dict[str, Any]]:
    """Where every rank runs: ``[{"rank", "node", "device"}]`` in rank order, gathered from all ranks
    (a collective: every rank calls it). ``node`` is the runner's name for the node
    (:data:`~pytrain.spec.NODE_NAME_VARIABLE`: the Ray node id in a Ray job), Slurm's node name (``SLURMD_NODENAME``)
    in a Slurm job, else the host name; ``device`` is ``str(device)`` (``cpu``, ``cuda:0``)."""
    node = os.environ.get(NODE_NAME_VARIABLE) or os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    mine = {"rank": ddp.rank, "node": node, "device": str(device)}
    if ddp.world_size == 1:
        return [mine]
    everyone: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(everyone, mine)
    return sorted(everyone, key=lambda entry: entry["rank"])


def _loader(dataset, *, batch_size: int, sampler=None, num_workers: int, device: torch.device, timeout: float, seed: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda" and default_decoder() != "nvdec",  # nvdec's clips are on the GPU already
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        # a decoder hung in a worker fails the run with an error instead of hanging forever
        timeout=timeout if num_workers > 0 else 0,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG (dropout) untouched
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process computes


def _prepare_data(spec: TaskSpec, cfg: TrainConfig, task_dir: Path, sources_root: Path, ddp: _Distributed, processes: int) -> tuple[dict[str, list], list[dict[str, str]]]:
    """Read the manifest and pre-scan every file (rank 0); other ranks read ``skipped.json``.

    Scan results are kept in ``scan.json`` in the task folder (:func:`pytrain.spec.read_scan`), so a
    resumed run only scans the files that changed.
    """
    samples, skipped = data_mod.load_samples(task_dir, sources_root, spec.class_list)
    skipped_path = task_dir / SKIPPED
    if ddp.main:
        # results of earlier runs of this task (a resume) are kept while the file is unchanged
        previous = read_scan(task_dir)
        stamps = [_stamp(s.path, spec) for s in samples]
        todo = [i for i, s in enumerate(samples) if s.rel_path not in previous or previous[s.rel_path].stamp != stamps[i]]
        log.info("pre-scanning %d of %d files (timeout %g s per file, %d processes)", len(todo), len(samples), cfg.decode_timeout_s, processes)
        found = scan_videos([samples[i].path for i in todo], spec.num_frames, spec.height, spec.width, timeout=cfg.decode_timeout_s, processes=processes)
        results = {s.rel_path: previous[s.rel_path] for s in samples if s.rel_path in previous}
        for k, i in enumerate(todo):
            results[samples[i].rel_path] = ScanResult(stamps[i], found.get(k))
        write_scan(task_dir, results)
        for s in samples:
            reason = results[s.rel_path].reason
            if reason is not None:
                skipped.append({"path": s.rel_path, "reason": reason})
                log.warning("skipping %s: %s", s.rel_path, reason)
        write_json_atomic(skipped_path, skipped)
    if ddp.world_size > 1:
        dist.barrier()
        skipped = json.loads(skipped_path.read_text(encoding="utf-8"))
    bad_paths = {s["path"] for s in skipped}
    samples = [s for s in samples if s.rel_path not in bad_paths]
    data_mod.check_splits(samples)
    by_split = {split: [s for s in samples if s.split == split] for split in ("train", "val", "test")}
    return by_split, skipped


def _stamp(path: Path, spec: TaskSpec) -> list:
    st = path.stat()
    return scan_stamp(st.st_size, st.st_mtime_ns, spec.num_frames, spec.height, spec.width)


# Loader workers per rank when --num-workers is not given: beyond 8 decoders a rank is rarely
# data-bound, and one core per rank is left to the main process.
_MAX_DEFAULT_WORKERS = 8
# The DataLoader timeout's floor: a fresh worker's first batch includes its start-up (spawn and
# imports), which on a loaded machine can take far longer than one file's decode.
_LOADER_TIMEOUT_FLOOR_S = 120.0
# Clips exported models are checked on (ONNX vs PyTorch): more than one exercises the dynamic
# batch axis, and four keep the check to seconds for the big architectures.
_PARITY_CLIPS = 4


@dataclass
class _Data:
    """The clips and their loaders.

    Attributes:
        by_split: ``{"train"|"val"|"test": [Sample]}``, readable files only.
        skipped: ``[{"path", "reason"}]`` of ``skipped.json``.
        sampler: the training order (shuffle buffer, this rank's share).
        train_loader: ``(clips (N, T, H, W, 3) uint8, labels (N,) int64, boxes (N, 5) int64)``.
        eval_loaders: ``{split: loader of (clips, labels)}``, deterministic clips.
    """

    by_split: dict[str, list[data_mod.Sample]]
    skipped: list[dict[str, str]]
    sampler: data_mod.ShuffleBufferSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]


def build_data(spec: TaskSpec, cfg: TrainConfig, task_dir: Path, sources_root: Path, ddp: _Distributed, device: torch.device,
               args: argparse.Namespace) -> _Data:
    """Read and pre-scan the manifest (:func:`_prepare_data`), then build the datasets and loaders."""
    cpu = os.cpu_count() or 1
    num_workers = args.num_workers if args.num_workers is not None else max(0, min(_MAX_DEFAULT_WORKERS, cpu // ddp.world_size - 1))
    if default_decoder() == "nvdec" and num_workers:
        # CUDA cannot be used in forked loader workers; NVDEC decodes in this process, into GPU memory
        log.info("PYTRAIN_DECODER=nvdec: clips are decoded on the GPU in the training process; no loader workers (asked for %d)", num_workers)
        num_workers = 0
    by_split, skipped = _prepare_data(spec, cfg, task_dir, sources_root, ddp, processes=max(1, num_workers))
    log.info("clips: %s; skipped %d; device %s; world size %d; %d loader workers",
             {k: len(v) for k, v in by_split.items()}, len(skipped), device, ddp.world_size, num_workers)

    by_split = {split: data_mod.with_proxies(samples, sources_root, spec.height, spec.width) for split, samples in by_split.items()}
    cache = open_cache(cfg, task_dir, args.cache_dir)
    size = (spec.num_frames, spec.height, spec.width)
    sampling = data_mod.task_sampling(spec)
    augment = TrainPreset(scale=(cfg.crop_scale_min, 1.0), hflip=cfg.hflip) if cfg.augment else None
    train_set = data_mod.ClipDataset(by_split["train"], *size, train=True, seed=spec.seed, augment=augment, cache=cache,
                                     cache_pool=cfg.cache_pool_factor * spec.num_frames, sampling=sampling)
    sampler = data_mod.ShuffleBufferSampler(len(train_set), spec.shuffle_size, seed=spec.seed, rank=ddp.rank, world_size=ddp.world_size)
    # a worker decodes a whole batch before the loader sees it: allow a batch's worth of files
    timeout = max(_LOADER_TIMEOUT_FLOOR_S, cfg.decode_timeout_s * spec.batch_size)
    # a ragged last batch is dropped (a batch of one breaks BatchNorm), unless it is the only one
    drop_last = len(sampler) > spec.batch_size
    train_loader = _loader(train_set, batch_size=spec.batch_size, sampler=sampler, num_workers=num_workers, device=device,
                           timeout=timeout, seed=spec.seed, drop_last=drop_last)
    eval_loaders = {
        # evaluation keeps no activations for a backward pass, so twice the clips fit in memory;
        # one (persistent) worker per split bounds the processes the three loaders keep alive
        # (a video's test_clips views count as clips)
        split: _loader(data_mod.ClipDataset(by_split[split], *size, cache=cache, sampling=sampling),
                       batch_size=max(1, 2 * spec.batch_size // sampling.test_clips),
                       num_workers=min(num_workers, 1), device=device, timeout=timeout, seed=spec.seed)
        for split in ("train", "val", "test")
    }
    return _Data(by_split, skipped, sampler, train_loader, eval_loaders)


def cache_folder(cfg: TrainConfig, task_dir: Path, cache_dir: str | None) -> Path | None:
    """Where decoded clips are cached: ``None`` when the task's options turn the cache off
    (``{"cache": false}``); else ``cache_dir`` (``--cache-dir``, env ``PYTRAIN_CLIP_CACHE_DIR``: the
    host's shared cache, which the runners set from the settings); else ``<task_dir>/clip_cache``
    (a training process started by hand: the cache is the task's own).
    """
    if not cfg.cache:
        return None
    return Path(cache_dir) if cache_dir else Path(task_dir) / CLIP_CACHE


def open_cache(cfg: TrainConfig, task_dir: Path, cache_dir: str | None) -> data_mod.ClipCache | None:
    """The clip cache of :func:`cache_folder`, capped at ``PYTRAIN_CLIP_CACHE_GB``, or ``None``; logged.

    Raises:
        ConfigurationError: ``PYTRAIN_CLIP_CACHE_GB`` is not a positive number.
    """
    folder = cache_folder(cfg, task_dir, cache_dir)
    if folder is None:
        log.info("clip cache: off (task option cache=false): every clip is decoded every epoch")
        return None
    try:
        cap = cache_bytes_from_env()
    except ValueError as exc:
        raise ConfigurationError(str(exc), hint=f"e.g. {CACHE_GB_ENV}=50, or unset it") from None
    log.info("clip cache: %s (cap %.1f GB)", folder, cap / 1e9)
    return data_mod.ClipCache(folder, max_bytes=cap)


def build_model_and_optimizer(spec: TaskSpec, cfg: TrainConfig, device: torch.device, ddp: _Distributed, steps_per_epoch: int,
                              class_counts: list[int] | None = None):
    """The model on ``device``, the model to step (DDP-wrapped under ``torchrun``), the loss, the
    AdamW optimiser and its warm-up + cosine schedule (stepped once per batch).

    ``class_counts`` (training clips per class) weigh the loss when ``cfg.class_weights`` is
    ``balanced``.

    Returns:
        ``(model, train_model, criterion, optimizer, scheduler)``.
    """
    model = build_model(spec.architecture, len(spec.class_list), spec.num_frames, spec.height, spec.width,
                        pretrained=spec.pretrained, dropout=cfg.dropout, temporal_head=cfg.temporal_head)
    model.to(device)
    if device.type == "cuda" and ARCHITECTURES[spec.architecture].family != "frames":  # 3D convolutions only
        model.preprocess.channels_last_3d = True
        model.to(memory_format=torch.channels_last_3d)
    train_model: nn.Module = model
    if ddp.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    weight = None
    if cfg.class_weights == "balanced" and class_counts:
        weight = torch.tensor(balanced_class_weights(class_counts), dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # no weight decay on norms and biases
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.learning_rate)
    warmup_steps = max(1, round(cfg.warmup_epochs * steps_per_epoch))  # at least 1: the factor divides by it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, spec.epochs * steps_per_epoch, cfg.min_lr_ratio))
    return model, train_model, criterion, optimizer, scheduler


# ---------------------------------------------------------------------------------------------
# the loop: early stopping, resume, one epoch
# ---------------------------------------------------------------------------------------------


@dataclass
class EarlyStopping:
    """Early stopping and the choice of the best checkpoint, both on one monitored loss.

    Attributes:
        monitor: the loss followed: ``"val_loss"``, or ``"train_loss"`` when the task has no
            validation clips.
        patience: stop after this many epochs in a row without a lower ``monitor``.
        best: the lowest ``monitor`` so far (``inf`` before the first epoch).
        best_epoch: the epoch that reached ``best`` (0 before the first epoch).
        bad_epochs: epochs since ``best_epoch``.
        stopped: ``patience`` ran out.
    """

    monitor: str
    patience: int
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, epoch: int, value: float) -> bool:
        """Take ``epoch``'s monitored loss; ``True`` when it is a new best (save that checkpoint)."""
        if value < self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience
        return False


@dataclass
class RunState:
    """What the epoch loop carries from one epoch to the next; a checkpoint's ``"state"``.

    Attributes:
        stopping: early stopping and the best epoch.
        epoch: epochs done (the next one is ``epoch + 1``).
        history: one row per epoch: the epoch record's figures (``metrics.json``'s ``history``).
    """

    stopping: EarlyStopping
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (loadable without this class)."""
        return {"epoch": self.epoch, "history": self.history, "early_stopping": asdict(self.stopping)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], monitor: str, patience: int) -> "RunState":
        """Read a checkpoint's ``"state"``; ``monitor`` and ``patience`` serve checkpoints written
        before :class:`EarlyStopping` existed (their ``best_val_loss`` was the monitored loss)."""
        if "early_stopping" in data:
            stopping = EarlyStopping(**data["early_stopping"])
        else:
            stopping = EarlyStopping(monitor, patience, data["best_val_loss"], data["best_epoch"], data["bad_epochs"], data["stopped_early"])
        return cls(stopping, data["epoch"], data["history"])


@dataclass
class _Run:
    """What :func:`main` builds before the epoch loop, for the loop and :func:`_finish`.

    ``model`` is the bare model (checkpoints, evaluation, export); ``train_model`` is what the
    optimiser steps through (``model`` itself, or its DDP wrapper under ``torchrun``).
    """

    spec: TaskSpec
    cfg: TrainConfig
    task_dir: Path
    device: torch.device
    ddp: _Distributed
    progress: ProgressLog
    data: _Data
    model: nn.Module
    train_model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    wall_start: float  # time.perf_counter() when main() began

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What the run is (:func:`pytrain.training.checkpoints.run_fingerprint`); every checkpoint carries it."""
        return run_fingerprint(self.spec, self.cfg, self.task_dir)

    def checkpoint(self, state: RunState) -> dict[str, Any]:
        """Everything a resume needs: one dict, as torchvision's references save it.

        ``cuda_rng`` is the CUDA generator of this rank's device (dropout on CUDA draws from it,
        not from the CPU generator ``rng``); ``None`` on the CPU. ``fingerprint`` says which run
        the checkpoint belongs to (:mod:`pytrain.training.checkpoints`).
        """
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "model": self.model.state_dict(), "model_args": dict(self.model.model_args), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "state": state.to_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng, "task": self.spec.to_dict(), "train_config": asdict(self.cfg), "torch_version": torch.__version__,
            "fingerprint": self.fingerprint,
        }


def resume(run: _Run) -> RunState:
    """Load the run's checkpoint into the model, optimiser, scheduler and RNG when there is one.

    ``checkpoint_last.pt``, else ``checkpoint_prev.pt`` when the last one is missing or damaged,
    and only if its fingerprint is this run's (:func:`pytrain.training.checkpoints.find_resumable`).
    A checkpoint of another run (another task row, classes, manifest, option...) is not loaded:
    the run starts at epoch 1, the changed fields are logged, and rank 0 moves the old run's files
    into ``stale-<time>/`` (:func:`pytrain.training.checkpoints.move_aside`).

    Returns:
        The loop state to continue from (a fresh one when starting over).

    Raises:
        TrainingError: the checkpoint's fingerprint matches but its model arguments do not (a bug).
        CheckpointReadError: a checkpoint cannot be read (I/O, permission, memory); nothing is moved.
    """
    monitor = "val_loss" if run.data.by_split["val"] else "train_loss"
    if monitor == "train_loss":
        log.warning("no val clips: early stopping and the best checkpoint follow the training loss")
    found = find_resumable(run.task_dir, run.fingerprint)
    if run.ddp.world_size > 1:
        dist.barrier()  # every rank has read the checkpoint before rank 0 moves files
    if run.ddp.main:
        moved = move_aside(run.task_dir, found)
        for reason in found.stale_reasons:
            log.warning("starting over at epoch 1: %s", reason)
        if moved is not None:
            log.warning("moved the files that do not belong to this run into %s", moved)
    checkpoint, last_path = found.checkpoint, found.path
    if checkpoint is None:
        return RunState(EarlyStopping(monitor, run.cfg.patience))
    model_args = dict(run.model.model_args)
    if checkpoint.get("model_args") != model_args:
        raise TrainingError(
            f"{last_path} was written for another model ({checkpoint.get('model_args')}), not {model_args}",
            hint="delete the task folder's checkpoints to start over",
        )
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    if run.device.type == "cuda" and checkpoint.get("cuda_rng") is not None:  # absent in CPU and older checkpoints
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], run.device)
    state = RunState.from_dict(checkpoint["state"], monitor, run.cfg.patience)
    log.info("resuming from %s after epoch %d (early stopping on %s)", last_path, state.epoch, state.stopping.monitor)
    return state


def run_epoch(run: _Run, state: RunState) -> None:
    """Train one epoch, validate, update early stopping, save the checkpoints (rank 0) and
    append the epoch record to ``progress.jsonl``; ``state`` is updated in place.

    Raises:
        TrainingError: the training loss is not finite (diverged).
    """
    spec, ddp, epoch = run.spec, run.ddp, state.epoch + 1
    run.data.sampler.set_epoch(epoch)
    tr = train_one_epoch(run.train_model, run.criterion, run.optimizer, run.scheduler, run.data.train_loader, run.device,
                         grad_clip=run.cfg.grad_clip, desc=f"epoch {epoch}/{spec.epochs}", show_progress=ddp.main)
    if not math.isfinite(tr["loss"]):
        raise TrainingError(f"the training loss became {tr['loss']} in epoch {epoch}", hint="lower learning_rate (or check the clips)")
    if ddp.world_size > 1:
        # BatchNorm running statistics are per rank: give every rank rank 0's, the model rank 0
        # validates and checkpoints
        for buffer in run.model.buffers():
            dist.broadcast(buffer, 0)
    va = None
    if run.data.by_split["val"] and ddp.main:  # once, on rank 0, not once per rank: the weights are the same
        va = evaluate(run.model, run.criterion, run.data.eval_loaders["val"], run.device, desc="val", show_progress=True)
        log.info("validated %d clips on rank %d of %d", len(va["labels"]), ddp.rank, ddp.world_size)
    if ddp.world_size > 1:  # rank 0's val loss and accuracy: every rank takes the same early-stopping decision
        shared = [None if va is None else {"loss": va["loss"], "accuracy": va["accuracy"]}]
        dist.broadcast_object_list(shared, src=0)
        va = shared[0]
    row = {
        "epoch": epoch, "epochs": spec.epochs,
        "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
        "val_loss": va["loss"] if va else None, "val_accuracy": va["accuracy"] if va else None,
        "clips_per_second": tr["clips_per_second"], "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": tr["seconds"], "data_wait_seconds": tr["data_wait_seconds"],
        **{key: tr[key] for key in ("gpu_memory_peak_bytes", "gpu_utilization") if key in tr},
    }
    state.history.append(row)
    state.epoch = epoch
    improved = state.stopping.update(epoch, row[state.stopping.monitor])
    if ddp.main:
        checkpoint = run.checkpoint(state)
        if improved:
            save_checkpoint(checkpoint, run.task_dir / CHECKPOINT_BEST)
        save_last(checkpoint, run.task_dir)  # last (the one it replaces becomes prev): a crash before this line redoes the epoch
        # from_dict: without val clips, val_loss/val_accuracy stay in the line as null, as they always were
        record = ProgressRecord.from_dict({"event": "epoch", **row})
        run.progress.write(record)
        log.info("%s%s", format_progress(record), ", early stop" if state.stopping.stopped else "")
        hint = data_wait_hint(record)
        if hint is not None:
            log.warning("%s", hint)
    if ddp.world_size > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# finishing: the best checkpoint's evaluation, export, plots and metrics
# ---------------------------------------------------------------------------------------------


def _evaluate_splits(run: _Run) -> dict[str, dict[str, Any]]:
    """``{split: {"loss", **classification_report}}`` of the loaded model, for every non-empty split."""
    reports = {}
    for split in ("test", "train", "val"):
        if run.data.by_split[split]:
            ev = evaluate(run.model, run.criterion, run.data.eval_loaders[split], run.device, desc=split)
            reports[split] = {"loss": ev["loss"], **metrics.classification_report(ev["labels"], ev["probabilities"], run.spec.class_list)}
    return reports


def _export(run: _Run, best: dict[str, Any]) -> dict[str, Any]:
    """Export the best checkpoint to ``model.onnx`` + ``tensor_spec.json`` and check its parity."""
    spec = run.spec
    tensor_spec = TensorSpec(class_list=list(spec.class_list), num_frames=spec.num_frames, height=spec.height, width=spec.width,
                             input_name=spec.input_name, output_name=spec.output_name, architecture=spec.architecture,
                             clip_seconds=_clip_seconds(run.data.by_split["train"], spec),
                             sampling=spec.sampling, frame_interval=spec.frame_interval, test_clips=spec.test_clips)
    parity_set = data_mod.ClipDataset(run.data.by_split["test"][:_PARITY_CLIPS], spec.num_frames, spec.height, spec.width)
    parity_clips = np.stack([parity_set[i][0].numpy() for i in range(len(parity_set))])
    return export.export_checkpoint(best, run.task_dir, tensor_spec, parity_clips)


def _clip_seconds(samples: list[data_mod.Sample], spec: TaskSpec) -> float | None:
    """The time a model input spans (seconds, 3 decimals) for the tensor spec: the training clips'
    median duration, or a dense window at their median frame rate (:func:`pytrain.video.clip_seconds`);
    a live stream is sampled at ``num_frames / clip_seconds`` fps (:mod:`pytrain.client.stream`)."""
    from pytrain.video import clip_seconds

    seconds = clip_seconds([s.path for s in samples], spec.num_frames, data_mod.task_sampling(spec))
    return None if seconds is None else round(seconds, 3)


def _finish(run: _Run, state: RunState, placement: list[dict[str, Any]]) -> dict[str, Any]:
    """Best checkpoint -> test/train/val evaluation, ONNX export + parity, plots, ``metrics.json``
    and the ``done`` record (rank 0 only). Returns the metrics. ``placement``
    (:func:`_placement`) becomes ``devices`` (one entry per rank) and ``nodes`` (the distinct
    node names, in rank order)."""
    spec, stopping, by_split = run.spec, state.stopping, run.data.by_split
    best = torch.load(run.task_dir / CHECKPOINT_BEST, map_location="cpu", weights_only=False)
    run.model.load_state_dict(best["model"])
    reports = _evaluate_splits(run)
    export_report = _export(run, best)
    plots.plot_history(state.history, run.task_dir / PLOTS[0])
    for split, name in (("train", PLOTS[1]), ("test", PLOTS[2])):
        plots.plot_confusion(reports[split]["confusion_matrix"], spec.class_list, run.task_dir / name,
                             f"{split} confusion (best epoch {stopping.best_epoch})")
    speeds = [h["clips_per_second"] for h in state.history]
    result = MetricsRecord(
        task_id=spec.task_id, model_name=spec.model_name, architecture=spec.architecture, class_list=list(spec.class_list),
        epochs_run=state.epoch, best_epoch=stopping.best_epoch, stopped_early=stopping.stopped,
        monitored=stopping.monitor, best_loss=stopping.best, early_stopping=asdict(stopping),
        test_accuracy=reports["test"]["accuracy"], top_k=reports["test"]["top_k"],
        history=state.history, splits=reports,
        confusion_matrices={split: reports[split]["confusion_matrix"] for split in ("train", "test")},
        skipped=run.data.skipped, clip_counts={k: len(v) for k, v in by_split.items()},
        wall_time_s=time.perf_counter() - run.wall_start,
        train_clips_per_second=float(np.mean(speeds)) if speeds else None,
        device=str(run.device), world_size=run.ddp.world_size, torch_version=torch.__version__,
        nodes=list(dict.fromkeys(entry["node"] for entry in placement)), devices=placement,
        export=export_report, train_config=asdict(run.cfg), task=spec.to_dict(),
        null_keys=frozenset() if speeds else frozenset({"train_clips_per_second"}),
    )
    write_metrics(run.task_dir, result)
    run.progress.write(ProgressRecord(event="done", test_accuracy=result.test_accuracy, top_k=result.top_k,
                                      epochs_run=state.epoch, best_epoch=stopping.best_epoch))
    log.info("done: test accuracy %.3f, model %s", result.test_accuracy, run.task_dir / MODEL_ONNX)
    return result.to_dict()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def _load_task(args: argparse.Namespace) -> tuple[Path, TaskSpec, TrainConfig, Path]:
    """``(task_dir, spec, cfg, sources_root)`` from the arguments and ``task.json``.

    Raises:
        ConfigurationError: ``task.json`` is missing or invalid, or the sources root is not a folder.
    """
    task_dir = Path(args.task_dir).resolve()
    spec = TaskSpec.load(task_dir)
    cfg = TrainConfig.from_options(spec.extra)
    root_arg = args.sources_root or spec.sources_root
    if not root_arg or not Path(root_arg).is_dir():
        raise ConfigurationError(f"sources root {root_arg!r} is not a folder", hint="pass --sources-root (or set sources_root in task.json)")
    return task_dir, spec, cfg, Path(root_arg)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, export. Returns the metrics written to ``metrics.json`` (``{}`` on ranks
    other than 0).

    Rank 0 holds the task folder's run lock (:class:`~pytrain.training.run_lock.RunLock`) from
    before it writes anything there until it returns, so two runs of one task never write the
    same files.

    Raises:
        RunLockedError: another run holds the task folder (its host and pid are named).
        PyTrainError: any failure with a message for the task row (the entrypoint prints it).
    """
    with ExitStack() as held:
        return _main(args, held)


def _main(args: argparse.Namespace, held: ExitStack) -> dict[str, Any]:
    wall_start = time.perf_counter()
    task_dir, spec, cfg, sources_root = _load_task(args)
    ddp, device = _setup_distributed(args.device)
    placement = _placement(ddp, device)
    if ddp.main:  # only rank 0 writes the task folder (the ranks of one run are one run)
        held.enter_context(RunLock(task_dir))
    torch.manual_seed(spec.seed + ddp.rank)  # same init on every rank comes from DDP's broadcast
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True  # fixed clip size: let cuDNN pick the fastest kernels

    data = build_data(spec, cfg, task_dir, sources_root, ddp, device, args)
    counts = [sum(s.label == k for s in data.by_split["train"]) for k in range(len(spec.class_list))]
    model, train_model, criterion, optimizer, scheduler = build_model_and_optimizer(spec, cfg, device, ddp, len(data.train_loader), counts)
    progress = ProgressLog(task_dir / PROGRESS, enabled=ddp.main)
    run = _Run(spec, cfg, task_dir, device, ddp, progress, data, model, train_model, criterion, optimizer, scheduler, wall_start)

    state = resume(run)
    progress.write(ProgressRecord(
        event="start", epochs=spec.epochs, resumed_from_epoch=state.epoch, device=str(device), world_size=ddp.world_size,
        clips={k: len(v) for k, v in data.by_split.items()}, skipped=len(data.skipped), architecture=spec.architecture,
    ))
    while state.epoch < spec.epochs and not state.stopping.stopped:
        run_epoch(run, state)

    if not ddp.main:
        dist.barrier()  # wait for rank 0's final evaluation and export
        dist.destroy_process_group()
        return {}
    result = _finish(run, state, placement)
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def get_args_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments; every flag also reads the environment variable named in ``--help``."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m pytrain.training",
        description="Train a video classifier from a PyTrain task folder (task.json + manifest.csv) and export model.onnx.",
    )
    parser.add_argument("--task-dir", default=env("PYTRAIN_TASK_DIR"), required=env("PYTRAIN_TASK_DIR") is None,
                        help="task folder with task.json and manifest.csv (env PYTRAIN_TASK_DIR)")
    parser.add_argument("--sources-root", default=env("PYTRAIN_SOURCES_DIR"),
                        help="folder the manifest's paths are relative to; default: task.json's sources_root (env PYTRAIN_SOURCES_DIR)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=env("PYTRAIN_DEVICE", "auto"),
                        help="auto: CUDA when available (env PYTRAIN_DEVICE)")
    parser.add_argument("--num-workers", type=int, default=int(env("PYTRAIN_NUM_WORKERS")) if env("PYTRAIN_NUM_WORKERS") else None,
                        help="DataLoader worker processes; default min(8, cpus per rank - 1) (env PYTRAIN_NUM_WORKERS)")
    parser.add_argument("--cache-dir", default=env(CACHE_DIR_ENV) or env("PYTRAIN_CACHE_DIR"),
                        help="the shared decoded-clip cache (later epochs and tasks on the same clips decode nothing); "
                             "default <task-dir>/clip_cache; task option cache=false turns it off "
                             f"(env {CACHE_DIR_ENV}, or the older PYTRAIN_CACHE_DIR)")
    return parser
