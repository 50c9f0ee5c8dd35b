"""Resume only what belongs to the run (issue 9): task folders named by the row's uid, checkpoint
fingerprints, and the previous checkpoint when the last one is truncated.

Real files, real training (architecture ``tiny``, 8 frames of 32x32 from 18 real mp4 clips) on the
CPU, a real PostgreSQL for the database reset. Budgets (measured on the 2-core CI box, loaded):
the shared trained folder ~20 s once; the database-reset test ~45 s (three 1-epoch runs); the
truncated-checkpoint and changed-option tests ~15-20 s each; the unit tests under 1 s.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from fixtures.clips import train_task, write_task
from pytrain.db import TaskQueue
from pytrain.orchestrator.prepare import prepare_task
from pytrain.sources import sync_sources
from pytrain.spec import CHECKPOINT_BEST, CHECKPOINT_LAST, CHECKPOINT_PREV, MODEL_ONNX, PROGRESS, TaskSpec, task_dir_name
from pytrain.task_options import TrainConfig
from pytrain.errors import CheckpointReadError
from pytrain.training.checkpoints import RUN_FILES, find_resumable, fingerprint_changes, move_aside, run_fingerprint, save_last
from training.conftest import SMALL, small_rows

@pytest.fixture(scope="session")
def trained_task(tmp_path_factory: pytest.TempPathFactory, small_sources: Path) -> Path:
    """A task folder trained for 2 epochs (so it holds checkpoint_last.pt and checkpoint_prev.pt).
    Read-only for tests: copy it (:func:`copy_task`)."""
    torch.set_num_threads(1)
    task = tmp_path_factory.mktemp("trained") / "task"
    write_task(task, small_sources, rows=small_rows(small_sources), epochs=2, **SMALL)
    train_task(task)
    return task


def copy_task(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "task"))


def events(task_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (task_dir / PROGRESS).read_text().splitlines()]


def warnings_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# --- the task folder is the row's --------------------------------------------------------------


def test_a_new_task_1_after_a_database_reset_starts_at_epoch_1(settings, engine, small_sources, caplog):
    shutil.copytree(small_sources / "dataset1", settings.sources_dir / "dataset1")
    sync_sources(settings, engine=engine, probe=False)
    queue = TaskQueue(engine)
    row = {"model_name": "kitchen", "sources": ["dataset1"], "epochs": 1, "options": {"hflip": 0.0}, **SMALL}

    def run_new_task(classes: list[str]) -> tuple[Path, TaskSpec]:
        task_id = queue.submit({**row, "classes": classes})
        assert task_id == 1  # ids start again after each reset
        prepared = prepare_task(queue.get(task_id), settings, registered=None)
        return prepared.task_dir, prepared.spec

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE training_tasks RESTART IDENTITY CASCADE"))

    old_dir, old_spec = run_new_task(["cooking", "drinking"])
    train_task(old_dir)
    assert old_dir.name == task_dir_name(1, "kitchen", old_spec.uid) == f"task-1-kitchen-{old_spec.uid.replace('-', '')[:8]}"

    reset()
    new_dir, new_spec = run_new_task(["cooking", "walking"])  # same id, same model, other classes
    assert new_dir != old_dir and new_spec.uid != old_spec.uid
    train_task(new_dir)
    assert [e["resumed_from_epoch"] for e in events(new_dir) if e["event"] == "start"] == [0]
    assert (old_dir / CHECKPOINT_LAST).is_file()  # the old row's folder is left alone

    # the same classes, and the old row's folder found where the new row's belongs (a folder
    # copied by hand, or named as before uids existed): the uid in the fingerprint starts it over
    reset()
    caplog.clear()
    same_id = queue.submit({**row, "classes": ["cooking", "drinking"]})
    uid = queue.get(same_id).uid
    reused = settings.model_tasks_dir / task_dir_name(same_id, "kitchen", uid)
    shutil.copytree(old_dir, reused)
    prepare_task(queue.get(same_id), settings, registered=None)
    with caplog.at_level(logging.WARNING, logger="pytrain.training"):
        train_task(reused)
    assert [e["event"] for e in events(reused)] == ["start", "epoch", "done"]  # only this run's records
    assert events(reused)[0]["resumed_from_epoch"] == 0
    logged = warnings_of(caplog)
    assert f"task.uid: '{old_spec.uid}' -> '{uid}'" in logged, logged
    assert "task.class_list" not in logged and "manifest.csv" not in logged  # nothing but the row changed
    (stale,) = reused.glob("stale-*")
    assert {CHECKPOINT_LAST, CHECKPOINT_BEST, MODEL_ONNX, PROGRESS, "reason.txt"} <= {p.name for p in stale.iterdir()}
    assert torch.load(reused / CHECKPOINT_LAST, weights_only=False)["fingerprint"]["task.uid"] == str(uid)


# --- a truncated last checkpoint ---------------------------------------------------------------


def test_a_truncated_last_checkpoint_resumes_from_the_previous_one(trained_task, tmp_path, caplog):
    task = copy_task(trained_task, tmp_path)
    intact = torch.load(task / CHECKPOINT_LAST, weights_only=False)
    assert torch.load(task / CHECKPOINT_PREV, weights_only=False)["state"]["epoch"] == 1
    data = (task / CHECKPOINT_LAST).read_bytes()
    (task / CHECKPOINT_LAST).write_bytes(data[: len(data) // 2])  # a copy cut short, a bad disk

    with caplog.at_level(logging.INFO, logger="pytrain.training"):
        result = train_task(task)

    assert events(task)[-3]["event"] == "start" and events(task)[-3]["resumed_from_epoch"] == 1
    assert [e["epoch"] for e in events(task)[-2:-1]] == [2]  # epoch 2 again, then done
    assert f"checkpoint {task / CHECKPOINT_LAST} is damaged" in warnings_of(caplog)
    (stale,) = task.glob("stale-*")
    assert (stale / CHECKPOINT_LAST).stat().st_size == len(data) // 2  # kept, out of the rotation
    redone = torch.load(task / CHECKPOINT_LAST, weights_only=False)
    assert redone["state"]["epoch"] == 2 and result["epochs_run"] == 2
    # the CPU run is deterministic: the redone epoch ends with the weights the lost checkpoint held
    assert all(torch.equal(intact["model"][k], redone["model"][k]) for k in intact["model"])
    assert torch.load(task / CHECKPOINT_PREV, weights_only=False)["state"]["epoch"] == 1


def failing_open(monkeypatch: pytest.MonkeyPatch, names: set[str], error: int = errno.EIO) -> None:
    """Make ``open`` of the files called ``names`` fail with ``OSError(error)`` (root ignores
    ``chmod 000``; an I/O error cannot be had on demand)."""
    real_open = builtins.open

    def open_(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name in names:
            raise OSError(error, os.strerror(error), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)


def test_a_checkpoint_that_cannot_be_read_fails_the_run_and_keeps_every_file(trained_task, tmp_path, monkeypatch):
    task = copy_task(trained_task, tmp_path)
    before = {name: (task / name).read_bytes() for name in RUN_FILES if (task / name).is_file()}
    assert {CHECKPOINT_LAST, CHECKPOINT_PREV, PROGRESS} <= set(before)
    failing_open(monkeypatch, {CHECKPOINT_LAST, CHECKPOINT_PREV})  # EIO from a bad disk, ESTALE on NFS...

    with pytest.raises(CheckpointReadError) as raised:
        train_task(task)

    assert raised.value.path == task / CHECKPOINT_LAST
    assert f"cannot read checkpoint {task / CHECKPOINT_LAST} (OSError: [Errno {errno.EIO}] " in str(raised.value)
    assert not list(task.glob("stale-*"))  # not taken for damage: the progress is kept for the retry
    monkeypatch.undo()
    assert {name: (task / name).read_bytes() for name in RUN_FILES if (task / name).is_file()} == before
    train_task(task)  # the retry, once the file system reads again, resumes where the run was
    assert events(task)[-2]["event"] == "start" and events(task)[-2]["resumed_from_epoch"] == 2


# --- a changed option --------------------------------------------------------------------------


def test_a_changed_option_starts_over_with_the_reason_logged(trained_task, tmp_path, caplog):
    task = copy_task(trained_task, tmp_path)
    spec = TaskSpec.load(task)
    replace(spec, extra={**spec.extra, "label_smoothing": 0.0}).save(task)  # the row's options changed (default 0.1)

    with caplog.at_level(logging.WARNING, logger="pytrain.training"):
        result = train_task(task)

    logged = warnings_of(caplog)
    assert "starting over at epoch 1: checkpoint_last.pt belongs to another run: options.label_smoothing: 0.1 -> 0.0" in logged, logged
    assert [e["event"] for e in events(task)] == ["start", "epoch", "epoch", "done"] and events(task)[0]["resumed_from_epoch"] == 0
    assert result["epochs_run"] == 2 and [h["epoch"] for h in result["history"]] == [1, 2]
    (stale,) = task.glob("stale-*")
    assert "options.label_smoothing: 0.1 -> 0.0" in (stale / "reason.txt").read_text()
    # the old run's files are kept there, not deleted
    assert {p.name for p in stale.iterdir()} >= {CHECKPOINT_LAST, CHECKPOINT_PREV, CHECKPOINT_BEST, MODEL_ONNX, PROGRESS, "metrics.json"}
    assert (stale / CHECKPOINT_LAST).read_bytes() == (trained_task / CHECKPOINT_LAST).read_bytes()


# --- the parts, without training (each well under a second) ------------------------------------


def test_save_last_keeps_the_replaced_checkpoint_as_prev_and_resume_falls_back_to_it(tmp_path):
    fingerprint = {"task.seed": 0}
    for epoch in (1, 2, 3):
        save_last({"model": {}, "state": {"epoch": epoch}, "fingerprint": fingerprint}, tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_LAST)["state"]["epoch"] == 3
    assert torch.load(tmp_path / CHECKPOINT_PREV)["state"]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_LAST, CHECKPOINT_PREV]  # no temporary file left

    assert find_resumable(tmp_path, fingerprint).checkpoint["state"]["epoch"] == 3
    (tmp_path / CHECKPOINT_LAST).unlink()  # a crash between the two renames of save_last
    found = find_resumable(tmp_path, fingerprint)
    assert (found.path.name, found.checkpoint["state"]["epoch"], found.stale_reasons) == (CHECKPOINT_PREV, 2, [])
    (tmp_path / CHECKPOINT_PREV).write_bytes(b"PK\x03\x04 cut")  # and the previous one damaged too
    found = find_resumable(tmp_path, fingerprint)
    assert found.checkpoint is None and found.stale_reasons == ["no readable checkpoint: checkpoint_prev.pt"]


def test_a_truncated_checkpoint_is_damaged_and_moved_aside(tmp_path):
    fingerprint = {"task.seed": 0}
    save_last({"model": {"w": torch.zeros(1000)}, "state": {"epoch": 1}, "fingerprint": fingerprint}, tmp_path)
    data = (tmp_path / CHECKPOINT_LAST).read_bytes()
    (tmp_path / CHECKPOINT_LAST).write_bytes(data[:-30])  # torch.load(path) raises OSError(EINVAL) for this one

    found = find_resumable(tmp_path, fingerprint)

    assert (found.checkpoint, found.damaged) == (None, [tmp_path / CHECKPOINT_LAST])
    assert found.stale_reasons == ["no readable checkpoint: checkpoint_last.pt"]
    stale = move_aside(tmp_path, found)
    assert (stale / CHECKPOINT_LAST).read_bytes() == data[:-30] and not (tmp_path / CHECKPOINT_LAST).exists()


@pytest.mark.parametrize("failure", ["EIO", "EACCES", "a directory", "MemoryError"])
def test_a_checkpoint_read_error_is_not_damage_and_names_the_path(tmp_path, monkeypatch, failure):
    fingerprint = {"task.seed": 0}
    for epoch in (1, 2):
        save_last({"model": {}, "state": {"epoch": epoch}, "fingerprint": fingerprint}, tmp_path)
    last = tmp_path / CHECKPOINT_LAST
    if failure == "a directory":  # a real read error, even for root: IsADirectoryError
        last.unlink()
        last.mkdir()
    elif failure == "MemoryError":
        def no_memory(*args, **kwargs):
            raise MemoryError()
        monkeypatch.setattr(torch, "load", no_memory)
    else:
        failing_open(monkeypatch, {CHECKPOINT_LAST}, getattr(errno, failure))

    with pytest.raises(CheckpointReadError) as raised:
        find_resumable(tmp_path, fingerprint)

    assert raised.value.path == last and str(last) in raised.value.message
    expected = {"EIO": OSError, "EACCES": PermissionError, "a directory": IsADirectoryError, "MemoryError": MemoryError}[failure]
    assert type(raised.value.cause) is expected and raised.value.__cause__ is raised.value.cause
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_LAST, CHECKPOINT_PREV]  # nothing moved


def test_the_fingerprint_follows_the_weights_not_paths_or_bookkeeping(tmp_path, small_sources):
    spec = write_task(tmp_path, small_sources, rows=small_rows(small_sources), **SMALL)
    cfg = TrainConfig.from_options(spec.extra)
    base = run_fingerprint(spec, cfg, tmp_path)

    def changes(**fields) -> list[str]:
        extra = fields.pop("extra", None)
        other = replace(spec, **fields, extra={**spec.extra, **(extra or {})})
        return fingerprint_changes(base, run_fingerprint(other, TrainConfig.from_options(other.extra), tmp_path))

    # a container mounts the sources elsewhere; a host with other GPUs may resume; early stopping's
    # patience and the decoder timeout do not change the weights
    assert changes(sources_root="/sources", nodes=2, test_clips=3, model_name="renamed", extra={"patience": 3, "decode_timeout_s": 5.0}) == []
    assert changes(class_list=["cooking", "walking"]) == ["task.class_list: ['cooking', 'drinking', 'walking'] -> ['cooking', 'walking']"]
    assert changes(epochs=7, learning_rate=0.01) == ["task.epochs: 6 -> 7", "task.learning_rate: 0.003 -> 0.01"]
    assert changes(extra={"cache": False}) == []  # the cache changes no frame (the same pool is decoded without it)
    assert changes(extra={"cache_pool_factor": 4}) == ["options.cache_pool_factor: 2 -> 4"]  # the pool the jitter draws from
    with (tmp_path / "manifest.csv").open("a") as handle:
        handle.write("dataset1/walking_dog/clip_000.mp4,walking,val\n")
    (changed,) = fingerprint_changes(base, run_fingerprint(spec, cfg, tmp_path))
    assert changed.startswith("manifest.csv sha256: '")
    assert fingerprint_changes(None, base) == ["the checkpoint has no fingerprint (written before PyTrain recorded them)"]
