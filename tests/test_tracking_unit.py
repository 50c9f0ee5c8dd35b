"""Fast unit tests of experiment tracking's logic (the real MLflow server is in
``tests/orchestrator/test_mlflow_tracking.py``): what a progress record and a metrics record log,
and a tracker whose MLflow calls fail never raises, warns once per minute and keeps the run's end."""

from __future__ import annotations

import logging
from pathlib import Path

from pytrain.outcome import Outcome
from pytrain.settings import Settings
from pytrain.spec import MetricsRecord, ProgressRecord
from pytrain.tracking import RunTracker, TrackedRun
from pytrain.tracking.logged import epoch_metrics, final_metrics, read_epochs


def test_an_epoch_record_logs_its_figures_and_the_epoch_mark_leaving_out_nulls():
    record = ProgressRecord.from_dict({"event": "epoch", "epoch": 3, "train_loss": 0.5, "val_loss": None, "val_accuracy": 0.75,
                                       "seconds": 2, "lr": 0.001, "data_wait_seconds": 0.25})
    assert epoch_metrics(record) == {"train_loss": 0.5, "val_accuracy": 0.75, "epoch_seconds": 2.0, "lr": 0.001,
                                     "data_wait_seconds": 0.25, "epoch": 3.0}


def test_final_metrics_name_classes_safely_and_skip_a_nan_test_accuracy():
    record = MetricsRecord(test_accuracy=float("nan"), top_k={"top1": 0.5}, epochs_run=4,
                           splits={"test": {"per_class": {"a:b (c)": {"precision": 1.0, "recall": 0.5, "f1": 0.667}}}})
    assert final_metrics(record) == {"epochs_run": 4.0, "test_top1": 0.5, "test_precision.a_b _c_": 1.0,
                                     "test_recall.a_b _c_": 0.5, "test_f1.a_b _c_": 0.667}


def test_read_epochs_keeps_the_last_record_of_each_epoch_and_the_split_counts(tmp_path: Path):
    (tmp_path / "progress.jsonl").write_text(
        '{"event": "start", "clips": {"train": 8, "val": 2}}\n{"event": "epoch", "epoch": 1, "val_accuracy": 0.1}\n'
        '{"event": "epoch", "epoch": 2, "val_accuracy": 0.2}\n{"event": "start", "resumed_from_epoch": 1}\n'
        '{"event": "epoch", "epoch": 2, "val_accuracy": 0.3}\n{"event": "epo')
    epochs, params = read_epochs(tmp_path)
    assert [(r.epoch, r.val_accuracy) for r in epochs] == [(1, 0.1), (2, 0.3)]
    assert params == {"clips.train": "8", "clips.val": "2"}


class BrokenClient:
    """Every MLflow call fails, as with a server that is down."""

    calls = 0

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            BrokenClient.calls += 1
            raise ConnectionError("connection refused")
        return fail


def test_a_failing_tracking_store_never_raises_warns_once_and_keeps_the_end_pending(tmp_path: Path, caplog):
    tracker = RunTracker(Settings(data_dir=tmp_path, mlflow="on", poll_seconds=0.2), client=BrokenClient())
    run = TrackedRun(task_id=1, uid="u", run_id=7, model_name="m", worker_id="w", runner="local", columns={}, task_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="pytrain.tracking.tracker"):
        tracker.update(run)
        tracker.finish(run, Outcome.SUCCEEDED)  # queued: returns at once
        assert not tracker.wait(1.0)  # the end stays pending: retried, never dropped
        assert tracker.pending == [7]
        tracker.close()
    assert BrokenClient.calls >= 2
    warnings = [r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()


def test_tracking_off_queues_nothing(tmp_path: Path):
    tracker = RunTracker(Settings(data_dir=tmp_path, mlflow="off"), client=BrokenClient())
    tracker.finish(TrackedRun(1, "u", 7, "m", "w", "local", {}), Outcome.FAILED)
    assert tracker.wait(0) and tracker.pending == []


def test_the_ui_command_passes_the_allowed_hosts_and_never_the_store_uri():
    from pytrain.cli.tracking import ui_command_line

    command = ui_command_line("0.0.0.0", 5000, None, "localhost,mlflow")
    assert command[-2:] == ["--allowed-hosts", "localhost,mlflow"] and "--backend-store-uri" not in command
    assert "--allowed-hosts" not in ui_command_line("127.0.0.1", 5000, "basic-auth")


def test_without_the_onnx_package_the_model_is_not_logged_and_a_warning_says_so(tmp_path: Path, monkeypatch, caplog):
    import sys

    from pytrain.spec import TensorSpec
    from pytrain.tracking.onnx_model import log_onnx_model

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    TensorSpec(class_list=["a", "b"], num_frames=8, height=32, width=32).save(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with caplog.at_level(logging.WARNING, logger="pytrain.tracking.onnx_model"):
        assert log_onnx_model(client=None, run_id="r", task_dir=tmp_path) is False  # type: ignore[arg-type]
    assert "not logged as an MLflow ONNX model" in caplog.text and "install the onnx package" in caplog.text


def test_the_dataset_fingerprint_is_stable_for_the_same_data_and_changes_with_a_file(tmp_path: Path):
    import os

    from pytrain.sources.catalog import dataset_fingerprint
    from pytrain.spec import ManifestRow

    for name, data in (("a.mp4", b"aaaa"), ("b.mp4", b"bbbb")):
        (tmp_path / "ds" / "cls").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / "cls" / name).write_bytes(data)
    rows = [ManifestRow("ds/cls/a.mp4", "cls", "train"), ManifestRow("ds/cls/b.mp4", "cls", "val")]

    def catalogued(name: str, digest: str) -> dict:
        stat = (tmp_path / "ds" / "cls" / name).stat()
        return {"dataset": "ds", "path": f"cls/{name}", "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "content_hash": digest}

    videos = [catalogued("a.mp4", "h-a"), catalogued("b.mp4", "h-b")]
    first = dataset_fingerprint(rows, videos, tmp_path)
    assert (first.files, first.by_stamp) == (2, 0)
    assert dataset_fingerprint(list(reversed(rows)), list(reversed(videos)), tmp_path) == first  # order does not matter
    assert dataset_fingerprint(rows, [videos[0], catalogued("b.mp4", "h-b2")], tmp_path).digest != first.digest  # new content
    assert dataset_fingerprint([rows[0], ManifestRow("ds/cls/b.mp4", "cls", "test")], videos, tmp_path).digest != first.digest

    os.utime(tmp_path / "ds" / "cls" / "b.mp4", ns=(1, 1))  # changed since the catalog saw it: its size+mtime count
    changed = dataset_fingerprint(rows, videos, tmp_path)
    assert changed.digest != first.digest and changed.by_stamp == 1
    assert dataset_fingerprint(rows, [videos[0]], tmp_path) == changed  # not catalogued at all: the same fallback


def test_dataset_params_name_the_digest_and_how_many_files_were_fingerprinted_by_stamp(tmp_path: Path):
    from pytrain.spec import DatasetFingerprint
    from pytrain.tracking.logged import dataset_params

    assert dataset_params(tmp_path) == {}
    DatasetFingerprint("ab12", 120, 3).save(tmp_path)
    assert dataset_params(tmp_path) == {"dataset_fingerprint": "ab12", "dataset_fingerprint.by_stamp": "3 of 120"}


class _Registry:
    """A stand-in for MlflowClient's registry calls (the real server: tests/orchestrator/test_mlflow_tracking.py)."""

    def __init__(self, versions: dict[int, str]) -> None:
        self.versions, self.alias = versions, "1"

    def search_model_versions(self, _filter):
        from types import SimpleNamespace

        return [SimpleNamespace(version=v, tags={"pytrain.triton_version": str(t)}) for t, v in self.versions.items()]

    def set_registered_model_alias(self, _name, _alias, version):
        self.alias = version

    def delete_registered_model_alias(self, _name, _alias):
        self.alias = None


def test_alias_served_is_removed_when_nothing_registered_is_served():
    from pytrain.tracking.registry import move_served

    registry = _Registry({1: "1", 2: "2"})
    assert move_served(registry, "kitchen", [1, 2]) == "2" and registry.alias == "2"  # type: ignore[arg-type]
    assert move_served(registry, "kitchen", [3]) is None and registry.alias is None  # type: ignore[arg-type]  # published untracked
    registry.alias = "2"
    assert move_served(registry, "kitchen", []) is None and registry.alias is None  # type: ignore[arg-type]


def test_the_onnx_model_is_logged_with_the_flavour_pins_without_inferring_requirements(tmp_path: Path, monkeypatch):
    """Inference loads the model in a subprocess and scans every installed distribution: seconds a run,
    and RSS the worker never got back (the 200-task soak grew 12 %); the flavour's pins are enough."""
    import mlflow.onnx
    import mlflow.utils.environment
    import onnx
    from onnx import TensorProto, helper

    from pytrain.spec import TensorSpec
    from pytrain.tracking.onnx_model import MODEL_ARTIFACT, log_onnx_model

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    TensorSpec(class_list=["a", "b"], num_frames=8, height=32, width=32).save(tmp_path)

    inferred = []  # MLflow swallows an error in inference (it falls back to the pins): record the call
    monkeypatch.setattr(mlflow.utils.environment, "_infer_requirements", lambda *args, **kwargs: inferred.append(args) or [])
    logged: dict[str, str] = {}

    class Client:
        def log_artifacts(self, run_id: str, folder: str, artifact_path: str) -> None:
            logged[artifact_path] = (Path(folder) / "requirements.txt").read_text()

    assert log_onnx_model(Client(), "r", tmp_path) is True  # type: ignore[arg-type]
    assert inferred == []
    pins = [line for line in logged[MODEL_ARTIFACT].splitlines() if not line.startswith("mlflow")]
    assert pins == mlflow.onnx.get_default_pip_requirements()
