"""The console's Tasks page with 10,000 tasks (issue 23): how long one page takes to load.

Fills a fresh database (the embedded PostgreSQL under a temporary folder, or the server of
``--database-url``) with ``--rows`` tasks of every status (running ones with progress, succeeded
ones with per-class metrics, failed ones with an error), starts the console app with uvicorn on a
free loopback port in this process, and times complete HTTP GETs (query, render, transfer) of:

- the first page (``/tasks``), a status filter (``/tasks?status=succeeded``), a model filter, a
  sweep filter (every 50th task is a trial of sweep ``s1``), and a page deep in the list
  (``/tasks?before=<the middle id>``).

Run::

    .venv/bin/python benchmarks/bench_console.py                 # 10,000 rows, 30 requests each
    .venv/bin/python benchmarks/bench_console.py --rows 200 --requests 3

Target (issue 23): every page under 300 ms (the median; p95 and max printed too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timedelta, timezone
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import insert, text

from pytrain.db import TrainingTask, dispose_engines, get_engine, upgrade
from pytrain.settings import Settings

TARGET_MS = 300.0
STATUSES = ("succeeded", "failed", "queued", "cancelled", "running")
CLASSES = ["cooking", "drinking", "eating", "walking"]


def _row(i: int) -> dict:
    """Task ``i``: a status in turn, with what a task of that status carries."""
    status = STATUSES[i % len(STATUSES)]
    row = {"model_name": f"model{i % 7}", "sources": ["dataset1"], "classes": CLASSES, "epochs": 20, "status": status,
           "progress": {}, "metrics": None, "version": None, "error": None, "worker_id": None,
           "lease_expires_at": None, "options": {"sweep": "s1", "trial": i} if i % 50 == 0 else {}}  # the same keys: one executemany
    if status in ("running", "succeeded"):
        row["progress"] = {"event": "epoch", "epoch": 20 if status == "succeeded" else i % 20 + 1, "epochs": 20,
                           "train_loss": 0.4, "val_accuracy": 0.8, "clips_per_second": 30.0}
    if status == "running":
        row.update(worker_id=f"host{i % 4}-gpu0", lease_expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    if status == "succeeded":
        per_class = {c: {"precision": 0.9, "recall": 0.2 if c == "eating" else 0.9, "f1": 0.85, "support": 40} for c in CLASSES}
        row.update(version=i + 1, metrics={"test_accuracy": 0.8, "splits": {"test": {"per_class": per_class}}})
    if status == "failed":
        row["error"] = f"training failed with exit code 1: RuntimeError: CUDA out of memory (task {i})\nTraceback ..."
    return row


def fill(engine, rows: int) -> list[int]:
    """Insert ``rows`` tasks in batches; their ids."""
    ids: list[int] = []
    with engine.begin() as conn:
        for start in range(0, rows, 1000):
            batch = [_row(i) for i in range(start, min(rows, start + 1000))]
            ids += [r.id for r in conn.execute(insert(TrainingTask).returning(TrainingTask.id), batch)]
        conn.execute(text("ANALYZE training_tasks"))
    return sorted(ids)


def serve(settings: Settings, engine) -> tuple[str, object]:
    """The console app under uvicorn in a thread; ``(base URL, server)``."""
    import uvicorn

    from pytrain.console import create_app
    from pytrain.serving import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("error: the console did not start within 60 s")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def time_page(url: str, requests: int) -> dict:
    """Milliseconds of ``requests`` complete GETs of ``url`` (after one warm-up request)."""
    def get() -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = answer.read()
            assert answer.status == 200 and b"data-task-id" in body, url
        return (time.perf_counter() - start) * 1000

    get()
    times = sorted(get() for _ in range(requests))
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 1),
            "max_ms": round(times[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--database-url", help="an empty database to fill (default: the embedded server in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pytrain-bench-console-") as temp:
        settings = Settings(data_dir=Path(temp) / "data", model_tasks_dir=Path(temp) / "model_tasks", database_url=args.database_url, mlflow="off")
        engine = get_engine(settings)
        upgrade(engine)
        ids = fill(engine, args.rows)
        base, server = serve(settings, engine)
        pages = {"first page": "/tasks", "status=succeeded": "/tasks?status=succeeded", "model=model3": "/tasks?model=model3", "sweep=s1": "/tasks?sweep=s1",
                 "deep page": f"/tasks?before={ids[len(ids) // 2]}"}
        results = {name: time_page(base + path, args.requests) for name, path in pages.items()}
        server.should_exit = True
        dispose_engines()
    print(f"console Tasks page, {args.rows} tasks, {args.requests} requests each (complete HTTP GET: query, render, transfer):")
    for name, figures in results.items():
        print(f"  {name:<18} median {figures['median_ms']:7.1f} ms   p95 {figures['p95_ms']:7.1f} ms   max {figures['max_ms']:7.1f} ms")
    worst = max(f["median_ms"] for f in results.values())
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"{verdict}: the slowest median is {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
    print(json.dumps({"rows": args.rows, "pages": results, "target_ms": TARGET_MS}))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
