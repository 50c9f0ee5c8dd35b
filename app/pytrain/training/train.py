"""Train a video clip classifier from a task folder, then export and check the ONNX model.

Run (what the runners run)::

    python -m pytrain.training --task-dir model_tasks/task-7-kitchen --sources-root sources
    torchrun --nproc-per-node 4 -m pytrain.training --task-dir ...   # data-parallel on 4 GPUs

Read top to bottom: :func:`train_one_epoch`, :func:`evaluate`, :func:`main`, and the argument
parser at the bottom (torchvision's ``references/video_classification/train.py`` layout).

Hyperparameters beyond :class:`~pytrain.spec.TaskSpec`'s fields come from ``TaskSpec.extra`` and
are typed and defaulted by :class:`TrainConfig`.

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
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from pytrain.errors import ConfigurationError, TrainingError
from pytrain.spec import CHECKPOINT_BEST, CHECKPOINT_LAST, METRICS, PLOTS, PROGRESS, SKIPPED, TaskSpec, TensorSpec, atomic_path, write_json_atomic
from pytrain.training import data as data_mod
from pytrain.training import export, metrics, plots
from pytrain.training.models import ARCHITECTURES, build_model
from pytrain.training.probe import scan_videos
from pytrain.training.transforms import TrainPreset, apply_boxes

log = logging.getLogger("pytrain.training")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings read from ``TaskSpec.extra`` (types checked, unknown keys warned about).

    Attributes:
        weight_decay: AdamW weight decay (decoupled, Loshchilov & Hutter 2019).
        label_smoothing: of the cross-entropy loss.
        warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
        min_lr_ratio: the cosine schedule ends at ``learning_rate * min_lr_ratio``.
        patience: stop after this many epochs without a lower validation loss.
        grad_clip: max gradient L2 norm (0 turns clipping off).
        dropout: before the classifier (``tiny`` and per-frame models).
        temporal_head: ``mean`` or ``gru`` (per-frame models).
        augment: random resized crop + flip in training.
        hflip: probability of a horizontal flip when ``augment``.
        crop_scale_min: smallest crop area fraction when ``augment``.
        cache: keep decoded clips on disk (``<task>/clip_cache`` unless ``--cache-dir``).
        cache_pool_factor: frames kept per cached training clip, as a multiple of ``num_frames``.
        decode_timeout_s: seconds a file may take in the pre-scan (and a DataLoader batch with
            workers) before its decoder is considered hung.
    """

    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    patience: int = 10
    grad_clip: float = 1.0
    dropout: float = 0.2
    temporal_head: str = "mean"
    augment: bool = True
    hflip: float = 0.5
    crop_scale_min: float = 0.6
    cache: bool = False
    cache_pool_factor: int = 2
    decode_timeout_s: float = 60.0

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in extra.items():
            if key not in known:
                log.warning("task extra %r is not a training setting; ignored (known: %s)", key, sorted(known))
                continue
            default = getattr(cls, key)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, type(default)) and not isinstance(value, bool)
            if not ok:
                raise ConfigurationError(f"task extra {key}={value!r} should be a {type(default).__name__}")
            values[key] = value
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# progress and files
# ---------------------------------------------------------------------------------------------


class ProgressLog:
    """Appends one JSON object per line to ``progress.jsonl``, flushed and fsynced (the
    orchestrator's heartbeat reads it while training runs). Silent on ranks other than 0."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, event: str, **fields_: Any) -> None:
        """Append ``{"event": event, "time": <unix seconds>, **fields_}`` as one flushed JSON line."""
        if not self.enabled:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields_}, default=str)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (appears whole)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ---------------------------------------------------------------------------------------------
# the loop
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
        ``{"loss", "accuracy", "clips", "seconds", "clips_per_second"}`` over all ranks under
        ``torchrun`` (mean loss over clips; seconds include waiting for data).
    """
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    for clips, labels, *boxes in _progress_bar(loader, len(loader), desc, show_progress):
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
    seconds = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():  # totals over all ranks
        totals = torch.tensor([total_loss, correct, count], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        total_loss, correct, count = float(totals[0]), int(totals[1]), int(totals[2])
    if count == 0:
        raise TrainingError("the training loader yielded no clips")
    return {"loss": total_loss / count, "accuracy": correct / count, "clips": count, "seconds": seconds, "clips_per_second": count / seconds}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, *, desc: str = "eval", show_progress: bool = True) -> dict[str, Any]:
    """Deterministic evaluation (centre-of-segment clips, no augmentation, eval mode).

    Returns:
        ``{"loss", "accuracy", "labels": (N,) int64, "probabilities": (N, C) float32}``; loss and
        accuracy are NaN for an empty loader.
    """
    model.eval()
    all_labels, all_probs, total_loss = [], [], 0.0
    for clips, labels in _progress_bar(loader, len(loader), desc, show_progress):
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(clips)
        logits = logits.float()
        total_loss += float(criterion(logits, labels)) * labels.shape[0]
        all_labels.append(labels.cpu().numpy())
        all_probs.append(torch.softmax(logits, dim=1).cpu().numpy())
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
# main
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


def _loader(dataset, *, batch_size: int, sampler=None, num_workers: int, device: torch.device, timeout: float, seed: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
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

    Scan results are kept in ``scan.json`` in the task folder, so a resumed run only scans the
    files that changed.
    """
    samples, skipped = data_mod.read_manifest(task_dir, sources_root, spec.class_list)
    skipped_path = task_dir / SKIPPED
    if ddp.main:
        # results of earlier runs of this task (a resume) are kept while the file is unchanged
        scan_path = task_dir / SCAN_RESULTS
        try:
            previous = json.loads(scan_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            previous = {}
        stamps = [_stamp(s.path, spec) for s in samples]
        todo = [i for i, s in enumerate(samples) if previous.get(s.rel_path, {}).get("stamp") != stamps[i]]
        log.info("pre-scanning %d of %d files (timeout %g s per file, %d processes)", len(todo), len(samples), cfg.decode_timeout_s, processes)
        found = scan_videos([samples[i].path for i in todo], spec.num_frames, spec.height, spec.width, timeout=cfg.decode_timeout_s, processes=processes)
        results = {s.rel_path: previous[s.rel_path] for s in samples if s.rel_path in previous}
        for k, i in enumerate(todo):
            results[samples[i].rel_path] = {"stamp": stamps[i], "reason": found.get(k)}
        write_json_atomic(scan_path, results)
        for s in samples:
            reason = results[s.rel_path]["reason"]
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


SCAN_RESULTS = "scan.json"  # {manifest path: {"stamp": [...], "reason": str | None}}


def _stamp(path: Path, spec: TaskSpec) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, spec.num_frames, spec.height, spec.width]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, export. Returns the metrics written to ``metrics.json``.

    Raises:
        PyTrainError: any failure with a message for the task row (the entrypoint prints it).
    """
    wall_start = time.perf_counter()
    task_dir = Path(args.task_dir).resolve()
    spec = TaskSpec.load(task_dir)
    cfg = TrainConfig.from_extra(spec.extra)
    root_arg = args.sources_root or spec.sources_root
    if not root_arg or not Path(root_arg).is_dir():
        raise ConfigurationError(f"sources root {root_arg!r} is not a folder", hint="pass --sources-root (or set sources_root in task.json)")
    sources_root = Path(root_arg)

    ddp, device = _setup_distributed(args.device)
    progress = ProgressLog(task_dir / PROGRESS, enabled=ddp.main)
    torch.manual_seed(spec.seed + ddp.rank)  # same init on every rank comes from DDP's broadcast
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True  # fixed clip size: let cuDNN pick the fastest kernels

    cpu = os.cpu_count() or 1
    num_workers = args.num_workers if args.num_workers is not None else max(0, min(8, cpu // ddp.world_size - 1))
    by_split, skipped = _prepare_data(spec, cfg, task_dir, sources_root, ddp, processes=max(1, num_workers))
    log.info("clips: %s; skipped %d; device %s; world size %d; %d loader workers",
             {k: len(v) for k, v in by_split.items()}, len(skipped), device, ddp.world_size, num_workers)

    cache = None
    if cfg.cache or args.cache_dir:
        cache = data_mod.ClipCache(Path(args.cache_dir) if args.cache_dir else task_dir / "clip_cache")
    size = (spec.num_frames, spec.height, spec.width)
    augment = TrainPreset(scale=(cfg.crop_scale_min, 1.0), hflip=cfg.hflip) if cfg.augment else None
    train_set = data_mod.ClipDataset(by_split["train"], *size, train=True, seed=spec.seed, augment=augment, cache=cache,
                                     cache_pool=cfg.cache_pool_factor * spec.num_frames)
    sampler = data_mod.ShuffleBufferSampler(len(train_set), spec.shuffle_size, seed=spec.seed, rank=ddp.rank, world_size=ddp.world_size)
    per_rank = len(sampler)
    timeout = max(120.0, cfg.decode_timeout_s * spec.batch_size)
    train_loader = _loader(train_set, batch_size=spec.batch_size, sampler=sampler, num_workers=num_workers, device=device,
                           timeout=timeout, seed=spec.seed, drop_last=per_rank > spec.batch_size)
    eval_loaders = {
        split: _loader(data_mod.ClipDataset(by_split[split], *size, cache=cache), batch_size=2 * spec.batch_size,
                       num_workers=min(num_workers, 1), device=device, timeout=timeout, seed=spec.seed)
        for split in ("train", "val", "test")
    }

    model = build_model(spec.architecture, len(spec.class_list), *size, pretrained=spec.pretrained,
                        dropout=cfg.dropout, temporal_head=cfg.temporal_head)
    model_args = dict(model.model_args)
    model.to(device)
    if device.type == "cuda" and ARCHITECTURES[spec.architecture].family != "frames":  # 3D convolutions only
        model.preprocess.channels_last_3d = True
        model.to(memory_format=torch.channels_last_3d)
    train_model: nn.Module = model
    if ddp.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # no weight decay on norms and biases
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.learning_rate)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, round(cfg.warmup_epochs * steps_per_epoch)), spec.epochs * steps_per_epoch, cfg.min_lr_ratio)
    )

    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0, "stopped_early": False, "history": []}
    last_path, best_path = task_dir / CHECKPOINT_LAST, task_dir / CHECKPOINT_BEST
    resumed_from = 0
    if last_path.is_file():
        try:
            checkpoint = torch.load(last_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # written atomically, so this is damage from outside
            raise TrainingError(f"cannot read {last_path}: {exc}", hint="delete it to start the task over") from exc
        if checkpoint.get("model_args") != model_args:
            raise TrainingError(
                f"{last_path} was written for another model ({checkpoint.get('model_args')}), not {model_args}",
                hint="delete the task folder's checkpoints to start over",
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
        torch.set_rng_state(checkpoint["rng"])
        resumed_from = state["epoch"]
        log.info("resuming from %s after epoch %d", last_path, resumed_from)
    progress.write("start", epochs=spec.epochs, resumed_from_epoch=resumed_from, device=str(device), world_size=ddp.world_size,
                   clips={k: len(v) for k, v in by_split.items()}, skipped=len(skipped), architecture=spec.architecture)

    monitor = "val" if by_split["val"] else "train"
    if monitor == "train":
        log.warning("no val clips: early stopping and the best checkpoint follow the training loss")
    show = ddp.main
    while state["epoch"] < spec.epochs and not state["stopped_early"]:
        epoch = state["epoch"] + 1
        sampler.set_epoch(epoch)
        tr = train_one_epoch(train_model, criterion, optimizer, scheduler, train_loader, device, grad_clip=cfg.grad_clip,
                             desc=f"epoch {epoch}/{spec.epochs}", show_progress=show)
        if not math.isfinite(tr["loss"]):
            raise TrainingError(f"the training loss became {tr['loss']} in epoch {epoch}", hint="lower learning_rate (or check the clips)")
        if ddp.world_size > 1:
            # BatchNorm running statistics are per rank: give every rank rank 0's, so all ranks
            # evaluate (and decide early stopping on) the model rank 0 checkpoints
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        va = evaluate(model, criterion, eval_loaders["val"], device, desc="val", show_progress=show) if by_split["val"] else None
        monitored = va["loss"] if va is not None else tr["loss"]
        row = {
            "epoch": epoch, "epochs": spec.epochs,
            "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
            "val_loss": va["loss"] if va else None, "val_accuracy": va["accuracy"] if va else None,
            "clips_per_second": tr["clips_per_second"], "lr": optimizer.param_groups[0]["lr"],
            "seconds": tr["seconds"],
        }
        state["history"].append(row)
        state["epoch"] = epoch
        improved = monitored < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=monitored, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = state["bad_epochs"] >= cfg.patience
        if ddp.main:
            checkpoint = {
                "model": model.state_dict(), "model_args": model_args, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": state, "rng": torch.get_rng_state(),
                "task": spec.to_dict(), "train_config": asdict(cfg), "torch_version": torch.__version__,
            }
            if improved:
                save_checkpoint(checkpoint, best_path)
            save_checkpoint(checkpoint, last_path)  # last: a crash before this line redoes the epoch
            progress.write("epoch", **row)
        if ddp.main:
            log.info("epoch %d/%d: train loss %.4f acc %.3f | val loss %s acc %s | %.1f clips/s | lr %.2e%s",
                     epoch, spec.epochs, tr["loss"], tr["accuracy"], _fmt(row["val_loss"]), _fmt(row["val_accuracy"]),
                     row["clips_per_second"], row["lr"], " | early stop" if state["stopped_early"] else "")
        if ddp.world_size > 1:
            dist.barrier()

    if not ddp.main:
        dist.barrier()  # wait for rank 0's final evaluation and export
        dist.destroy_process_group()
        return {}
    result = _finish(spec, cfg, task_dir, model, criterion, eval_loaders, by_split, skipped, state, device, ddp, wall_start, progress)
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _finish(spec, cfg, task_dir, model, criterion, eval_loaders, by_split, skipped, state, device, ddp, wall_start, progress) -> dict[str, Any]:
    """Best checkpoint -> test/train evaluation, ONNX export + parity, plots, metrics.json."""
    best_path = task_dir / CHECKPOINT_BEST
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])
    reports = {}
    for split in ("test", "train", "val"):
        if not by_split[split]:
            continue
        ev = evaluate(model, criterion, eval_loaders[split], device, desc=split)
        reports[split] = {"loss": ev["loss"], **metrics.classification_report(ev["labels"], ev["probabilities"], spec.class_list)}
    tensor_spec = TensorSpec(class_list=list(spec.class_list), num_frames=spec.num_frames, height=spec.height, width=spec.width,
                             input_name=spec.input_name, output_name=spec.output_name, architecture=spec.architecture)
    parity_set = data_mod.ClipDataset(by_split["test"][:4], spec.num_frames, spec.height, spec.width)
    parity_clips = np.stack([parity_set[i][0].numpy() for i in range(len(parity_set))])
    export_report = export.export_checkpoint(best, task_dir, tensor_spec, parity_clips)

    plots.plot_history(state["history"], task_dir / PLOTS[0])
    for split, name in (("train", PLOTS[1]), ("test", PLOTS[2])):
        plots.plot_confusion(reports[split]["confusion_matrix"], spec.class_list, task_dir / name, f"{split} confusion (best epoch {state['best_epoch']})")
    speeds = [h["clips_per_second"] for h in state["history"]]
    result = {
        "task_id": spec.task_id, "model_name": spec.model_name, "architecture": spec.architecture, "class_list": list(spec.class_list),
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
        "monitored": "val_loss" if by_split["val"] else "train_loss", "best_loss": state["best_val_loss"],
        "test_accuracy": reports["test"]["accuracy"], "top_k": reports["test"]["top_k"],
        "history": state["history"], "splits": reports,
        "confusion_matrices": {split: reports[split]["confusion_matrix"] for split in ("train", "test")},
        "skipped": skipped, "clip_counts": {k: len(v) for k, v in by_split.items()},
        "wall_time_s": time.perf_counter() - wall_start,
        "train_clips_per_second": float(np.mean(speeds)) if speeds else None,
        "device": str(device), "world_size": ddp.world_size, "torch_version": torch.__version__,
        "export": export_report, "train_config": asdict(cfg), "task": spec.to_dict(),
    }
    write_json_atomic(task_dir / METRICS, result)
    progress.write("done", test_accuracy=result["test_accuracy"], top_k=result["top_k"], epochs_run=state["epoch"], best_epoch=state["best_epoch"])
    log.info("done: test accuracy %.3f, model %s", result["test_accuracy"], task_dir / "model.onnx")
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def get_args_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments; every flag also reads the environment variable named in ``--help``."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m pytrain.training",
        description="Train a video classifier from a PyTrain task folder (task.json + manifest.csv) and export model.onnx.",
    )
    parser.add_argument("--task-dir", default=env("PYTRAIN_TASK_DIR"), required=env("PYTRAIN_TASK_DIR") is None,
                        help="task folder with task.json and manifest.csv (env PYTRAIN_TASK_DIR)")
    parser.add_argument("--sources-root", default=env("PYTRAIN_SOURCES_ROOT"),
                        help="folder the manifest's paths are relative to; default: task.json's sources_root (env PYTRAIN_SOURCES_ROOT)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=env("PYTRAIN_DEVICE", "auto"),
                        help="auto: CUDA when available (env PYTRAIN_DEVICE)")
    parser.add_argument("--num-workers", type=int, default=int(env("PYTRAIN_NUM_WORKERS")) if env("PYTRAIN_NUM_WORKERS") else None,
                        help="DataLoader worker processes; default min(8, cpus per rank - 1) (env PYTRAIN_NUM_WORKERS)")
    parser.add_argument("--cache-dir", default=env("PYTRAIN_CACHE_DIR"),
                        help="keep decoded clips here so later epochs do not decode again; default: no cache unless "
                             "task extra cache=true (then <task-dir>/clip_cache) (env PYTRAIN_CACHE_DIR)")
    return parser
