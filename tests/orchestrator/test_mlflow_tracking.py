"""Every orchestrated run is an MLflow run, logged by the worker from the progress record, on a
real ``mlflow server`` (``fixtures.mlflow``) on the test PostgreSQL; a tracking server that dies
during a run never fails it, and its history is caught up without a step logged twice.

The runner is a fake that writes one ``epoch`` progress record per step the test allows (so the
heartbeat sees each epoch), then ``metrics.json`` with a per-class report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from fixtures.processes import orchestrator_env, wait_for
from orchestrator_fakes import FakePublisher, FakeRunner
from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.runners import Outcome, RunResult
from pytrain.serving import free_port

TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny",
        "learning_rate": 0.003}
EPOCHS = 3
METRICS = {"test_accuracy": 0.75, "epochs_run": EPOCHS, "class_list": ["cooking", "drinking"],
           "splits": {"test": {"macro_f1": 0.7, "per_class": {"cooking": {"precision": 1.0, "recall": 0.5, "f1": 0.667},
                                                              "drinking": {"precision": 0.667, "recall": 1.0, "f1": 0.8}}}}}


class EpochRunner(FakeRunner):
    """Writes epoch ``n`` once ``allow`` lets it (a semaphore released per epoch), waits for the
    heartbeat to have seen it, then ends with ``metrics.json``."""

    def __init__(self) -> None:
        super().__init__()
        self.allow = threading.Semaphore(0)
        self.written = threading.Event()

    def run(self, task, cancel, stop=None):
        self.started.set()
        with open(task.task_dir / "progress.jsonl", "a") as progress:
            progress.write(json.dumps({"event": "start", "clips": {"train": 6, "val": 2, "test": 2}, "world_size": 1}) + "\n")
            for epoch in range(1, EPOCHS + 1):
                assert self.allow.acquire(timeout=120), "the test never allowed the epoch"
                progress.write(json.dumps({"event": "epoch", "epoch": epoch, "epochs": EPOCHS, "train_loss": 1.0 / epoch,
                                           "val_accuracy": 0.5 + epoch / 10, "lr": 0.003, "seconds": 0.1}) + "\n")
                progress.flush()
                self.written.set()
        (task.task_dir / "metrics.json").write_text(json.dumps(METRICS))
        return RunResult(Outcome.SUCCEEDED, 0)


def tracked_run(client: MlflowClient, uid):
    """The task's MLflow run (by its uid: each test's database counts task ids from 1 again)."""
    experiment = client.get_experiment_by_name("kitchen")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pytrain.uid` = '{uid}'")
    return runs[0] if runs else None


def epochs_logged(client: MlflowClient, uid) -> list[int]:
    run = tracked_run(client, uid)
    return [] if run is None else sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))


def start_worker(settings, engine, runner) -> tuple[Orchestrator, threading.Thread]:
    """A worker running one task (``run_once``) in a thread."""
    worker = Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher())
    worker.start()
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    return worker, thread


def submit_and_start(settings, engine):
    """Queue TASK and start a worker on it with an :class:`EpochRunner`: ``(queue, task id, uid, runner, worker, thread)``."""
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    runner = EpochRunner()
    worker, thread = start_worker(settings, engine, runner)
    return queue, task_id, queue.get(task_id)["uid"], runner, worker, thread


def test_an_orchestrated_run_is_an_mlflow_run_with_one_point_per_epoch(tracking_settings, engine, synced, mlflow_server):
    queue, task_id, uid, runner, worker, thread = submit_and_start(tracking_settings, engine)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    for epoch in range(1, EPOCHS + 1):  # each epoch appears in MLflow while the run goes on
        runner.allow.release()
        wait_for(lambda: epoch in epochs_logged(client, uid), f"epoch {epoch} in MLflow")
    thread.join(120)
    assert worker.tracker.wait(120)
    worker.close()

    row = queue.get(task_id)
    assert row["status"] == "succeeded", row["error"]
    run = tracked_run(client, uid)
    assert run.info.run_name == f"task-{task_id}-kitchen"
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert run.data.params["learning_rate"] == "0.003"
    assert json.loads(run.data.params["classes"]) == ["cooking", "drinking"]
    assert run.data.params["clips.train"] == "6"
    fingerprint = json.loads((Path(row["task_dir"]) / "dataset_fingerprint.json").read_text())
    assert run.data.params["dataset_fingerprint"] == fingerprint["digest"] and len(fingerprint["digest"]) == 64
    files = fingerprint["files"]  # `synced` only registers the placeholders: no catalog digest, every file by size+mtime
    assert files > 0 and run.data.params["dataset_fingerprint.by_stamp"] == f"{files} of {files}"
    assert run.data.tags["pytrain.run_id"] == str(row["run_id"])
    assert run.data.tags["pytrain.worker"] == "test-worker"
    assert run.data.metrics["test_accuracy"] == 0.75
    assert run.data.metrics["test_recall.cooking"] == 0.5
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "progress.jsonl"}


def test_a_tracking_server_killed_during_a_run_neither_fails_it_nor_duplicates_a_step(tracking_settings, engine, synced, mlflow_server):
    queue, task_id, uid, runner, worker, thread = submit_and_start(tracking_settings, engine)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    runner.allow.release()
    wait_for(lambda: epochs_logged(client, uid) == [1], "epoch 1 in MLflow")

    mlflow_server.kill()
    try:
        runner.allow.release()
        runner.allow.release()
        thread.join(120)
        assert not thread.is_alive()
        row = queue.get(task_id)
        assert row["status"] == "succeeded", row["error"]  # the run never waited on tracking
        wait_for(lambda: worker.tracker.pending == [row["run_id"]], "the run's end pending in the tracker")
    finally:
        mlflow_server.start()
    assert worker.tracker.wait(120)  # the pending end is retried until the server is back
    worker.close()

    run = tracked_run(client, uid)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3]
    assert run.info.status == "FINISHED"


def cli(settings, *args: str, uri: str) -> subprocess.CompletedProcess:
    env = orchestrator_env(settings, "test-worker", lease_seconds=5, heartbeat_seconds=0.2, poll_seconds=0.2,
                           PYTRAIN_MLFLOW="on", PYTRAIN_MLFLOW_TRACKING_URI=uri)
    return subprocess.run([sys.executable, "-m", "pytrain.cli.main", *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_run_that_ended_while_the_server_was_down_is_caught_up_by_pytrain_tracking_sync(
        tracking_settings, engine, synced, mlflow_server):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    uid = queue.get(task_id)["uid"]
    runner = EpochRunner()
    mlflow_server.kill()
    try:
        worker, thread = start_worker(tracking_settings, engine, runner)
        for _ in range(EPOCHS):
            runner.allow.release()
        thread.join(120)
        assert queue.get(task_id)["status"] == "succeeded"
        worker.close()  # the worker stops with the run's end still pending
    finally:
        mlflow_server.start()
    client = MlflowClient(tracking_uri=mlflow_server.url)
    for _ in range(2):  # a second sync logs nothing twice
        result = cli(tracking_settings, "tracking", "sync", str(task_id), uri=mlflow_server.url)
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"task {task_id} run " in result.stdout
    run = tracked_run(client, uid)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == 0.75


def test_pytrain_tracking_ui_serves_mlflow_on_loopback(tracking_settings, mlflow_server, tmp_path):
    port = free_port()
    env = orchestrator_env(tracking_settings, "test-worker", lease_seconds=5, heartbeat_seconds=0.2, poll_seconds=0.2,
                           PYTRAIN_MLFLOW_TRACKING_URI=mlflow_server.backend_uri)
    with open(tmp_path / "ui.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "tracking", "ui", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def page() -> str | None:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    return answer.read().decode()
            except OSError:
                return None

        html = wait_for(page, "the MLflow UI", timeout=180)
        assert "<html" in html.lower() and "mlflow" in html.lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10") as answer:
            assert "experiments" in json.loads(answer.read())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


class PublishableRunner(EpochRunner):
    """An :class:`EpochRunner` that leaves a finished task folder the real publisher accepts."""

    def run(self, task, cancel, stop=None):
        from fixtures.triton import make_task_folder

        for _ in range(EPOCHS):
            self.allow.release()
        result = super().run(task, cancel, stop)
        make_task_folder(task.task_dir, model_name="kitchen", task_id=task.task_id, class_list=["cooking", "drinking"])
        (task.task_dir / "metrics.json").write_text(json.dumps(METRICS))
        return result


def assert_onnx_model_logged(client: MlflowClient, version, tmp_path) -> None:
    """The version's run holds ``model/`` (an MLflow ONNX model, its signature from
    ``tensor_spec.json``: batch axis -1) and the registered version's source is that folder."""
    from mlflow.models import Model

    assert version.source.endswith("/model")
    folder = client.download_artifacts(version.run_id, "model", str(tmp_path))
    mlmodel = Model.load(folder)
    assert "onnx" in mlmodel.flavors
    assert json.loads(mlmodel.signature.inputs.to_json()) == [{"type": "tensor", "name": "time_distributed_input",
                                                   "tensor-spec": {"dtype": "uint8", "shape": [-1, 8, 32, 32, 3]}}]
    assert json.loads(mlmodel.signature.outputs.to_json()) == [{"type": "tensor", "name": "dense",
                                                    "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}}]


def test_published_versions_are_registered_and_alias_served_moves_with_rollback(tracking_settings, engine, synced, mlflow_server,
                                                                                  tmp_path):
    from pytrain.publish import versions

    settings = tracking_settings.model_copy(update={"triton_grpc_url": None})
    queue = TaskQueue(engine)
    uids = [queue.get(queue.submit(TASK))["uid"] for _ in range(2)]
    worker = Orchestrator(settings, engine=engine, runner=PublishableRunner())
    assert worker.run(exit_when_idle=True) == 2
    assert [row.version for row in queue.list()] == [2, 1]
    assert worker.tracker.wait(120)

    client = MlflowClient(tracking_uri=mlflow_server.url)
    registered = {int(v.tags["pytrain.triton_version"]): v for v in client.search_model_versions("name = 'kitchen'")}
    assert sorted(registered) == [1, 2]
    for triton_version, uid in zip((1, 2), uids):
        assert registered[triton_version].tags["pytrain.uid"] == str(uid)
        assert registered[triton_version].run_id == tracked_run(client, uid).info.run_id
    assert client.get_model_version_by_alias("kitchen", "served").version == registered[2].version
    assert_onnx_model_logged(client, registered[2], tmp_path)

    versions.rollback("kitchen", 1, settings=settings)
    assert client.get_model_version_by_alias("kitchen", "served").version == registered[1].version


def test_unpublish_moves_alias_served_to_the_version_triton_serves_next(tracking_settings, engine, synced, mlflow_server):
    from pytrain.publish import versions

    settings = tracking_settings.model_copy(update={"triton_grpc_url": None})
    queue = TaskQueue(engine)
    for _ in range(2):
        queue.submit(TASK)
    worker = Orchestrator(settings, engine=engine, runner=PublishableRunner())
    assert worker.run(exit_when_idle=True) == 2
    assert worker.tracker.wait(120)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    registered = {int(v.tags["pytrain.triton_version"]): v.version for v in client.search_model_versions("name = 'kitchen'")}
    assert client.get_model_version_by_alias("kitchen", "served").version == registered[2]

    versions.unpublish("kitchen", 2, settings=settings)
    assert client.get_model_version_by_alias("kitchen", "served").version == registered[1]


class ResumedRunner(EpochRunner):
    """Its first run writes epoch 1 and is lost by the cluster (re-queued); the re-claimed run
    resumes in the same task folder and writes the other epochs and ``metrics.json``."""

    def run(self, task, cancel, stop=None):
        if not (task.task_dir / "progress.jsonl").exists():
            with open(task.task_dir / "progress.jsonl", "a") as progress:
                progress.write(json.dumps({"event": "epoch", "epoch": 1, "epochs": EPOCHS, "val_accuracy": 0.6}) + "\n")
            return RunResult(Outcome.REQUEUED, None, "node lost")
        for _ in range(EPOCHS):
            self.allow.release()
        return super().run(task, cancel, stop)


def test_a_reclaimed_resume_is_a_new_mlflow_run_linked_to_the_first(tracking_settings, engine, synced, mlflow_server):
    queue = TaskQueue(engine)
    task_id = queue.submit(TASK)
    uid = queue.get(task_id)["uid"]
    worker = Orchestrator(tracking_settings, engine=engine, runner=ResumedRunner(), publisher=FakePublisher())
    assert worker.run(exit_when_idle=True) == 2  # the lost run and its resume
    assert worker.tracker.wait(120)
    worker.close()
    assert queue.get(task_id)["status"] == "succeeded"

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("kitchen")
    first, second = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pytrain.uid` = '{uid}'",
                                       order_by=["attributes.start_time ASC"])
    assert [r.id for r in queue.runs(task_id)] == [int(first.data.tags["pytrain.run_id"]), int(second.data.tags["pytrain.run_id"])]
    assert "pytrain.previous_run" not in first.data.tags
    assert second.data.tags["pytrain.previous_run"] == first.info.run_id
    assert (first.info.status, second.info.status) == ("KILLED", "FINISHED")
    assert [m.step for m in client.get_metric_history(second.info.run_id, "val_accuracy")] == [1, 2, 3]  # the folder's whole curve
