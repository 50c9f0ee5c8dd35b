"""Training end to end: learning, outputs, the CLI, bad files, failures and resume."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fixtures.clips import make_bad_files
from fixtures.processes import communicate_or_kill

from pytrain.errors import ConfigurationError
from pytrain.spec import PLOTS, ProgressRecord, TensorSpec, read_metrics
from pytrain.task_options import TrainConfig
from pytrain.training.train import EarlyStopping, RunState, evaluate, main
from pytrain.video import read_clip
from training.conftest import write_task

REPO = Path(__file__).resolve().parents[2]


def _args(task_dir: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(**{"task_dir": str(task_dir), "sources_root": None, "device": "cpu", "num_workers": 0, "cache_dir": None, **kw})


def _events(task_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (task_dir / "progress.jsonl").read_text().splitlines()]


def _cli(task_dir: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "app")}
    cmd = [sys.executable, "-m", "pytrain.training", "--task-dir", str(task_dir), "--device", "cpu", *extra]
    # own process group: a run that outlives its test is killed with all its children (see _wait)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


_wait = communicate_or_kill  # kills the run's whole process group on timeout


def test_tiny_model_learns_the_separable_dataset(tmp_path, synthetic_sources):
    task = tmp_path / "task"
    spec = write_task(task, synthetic_sources, epochs=6)
    result = main(_args(task, cache_dir=str(tmp_path / "cache")))

    assert result["test_accuracy"] >= 0.9
    assert result["top_k"]["top1"] == result["test_accuracy"] and result["top_k"]["top4"] == 1.0
    for name in ("model.onnx", "tensor_spec.json", "metrics.json", "skipped.json", "checkpoint_best.pt", "checkpoint_last.pt", *PLOTS):
        assert (task / name).stat().st_size > 0, name
    assert all((task / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in PLOTS)

    saved = json.loads((task / "metrics.json").read_text())
    assert read_metrics(task).extra == {}  # training writes only the record's keys
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3, 4, 5, 6]
    assert set(saved["splits"]["test"]["per_class"]) == set(spec.class_list)
    assert np.array(saved["confusion_matrices"]["test"]).sum() == 12 and np.array(saved["confusion_matrices"]["train"]).sum() == 30
    assert saved["skipped"] == [] and saved["wall_time_s"] > 0 and saved["train_clips_per_second"] > 0
    assert saved["export"]["parity"]["max_abs_diff"] <= saved["export"]["parity"]["atol"]

    events = _events(task)
    assert [e["event"] for e in events] == ["start"] + ["epoch"] * 6 + ["done"]
    assert {"epoch", "epochs", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "clips_per_second", "lr"} <= set(events[1])
    assert events[-1]["test_accuracy"] == result["test_accuracy"]
    assert all(ProgressRecord.from_dict(e).extra == {} for e in events)  # training writes only the record's keys
    assert saved["monitored"] == saved["early_stopping"]["monitor"] == "val_loss"
    assert saved["best_loss"] == min(h["val_loss"] for h in saved["history"][: saved["best_epoch"]])
    assert any((tmp_path / "cache").rglob("*.clip"))

    # the exported model classifies a real clip like the trained one
    session = ort.InferenceSession(str(task / "model.onnx"), providers=["CPUExecutionProvider"])
    tensor_spec = TensorSpec.load(task)
    clip = sorted((synthetic_sources / "dataset1").glob("drinking_*/*.mp4"))[-1]
    probs = session.run(None, {tensor_spec.input_name: read_clip(clip, 8, 32, 32)[None]})[0]
    assert tensor_spec.class_list[int(probs.argmax())] == "drinking"


def test_rerun_of_a_finished_task_reuses_the_scan_and_reexports(tmp_path, synthetic_sources, monkeypatch):
    import pytrain.training.train as train_mod

    task = tmp_path / "task"
    write_task(task, synthetic_sources, epochs=1)
    main(_args(task))
    scanned: list[list] = []
    real_scan = train_mod.scan_videos
    monkeypatch.setattr(train_mod, "scan_videos", lambda paths, *a, **kw: scanned.append(list(paths)) or real_scan(paths, *a, **kw))
    (task / "model.onnx").unlink()
    again = main(_args(task))
    assert scanned == [[]]  # every file's earlier result still holds
    assert (task / "model.onnx").is_file() and again["epochs_run"] == 1
    assert [e["event"] for e in _events(task)] == ["start", "epoch", "done", "start", "done"]
    assert _events(task)[-2]["resumed_from_epoch"] == 1


def test_without_val_clips_early_stopping_monitors_the_training_loss(tmp_path, synthetic_sources):
    rows = []
    for clip in sorted((synthetic_sources / "dataset1").glob("*/*.mp4")):
        split = "test" if int(clip.stem.split("_")[-1]) >= 6 else "train"
        rows.append((clip.relative_to(synthetic_sources).as_posix(), clip.parent.name.partition("_")[0], split))
    task = tmp_path / "task"
    write_task(task, synthetic_sources, rows=rows, epochs=2)
    result = main(_args(task))

    assert result["monitored"] == result["early_stopping"]["monitor"] == "train_loss"
    assert result["best_loss"] == min(h["train_loss"] for h in result["history"])
    epochs = [e for e in _events(task) if e["event"] == "epoch"]
    assert [(e["val_loss"], e["val_accuracy"]) for e in epochs] == [(None, None)] * 2  # still in the line, as null


def test_early_stopping_stops_after_patience_epochs_without_a_lower_loss():
    stopping = EarlyStopping("val_loss", patience=2)
    assert [stopping.update(epoch, loss) for epoch, loss in enumerate([1.0, 0.8, 0.8, 0.9], start=1)] == [True, True, False, False]
    assert (stopping.best, stopping.best_epoch, stopping.bad_epochs, stopping.stopped) == (0.8, 2, 2, True)


def test_a_checkpoint_state_from_before_early_stopping_existed_still_resumes():
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.9}]
    old = {"epoch": 2, "best_val_loss": 0.9, "best_epoch": 2, "bad_epochs": 0, "stopped_early": False, "history": history}
    state = RunState.from_dict(old, "train_loss", 10)
    assert state == RunState(EarlyStopping("train_loss", 10, best=0.9, best_epoch=2), epoch=2, history=history)
    assert RunState.from_dict(state.to_dict(), "val_loss", 3) == state  # the current format carries its own monitor


def test_evaluation_is_deterministic(tmp_path, synthetic_sources):
    from pytrain.training.data import ClipDataset, Sample
    from pytrain.training.models import build_model

    clips = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[:6]
    loader = torch.utils.data.DataLoader(ClipDataset([Sample(p, p.name, i % 3, "val") for i, p in enumerate(clips)], 8, 32, 32), batch_size=4)
    torch.manual_seed(0)
    model = build_model("tiny", 3, 8, 32, 32)
    first = evaluate(model, torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"), show_progress=False)
    second = evaluate(model, torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"), show_progress=False)
    assert np.array_equal(first["probabilities"], second["probabilities"]) and first["loss"] == second["loss"]


def test_train_step_applies_each_clips_augmentation_box_before_the_model():
    from pytrain.training.train import train_one_epoch
    from pytrain.training.transforms import apply_boxes

    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(1, 2)

        def forward(self, clips):
            seen.append(clips.clone())
            return self.fc(clips.float().mean(dim=(1, 2, 3, 4))[:, None])

    clips = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 16, 16, 1], [2, 4, 8, 10, 0]])
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    result = train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, [(clips, torch.tensor([0, 1]), boxes)],
                             torch.device("cpu"), show_progress=False)
    assert result["clips"] == 2
    assert torch.equal(seen[0], apply_boxes(clips, boxes))
    assert torch.equal(seen[0][0], clips[0].flip(2))


def test_the_time_spent_waiting_for_the_loader_is_measured_apart_from_the_step():
    """data_wait_seconds counts the time next() blocked on the loader (here a loader that sleeps
    before each of its 3 batches), not the model's step; a CPU reports no GPU figures."""
    from pytrain.training.train import train_one_epoch

    class SlowLoader:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def __len__(self) -> int:
            return 3

        def __iter__(self):
            for _ in range(3):
                time.sleep(self.delay)
                yield torch.zeros(2, 2, 8, 8, 3), torch.tensor([0, 1])

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8 * 3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    fast = train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, SlowLoader(0.0), torch.device("cpu"),
                           show_progress=False)
    slow = train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, SlowLoader(0.2), torch.device("cpu"),
                           show_progress=False)
    assert slow["data_wait_seconds"] >= 3 * 0.2  # sleep() never returns early
    assert slow["data_wait_seconds"] <= slow["seconds"]
    assert fast["data_wait_seconds"] < slow["data_wait_seconds"]
    assert not {"gpu_memory_peak_bytes", "gpu_utilization"} & set(slow)


def test_task_extra_settings_are_type_checked():
    assert TrainConfig.from_options({"patience": 3, "label_smoothing": 0}).label_smoothing == 0.0
    with pytest.raises(ConfigurationError, match="patience='3' should be a int"):
        TrainConfig.from_options({"patience": "3"})


def test_cli_trains_with_workers_and_skips_bad_files(tmp_path, synthetic_sources):
    sources = tmp_path / "sources"
    bad = make_bad_files(sources / "dataset1" / "broken")
    for clip in (synthetic_sources / "dataset1").glob("*/*.mp4"):
        (sources / clip.relative_to(synthetic_sources)).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(clip, sources / clip.relative_to(synthetic_sources))
    task = tmp_path / "task"
    write_task(task, synthetic_sources, epochs=2)
    with (task / "manifest.csv").open("a") as handle:
        for name, path in bad.items():
            handle.write(f"{path.relative_to(sources).as_posix()},cooking,{'train' if name != 'text' else 'test'}\n")
    proc = _cli(task, "--sources-root", str(sources), "--num-workers", "1")
    out, err = _wait(proc, 240)
    assert proc.returncode == 0, err[-3000:]

    skipped = json.loads((task / "skipped.json").read_text())
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in skipped) == ["empty.mp4", "notes.mp4", "truncated.mp4"]
    assert all(s["reason"] for s in skipped)
    assert {"path": "dataset1/broken/empty.mp4", "reason": "the file is empty"} in skipped
    assert json.loads((task / "metrics.json").read_text())["skipped"] == skipped
    assert _events(task)[-1]["event"] == "done"


def test_cli_failure_exits_non_zero_with_one_error_line(tmp_path, synthetic_sources):
    task = tmp_path / "task"
    write_task(task, synthetic_sources)
    (task / "manifest.csv").unlink()
    proc = _cli(task)
    _, err = _wait(proc, 120)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: no manifest at ")
    assert not (task / "model.onnx").exists()


@pytest.mark.slow
def test_resume_after_a_killed_run_ends_like_an_uninterrupted_run(tmp_path, synthetic_sources):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    for task in (reference, crashed):
        write_task(task, synthetic_sources, epochs=8, extra={"hflip": 0.5})
    proc = _cli(reference)
    _, err = _wait(proc, 240)
    assert proc.returncode == 0, err[-3000:]

    proc = _cli(crashed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (crashed / "progress.jsonl").exists() and any(e["event"] == "epoch" for e in _events(crashed)):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the crash: the run and its probe/loader children die at once
    proc.communicate(timeout=60)
    done = [e["epoch"] for e in _events(crashed) if e["event"] == "epoch"]
    assert 1 <= done[-1] < 8, "the run was not killed mid-training"

    proc = _cli(crashed)
    _, err = _wait(proc, 240)
    assert proc.returncode == 0, err[-3000:]
    starts = [e for e in _events(crashed) if e["event"] == "start"]
    assert starts[-1]["resumed_from_epoch"] >= 1
    a = torch.load(reference / "checkpoint_last.pt", weights_only=False)
    b = torch.load(crashed / "checkpoint_last.pt", weights_only=False)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in a["state"]["history"]] == [h["train_loss"] for h in b["state"]["history"]]


@pytest.mark.slow
def test_torchrun_data_parallel_on_cpu_keeps_ranks_in_step(tmp_path, synthetic_sources):
    task = tmp_path / "task"
    write_task(task, synthetic_sources, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "app")}
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pytrain.training", "--task-dir", str(task), "--device", "cpu", "--num-workers", "0"]
    proc = subprocess.Popen([sys.executable, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = _wait(proc, 180)
    assert proc.returncode == 0, err[-3000:]
    events = _events(task)
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "done"]  # rank 0 writes alone
    assert events[0]["world_size"] == 2 and events[1]["clips_per_second"] > 0
    assert json.loads((task / "metrics.json").read_text())["world_size"] == 2
