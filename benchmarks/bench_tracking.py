"""Does experiment tracking slow a run? Issue 21's target: within 10 % of a run without it.

Runs the same tiny orchestrated task (the ``tiny`` architecture on real H.264 clips made here, the
local runner, CPU) three times in one process, after one uncounted warm-up run (the first run pays
for cold file caches), on the embedded PostgreSQL (or
``PYTRAIN_DATABASE_URL``), and prints each run's wall time (submit to ``succeeded``) and its ratio
to "off":

1. ``off``: ``PYTRAIN_MLFLOW=off``;
2. ``on``: tracking on a live ``mlflow server`` (a real process, its store database ``mlflow`` on
   the same PostgreSQL, the tests' :class:`fixtures.mlflow.MlflowServer`);
3. ``killed``: tracking on, the server SIGKILLed once the run's first epoch is in the task row;
   after the run the server is started again, the run caught up as ``pytrain tracking sync``
   does (the orchestrator has stopped), and its metric history checked complete, with no
   duplicate step.

Wall time: ``finished_at - created_at`` of the task row (database clock); the seconds until the
orchestrator stopped are printed too (with the server down, closing the tracker may wait out an
HTTP timeout after the task has succeeded).

Run::

    .venv/bin/python benchmarks/bench_tracking.py                  # 5 epochs, 8 clips per class (the docs figures)
    .venv/bin/python benchmarks/bench_tracking.py --epochs 10 --keep
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydantic import SecretStr

from pytrain.db import TaskQueue, get_engine, upgrade
from pytrain.orchestrator import Orchestrator
from pytrain.settings import Settings
from pytrain.sources.registry import sync_sources
from pytrain.sources.synthetic import make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.mlflow import MlflowServer  # noqa: E402  (the tests' real server, not a second copy)

FOLDERS = ("cooking_a", "drinking_b")


def _task(model: str, epochs: int, size: int) -> dict:
    return {"model_name": model, "sources": ["bench"], "classes": ["cooking", "drinking"], "architecture": "tiny",
            "num_frames": 8, "height": size, "width": size, "epochs": epochs, "batch_size": 4, "seed": 0}


def _timed_run(settings: Settings, engine, task: dict, during=None) -> tuple[float, Orchestrator, int]:
    """Seconds from submit (``created_at``) to ``succeeded`` (``finished_at``) of one task run by an
    orchestrator's ``run(exit_when_idle=True)``; ``during(queue, task_id)`` runs in a thread
    meanwhile. Returns (seconds, worker, task id)."""
    queue = TaskQueue(engine)
    worker = Orchestrator(settings, engine=engine)
    started = time.perf_counter()
    task_id = queue.submit(task)
    helper = threading.Thread(target=during, args=(queue, task_id), daemon=True) if during else None
    if helper:
        helper.start()
    assert worker.run(exit_when_idle=True) == 1
    shutdown = time.perf_counter() - started
    row = queue.get(task_id)
    assert row["status"] == "succeeded", row["error"]
    seconds = (row["finished_at"] - row["created_at"]).total_seconds()  # the task's own time, on the database clock
    print(f"  task {task_id} ({task['model_name']}): {seconds:.1f} s to succeeded, {shutdown:.1f} s until the orchestrator stopped")
    return seconds, worker, task_id


def _kill_after_first_epoch(server: MlflowServer):
    def during(queue: TaskQueue, task_id: int) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and ((queue.get(task_id)["progress"] or {}).get("epoch") or 0) < 1:
            time.sleep(0.1)
        server.kill()
    return during


def _check_history(server: MlflowServer, settings: Settings, engine, task_id: int, model: str, epochs: int) -> str:
    """Restart the server, catch the killed run up as ``pytrain tracking sync`` does, and return
    its ``val_accuracy`` steps (must be 1..epochs, once each)."""
    from mlflow import MlflowClient

    from pytrain.tracking.tracker import sync_tasks

    server.start()
    client = MlflowClient(tracking_uri=server.url)
    caught_up = bool(sync_tasks(settings, engine, [task_id], client=client))  # `pytrain tracking sync`: the worker has stopped
    [run] = client.search_runs([client.get_experiment_by_name(model).experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    verdict = "complete, no duplicate" if steps == list(range(1, epochs + 1)) else "WRONG"
    return f"caught up: {caught_up}; val_accuracy steps {steps}: {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clips", type=int, default=8, help="clips per class")
    parser.add_argument("--size", type=int, default=32, help="clip height and width (pixels)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="pytrain-bench-tracking-"))
    try:
        make_dataset(root / "sources" / "bench", folders=FOLDERS, clips_per_folder=args.clips, height=64, width=64)
        settings = Settings(data_dir=root / "data", sources_dir=root / "sources", model_repo_dir=root / "model_repo",
                            model_tasks_dir=root / "model_tasks", results_dir=root / "results", mlflow="off",
                            heartbeat_seconds=1.0, poll_seconds=1.0, triton_grpc_url=None)
        engine = get_engine(settings)
        upgrade(engine)
        sync_sources(settings, engine=engine)
        from pytrain.tracking.store import tracking_uri

        server = MlflowServer(tracking_uri(settings), root / "mlflow-artifacts", root / "mlflow.log")
        (root / "mlflow-artifacts").mkdir()
        server.start()
        tracked = settings.model_copy(update={"mlflow": "on", "mlflow_tracking_uri": SecretStr(server.url)})

        figures: dict[str, float] = {}
        _, worker, _ = _timed_run(settings, engine, _task("bench_warmup", args.epochs, args.size))  # not counted: cold caches
        worker.close()
        figures["off"], worker, _ = _timed_run(settings, engine, _task("bench_off", args.epochs, args.size))
        worker.close()
        figures["on"], worker, _ = _timed_run(tracked, engine, _task("bench_on", args.epochs, args.size))
        worker.tracker.wait(120)
        worker.close()
        figures["killed"], worker, task_id = _timed_run(tracked, engine, _task("bench_killed", args.epochs, args.size),
                                                        during=_kill_after_first_epoch(server))
        worker.close()
        history = _check_history(server, tracked, engine, task_id, "bench_killed", args.epochs)
        server.kill()

        print(f"\n{args.epochs} epochs, {2 * args.clips} clips {args.size}x{args.size}x8, tiny, local runner, CPU")
        for mode, seconds in figures.items():
            print(f"  tracking {mode:7s} {seconds:7.1f} s   {seconds / figures['off']:.3f} x off")
        print(f"  killed run after the restart: {history}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
