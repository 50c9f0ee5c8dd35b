"""The progress record: progress.jsonl's lines, the fold the task row holds, the one human line."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from pytrain.errors import ConfigurationError
from pytrain.spec import PROGRESS, ProgressRecord, fold_progress, format_progress, read_progress_record

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in fields(ProgressRecord) if f.name not in ("extra", "null_keys")]

EPOCH = {"event": "epoch", "time": 1700000000.5, "epoch": 3, "epochs": 10, "train_loss": 0.5234, "train_accuracy": 0.8125,
         "val_loss": 0.6119, "val_accuracy": 0.75, "clips_per_second": 12.34, "lr": 0.00098, "seconds": 4.5}


def test_a_line_round_trips_with_unknown_keys_and_explicit_nulls_kept():
    line = {**EPOCH, "val_loss": None, "val_accuracy": None, "gpu_memory_mb": 812, "note": {"from": "a newer writer"}}
    record = ProgressRecord.from_json(json.dumps(line))
    assert record.epoch == 3 and record.val_loss is None
    assert record.extra == {"gpu_memory_mb": 812, "note": {"from": "a newer writer"}}
    assert record.to_dict() == line
    assert json.loads(record.to_json()) == line
    assert ProgressRecord.from_dict(record.to_dict()) == record


def test_unset_fields_are_left_out_of_the_line():
    assert ProgressRecord(event="done", test_accuracy=0.5).to_json() == '{"event": "done", "test_accuracy": 0.5}'


@pytest.mark.parametrize(("key", "value"), [("epoch", "3"), ("epoch", 2.5), ("train_loss", True), ("clips", [1]), ("device", 0)])
def test_a_known_key_of_the_wrong_type_is_refused(key, value):
    with pytest.raises(ConfigurationError, match=f"progress key '{key}' holds"):
        ProgressRecord.from_dict({"event": "epoch", key: value})


def test_an_int_is_a_valid_float():
    assert ProgressRecord.from_dict({"train_loss": 1}).train_loss == 1


def test_not_a_json_object_is_refused():
    with pytest.raises(ConfigurationError, match="not JSON"):
        ProgressRecord.from_json('{"event": "epo')
    with pytest.raises(ConfigurationError, match="JSON object, not list"):
        ProgressRecord.from_json("[1]")


def test_fold_keeps_the_last_epoch_and_lays_later_records_over_it(tmp_path):
    lines = [
        {"event": "start", "epochs": 10, "resumed_from_epoch": 0, "device": "cpu", "world_size": 1},
        {**EPOCH, "epoch": 1, "train_loss": 2.0},
        EPOCH,
        {"event": "done", "test_accuracy": 0.7, "top_k": {"top1": 0.7, "top2": 0.9}, "epochs_run": 3, "best_epoch": 2},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / PROGRESS).write_text(text + "not json\n" + '{"epoch": "x"}\n' + '{"event": "do')  # skipped: bad lines, one being written
    latest = read_progress_record(tmp_path)
    assert latest.to_dict() == {**EPOCH, "event": "done", "test_accuracy": 0.7, "top_k": {"top1": 0.7, "top2": 0.9},
                                "epochs_run": 3, "best_epoch": 2}


def test_fold_before_the_first_epoch_is_the_start_record():
    start = ProgressRecord(event="start", epochs=5)
    assert fold_progress([start]) == start
    assert fold_progress([]) is None


def test_no_progress_file_means_no_progress(tmp_path):
    assert read_progress_record(tmp_path) is None
    (tmp_path / PROGRESS).write_text("")
    assert read_progress_record(tmp_path) is None


def test_format_progress_is_one_line_with_the_figures_the_record_has():
    record = ProgressRecord.from_dict({**EPOCH, "test_accuracy": 0.7})
    assert format_progress(record) == ("epoch 3/10, loss 0.523, acc 0.81, val loss 0.612, val acc 0.75, 12.3 clips/s, lr 9.8e-04, "
                                       "test acc 0.70")
    assert format_progress(record, brief=True) == "epoch 3/10, loss 0.523, val acc 0.75, test acc 0.70"
    assert format_progress(ProgressRecord(epoch=2)) == "epoch 2"
    assert format_progress(ProgressRecord(event="start", epochs=5)) == ""


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


@pytest.mark.parametrize(("doc", "heading"), [("docs/user-guide/tasks.md", "## The progress record"), ("docs/ARCHITECTURE.md", "## The progress record")])
def test_the_docs_name_every_field_of_the_progress_record(doc, heading):
    named = set(re.findall(r"`([a-z_]+)`", _section(REPO / doc, heading)))
    assert [name for name in FIELDS if name not in named] == []


def test_a_line_that_is_not_utf8_is_skipped_and_an_unreadable_file_raises(tmp_path):
    good = {"event": "epoch", "epoch": 1, "epochs": 9, "train_loss": 2.0}
    (tmp_path / PROGRESS).write_bytes(json.dumps(good).encode() + b'\n{"event": "epoch", "epoch": 2, "note": "\xff"}\n')
    assert read_progress_record(tmp_path).to_dict() == good
    (tmp_path / PROGRESS).unlink()
    (tmp_path / PROGRESS).mkdir()  # the heartbeat warns and renews the lease (tests/orchestrator/test_heartbeat_progress.py)
    with pytest.raises(IsADirectoryError):
        read_progress_record(tmp_path)
