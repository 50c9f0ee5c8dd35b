"""The task folder's JSON records: one type, one reader and one writer each (``pytrain.spec``).

``metrics.json`` (:class:`MetricsRecord`), ``scan.json`` (:class:`ScanResult`), the task folder's
``task.json`` (:class:`TaskSpec`) and a version's ``results/<model>/<v>/task_row.json``
(:class:`PublishedTaskRow`, read under its old name ``task.json`` too).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import uuid
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pytrain.errors import ConfigurationError
from pytrain.spec import (
    METRICS, SCAN, TASK_ROW, TASK_ROW_LEGACY, TASK_SPEC, MetricsRecord, PublishedTaskRow, ScanResult, TaskSpec, read_metrics,
    read_published_task_row, read_scan, scan_stamp, write_metrics, write_published_task_row, write_scan,
)

REPO = Path(__file__).resolve().parents[1]

# What training writes (pytrain.training.train._finish), one value of each key's shape.
METRICS_FILE = {
    "task_id": 7, "model_name": "kitchen", "architecture": "tiny", "class_list": ["a", "b"],
    "epochs_run": 3, "best_epoch": 2, "stopped_early": False, "monitored": "val_loss", "best_loss": 0.25,
    "early_stopping": {"monitor": "val_loss", "patience": 5, "best": 0.25, "best_epoch": 2, "bad_epochs": 1, "stopped": False},
    "test_accuracy": 0.75, "top_k": {"top1": 0.75, "top2": 1.0},
    "history": [{"epoch": 1, "train_loss": 0.7, "val_loss": None}],
    "splits": {"test": {"loss": 0.3, "count": 4, "accuracy": 0.75, "per_class": {"a": {"recall": 1.0, "support": 2}}}},
    "confusion_matrices": {"train": [[3, 0], [1, 2]], "test": [[2, 0], [1, 1]]},
    "skipped": [{"path": "d/a_x/bad.mp4", "reason": "cannot decode"}], "clip_counts": {"train": 6, "val": 2, "test": 4},
    "wall_time_s": 12.5, "train_clips_per_second": None, "device": "cpu", "world_size": 1, "torch_version": "2.14.1",
    "nodes": ["host"], "devices": [{"rank": 0, "node": "host", "device": "cpu"}],
    "export": {"exporter": "dynamo", "onnx_bytes": 1234, "parity": {"max_abs_diff": 1e-6}},
    "train_config": {"cache": False}, "task": {"task_id": 7},
}


# --- metrics.json ---------------------------------------------------------------------------


def test_metrics_round_trip_through_the_file_in_the_writers_key_order(tmp_path):
    record = MetricsRecord.from_dict(METRICS_FILE)
    assert record.extra == {} and record.null_keys == {"train_clips_per_second"}
    assert list(MetricsRecord.from_dict(METRICS_FILE).to_dict()) == list(METRICS_FILE)  # every key is a field, in order
    assert write_metrics(tmp_path, record) == tmp_path / METRICS
    assert json.loads((tmp_path / METRICS).read_text()) == METRICS_FILE
    assert read_metrics(tmp_path) == record and record.test_accuracy == 0.75


def test_metrics_fields_are_the_keys_training_writes():
    names = [f.name for f in fields(MetricsRecord) if f.name not in ("extra", "null_keys")]
    assert names == list(METRICS_FILE)


def test_metrics_missing_keys_read_as_none_and_unknown_keys_are_kept(tmp_path):
    (tmp_path / METRICS).write_text(json.dumps({"test_accuracy": 0.5, "gpu_hours": 1.5}))  # a stub training's file
    record = read_metrics(tmp_path)
    assert (record.test_accuracy, record.epochs_run, record.history, record.extra) == (0.5, None, None, {"gpu_hours": 1.5})
    assert record.to_dict() == {"test_accuracy": 0.5, "gpu_hours": 1.5}


def test_metrics_nan_survives_the_round_trip(tmp_path):
    write_metrics(tmp_path, MetricsRecord(test_accuracy=float("nan")))  # a task without test clips
    assert math.isnan(read_metrics(tmp_path).test_accuracy)


def test_no_metrics_file_reads_as_none(tmp_path):
    assert read_metrics(tmp_path) is None


@pytest.mark.parametrize(("text", "match"), [
    ('{"test_accuracy": "high"}', r"metrics.json: metrics key 'test_accuracy' holds 'high', not a float"),
    ('{"epochs_run": true}', r"metrics key 'epochs_run' holds True, not a int"),
    ('[1, 2]', r"a metrics record is a JSON object, not list"),
    ('{"test_accuracy": 0.5', r"metrics.json is not valid JSON"),
])
def test_a_bad_metrics_file_is_refused_naming_the_file(tmp_path, text, match):
    (tmp_path / METRICS).write_text(text)
    with pytest.raises(ConfigurationError, match=match) as raised:
        read_metrics(tmp_path)
    assert str(tmp_path / METRICS) in raised.value.message


# --- results/<model>/<v>/task_row.json ------------------------------------------------------


def test_task_row_round_trips_with_values_json_cannot_hold_as_text(tmp_path):
    uid = uuid.uuid4()
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    row = {"id": 3, "uid": uid, "run_id": 9, "model_name": "kitchen", "status": "running", "created_at": created,
           "options": {"cache": True}, "metrics": {"test_accuracy": 0.5}, "progress": {}, "task_dir": "/t"}
    record = PublishedTaskRow.from_row(row)
    assert (record.id, record.uid, record.run_id, record.model_name) == (3, str(uid), 9, "kitchen")
    assert record.extra == {"created_at": str(created), "options": {"cache": True}}
    assert write_published_task_row(tmp_path, record) == tmp_path / TASK_ROW
    assert json.loads((tmp_path / TASK_ROW).read_text()) == {**row, "uid": str(uid), "created_at": str(created)}
    assert read_published_task_row(tmp_path) == record


def test_a_version_published_before_task_row_json_is_read_from_task_json(tmp_path):
    (tmp_path / TASK_ROW_LEGACY).write_text(json.dumps({"id": 4, "model_name": "old"}))
    assert read_published_task_row(tmp_path).id == 4
    write_published_task_row(tmp_path, PublishedTaskRow(id=5))
    assert read_published_task_row(tmp_path).id == 5  # the new name wins


def test_a_task_row_of_the_wrong_type_is_refused_and_none_without_a_file(tmp_path):
    assert read_published_task_row(tmp_path) is None
    (tmp_path / TASK_ROW).write_text(json.dumps({"id": "3"}))
    with pytest.raises(ConfigurationError, match=r"task_row.json: task row key 'id' holds '3', not a int"):
        read_published_task_row(tmp_path)


# --- scan.json ------------------------------------------------------------------------------


def test_scan_results_round_trip_in_order(tmp_path):
    results = {"d/b_x/2.mp4": ScanResult(scan_stamp(10, 20, 8, 32, 32), "cannot decode"),
               "d/a_x/1.mp4": ScanResult(scan_stamp(11, 21, 8, 32, 32))}
    assert write_scan(tmp_path, results) == tmp_path / SCAN
    assert json.loads((tmp_path / SCAN).read_text()) == {
        "d/b_x/2.mp4": {"stamp": [10, 20, 8, 32, 32], "reason": "cannot decode"},
        "d/a_x/1.mp4": {"stamp": [11, 21, 8, 32, 32], "reason": None},
    }
    assert list(read_scan(tmp_path).items()) == list(results.items())


def test_scan_json_is_a_cache_a_missing_or_broken_file_reads_empty(tmp_path):
    assert read_scan(tmp_path) == {}
    (tmp_path / SCAN).write_text('{"d/a_x/1.mp4": {"stamp"')  # not JSON
    assert read_scan(tmp_path) == {}
    (tmp_path / SCAN).write_text("[]")
    assert read_scan(tmp_path) == {}


def test_a_scan_entry_with_an_unknown_or_missing_key_is_left_out_and_logged(tmp_path, caplog):
    good = {"stamp": [1, 2, 8, 32, 32], "reason": None}
    (tmp_path / SCAN).write_text(json.dumps({
        "good.mp4": good,
        "unknown.mp4": {**good, "frames": 12},
        "missing.mp4": {"stamp": [1, 2, 8, 32, 32]},
        "wrong.mp4": {"stamp": ["1"], "reason": None},
    }))
    with caplog.at_level(logging.WARNING, logger="pytrain.spec"):
        assert read_scan(tmp_path) == {"good.mp4": ScanResult([1, 2, 8, 32, 32])}
    assert {"unknown.mp4", "missing.mp4", "wrong.mp4"} == {r.args[1] for r in caplog.records}


@pytest.mark.parametrize("entry", [{"stamp": [1], "reason": None, "x": 1}, {"reason": None}, {"stamp": [1], "reason": 3}, "ok"])
def test_scan_result_from_dict_refuses_a_bad_entry(entry):
    with pytest.raises(ConfigurationError, match="scan result"):
        ScanResult.from_dict(entry)


# --- task.json (the task folder's TaskSpec) -------------------------------------------------


def test_task_spec_round_trips_through_task_json(tmp_path):
    spec = TaskSpec(task_id=1, model_name="kitchen", class_list=["a", "b"], uid=str(uuid.uuid4()), extra={"cache": True},
                    folders={"a": ["d/a_x"]}, split_counts={"train": {"a": 3}})
    assert spec.save(tmp_path) == tmp_path / TASK_SPEC
    assert TaskSpec.load(tmp_path) == spec == TaskSpec.load(tmp_path / TASK_SPEC)
    assert TaskSpec.from_dict(spec.to_dict(), "inline") == spec


@pytest.mark.parametrize(("data", "match"), [
    ({"task_id": 1, "model_name": "m", "class_list": ["a", "b"], "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"task_id": 1, "model_name": "m"}, r"class_list"),
    (["a"], r"a task spec is a JSON object, not list"),
])
def test_a_task_json_with_an_unknown_or_missing_key_is_refused_naming_the_file(tmp_path, data, match):
    (tmp_path / TASK_SPEC).write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match=match) as raised:
        TaskSpec.load(tmp_path)
    assert str(tmp_path / TASK_SPEC) in raised.value.message


def test_the_records_import_without_pydantic_or_torch():
    """Training runs on bare GPU hosts (no pydantic there): pytrain.spec must import without it."""
    code = ("import sys\n"
            "for name in ('pydantic', 'pydantic_settings', 'torch', 'sqlalchemy'): sys.modules[name] = None\n"
            "import pytrain.spec as s\n"
            "print(s.MetricsRecord.from_dict({'test_accuracy': 1.0}).test_accuracy)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "app"), "PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout.strip()) == (0, "1.0"), done.stderr


def test_a_spec_given_to_the_image_cli_is_read_as_a_task_spec(tmp_path):
    """``pytrain image run --spec`` with task.json fields reads them like task.json (one parser)."""
    from types import SimpleNamespace

    from pytrain.cli.images import _task_from_spec

    settings = SimpleNamespace(model_tasks_dir=tmp_path / "tasks", gpus=None)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\nd/a_x/1.mp4,a,train\n")
    fields_ = {"task_id": 2, "model_name": "m", "class_list": ["a", "b"], "uid": str(uuid.uuid4()), "input_shape": [-1]}
    with pytest.raises(ConfigurationError, match=r"--spec: unknown field\(s\) \['input_shape'\]"):
        _task_from_spec(json.dumps(fields_), manifest, settings)
    del fields_["input_shape"]
    spec, task_dir = _task_from_spec(json.dumps(fields_), manifest, settings)
    assert TaskSpec.load(task_dir) == spec == TaskSpec.from_dict(fields_, "expected")
