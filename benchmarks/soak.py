"""Soak test: one orchestrator runs N tiny tasks back to back, and none of its resources may grow.

Starts a real ``pytrain orchestrate`` process (the local runner, the embedded PostgreSQL in a
fresh data folder, its own ``TMPDIR``), makes a tiny synthetic mp4 dataset (2 classes x 5 clips of
8 frames at 16x16, :func:`pytrain.sources.synthetic.make_dataset`), and submits ``--tasks`` tiny
CPU trainings (``tiny`` architecture, 4 frames at 16x16, 1 epoch) one at a time. After each task
has ended and the orchestrator has no child left running, it samples the orchestrator process:

- ``rss_mb``: resident memory, MiB;
- ``fds``: open file descriptors; ``threads``: its threads;
- ``children``: its live child processes; ``zombies``: children that ended but were not reaped;
- ``pg_conns``: client connections to the embedded PostgreSQL (``pg_stat_activity``), this
  script's own excluded;
- ``tmp_files``: files and folders under the orchestrator's ``TMPDIR`` (``tempfile.gettempdir()``
  of it and of its runs).

It prints one row per task, then each resource's mean over the first and the last tenth of the
tasks (after ``--warmup`` tasks that fill caches and lazy imports), and exits 1 when a resource's
last-tenth mean is more than ``--max-growth`` (10 %) above its first-tenth mean (a count that
starts at 0: when the last tenth averages 1 or more), when a zombie remains at the end, or when a
task does not succeed.

Run::

    .venv/bin/python benchmarks/soak.py --tasks 10
    nohup .venv/bin/python benchmarks/soak.py --tasks 200 > soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import psutil

from pytrain.db import FINAL_STATUSES, TaskQueue, TaskRequest, get_engine, upgrade
from pytrain.db.embedded import stop_server
from pytrain.settings import Settings
from pytrain.sources import sync_sources
from pytrain.sources.synthetic import make_dataset

DATASET = "soak"
FOLDERS = ("cooking_a", "drinking_b")
#: The smallest training the task columns allow that still splits, trains, exports and publishes.
TASK = {
    "model_name": "soak", "sources": [DATASET], "classes": ["cooking", "drinking"], "architecture": "tiny",
    "num_frames": 4, "height": 32, "width": 32, "epochs": 1, "batch_size": 4, "shuffle_size": 8,
}
#: Folders under the work folder that the orchestrator's settings point at (PYTRAIN_<NAME>_DIR).
FOLDER_SETTINGS = ("data", "sources", "model_repo", "model_tasks", "results")


@dataclass
class Sample:
    """The orchestrator's resources after one task (see the module docstring for each field)."""

    task: int
    seconds: float
    rss_mb: float
    fds: int
    threads: int
    children: int
    zombies: int
    pg_conns: int
    tmp_files: int


#: The resources whose growth fails the soak (all of Sample but the task, its time and zombies).
WATCHED = ("rss_mb", "fds", "threads", "children", "pg_conns", "tmp_files")


def environment(work: Path, tracking: str = "on") -> dict[str, str]:
    """The orchestrator's environment: this one without PYTRAIN_* settings, then the work
    folder's paths, the local runner, a private TMPDIR (so its temporary files can be counted) and
    ``PYTRAIN_MLFLOW=tracking`` (on: MLflow on the embedded server, as users run by default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env.update({f"PYTRAIN_{name.upper()}_DIR": str(work / name) for name in FOLDER_SETTINGS})
    env.update(PYTRAIN_RUNNER="local", PYTRAIN_MLFLOW=tracking, TMPDIR=str(work / "tmp"))
    for name in (*FOLDER_SETTINGS, "tmp"):
        (work / name).mkdir(parents=True, exist_ok=True)
    return env


def prepare(settings: Settings):
    """Make the dataset, start and migrate the embedded database, register the dataset; returns the engine."""
    make_dataset(settings.sources_dir / DATASET, folders=FOLDERS, clips_per_folder=5, height=32, width=32,
                 frame_counts=(8,), fps_choices=(8,))
    engine = get_engine(settings)
    upgrade(engine)
    sync_sources(settings, engine=engine)
    return engine


def count_connections(engine) -> int:
    """Client connections to the server other than this script's (its engine uses one at a time)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )).scalar_one())


def count_files(folder: Path) -> int:
    """Files and folders under ``folder`` (not counting it)."""
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(folder))


def live_children(process: psutil.Process) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """``(running, zombies)`` among the process's descendants."""
    running, zombies = [], []
    for child in process.children(recursive=True):
        try:
            (zombies if child.status() == psutil.STATUS_ZOMBIE else running).append(child)
        except psutil.NoSuchProcess:
            pass
    return running, zombies


def run_task(queue: TaskQueue, number: int, process: psutil.Process, timeout_s: float) -> float:
    """Submit task ``number``, wait until it has ended and the orchestrator has no running child;
    returns the seconds it took.

    Raises:
        SystemExit: the task did not succeed, or did not end within ``timeout_s``.
    """
    started = time.monotonic()
    task_id = queue.submit(TaskRequest.parse({**TASK, "seed": number}).columns())
    deadline = started + timeout_s
    while (status := queue.status(task_id)) not in FINAL_STATUSES:
        if time.monotonic() > deadline or not process.is_running():
            raise SystemExit(f"task {task_id} still {status} after {timeout_s:.0f} s (orchestrator running: {process.is_running()})")
        time.sleep(0.2)
    if status != "succeeded":
        raise SystemExit(f"task {task_id} ended {status}: {queue.get(task_id).error}")
    seconds = time.monotonic() - started
    settle = time.monotonic() + 30  # a run's process group is reaped just after the row is final
    while live_children(process)[0] and time.monotonic() < settle:
        time.sleep(0.1)
    return seconds


def sample(number: int, seconds: float, process: psutil.Process, engine, tmp: Path) -> Sample:
    """The orchestrator's resources now."""
    running, zombies = live_children(process)
    with process.oneshot():
        return Sample(number, round(seconds, 1), round(process.memory_info().rss / 2**20, 1), process.num_fds(),
                      process.num_threads(), len(running), len(zombies), count_connections(engine), count_files(tmp))


def verdict(samples: list[Sample], max_growth: float) -> list[str]:
    """Print the first and last tenth's means of each watched resource; return the failures."""
    tenth = max(1, len(samples) // 10)
    failures = []
    print(f"\n{'resource':<10} {'first 10%':>10} {'last 10%':>10} {'growth':>8}")
    for name in WATCHED:
        first = sum(getattr(s, name) for s in samples[:tenth]) / tenth
        last = sum(getattr(s, name) for s in samples[-tenth:]) / tenth
        grew = last > first * (1 + max_growth) if first > 0 else last >= 1
        growth = f"{(last - first) / first:+.1%}" if first > 0 else ("n/a" if last == 0 else "from 0")
        print(f"{name:<10} {first:>10.2f} {last:>10.2f} {growth:>8}{'  GREW' if grew else ''}")
        if grew:
            failures.append(f"{name} grew from {first:.2f} to {last:.2f}")
    if samples[-1].zombies:
        failures.append(f"{samples[-1].zombies} zombie child(ren) remain")
    return failures


def soak(args: argparse.Namespace, work: Path) -> list[str]:
    """Run the soak in ``work``; returns the failures (empty: passed)."""
    env = environment(work, args.tracking)
    for name in [k for k in os.environ if k.startswith("PYTRAIN_")]:  # this script's settings are the orchestrator's
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if k.startswith("PYTRAIN_")})
    settings = Settings()
    engine = prepare(settings)
    queue = TaskQueue(engine)
    log = (work / "orchestrator.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "orchestrate"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    process = psutil.Process(proc.pid)
    samples: list[Sample] = []
    try:
        print(" ".join(f"{f.name:>9}" for f in fields(Sample)), flush=True)
        for number in range(1, args.warmup + args.tasks + 1):
            seconds = run_task(queue, number, process, args.task_timeout)
            row = sample(number, seconds, process, engine, work / "tmp")
            print(" ".join(f"{v:>9}" for v in astuple(row)) + ("  (warm-up)" if number <= args.warmup else ""), flush=True)
            if number > args.warmup:
                samples.append(row)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        engine.dispose()
        stop_server(settings.data_dir / "postgres")  # this script's handle: the server stops before its folder goes
    failures = verdict(samples, args.max_growth) if samples else ["no task ran"]
    if proc.returncode != 0:
        failures.append(f"the orchestrator exited {proc.returncode} on SIGTERM (log: {work / 'orchestrator.log'})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10, help="tasks to sample (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="tasks run first and not compared (lazy imports, caches, and connection pools that fill "
                             "lazily: MLflow's took 3 tasks to reach its size here)")
    parser.add_argument("--tracking", choices=("on", "off"), default="on", help="experiment tracking (PYTRAIN_MLFLOW) in the orchestrator")
    parser.add_argument("--max-growth", type=float, default=0.10, help="largest allowed growth of a mean, 0.10 = 10 %%")
    parser.add_argument("--task-timeout", type=float, default=600.0, help="seconds one task may take")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the data (default: a new temporary one, removed)")
    args = parser.parse_args()
    if args.tasks < 1:
        parser.error(f"--tasks {args.tasks}: must be >= 1")
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="pytrain-soak-"))
    started = time.monotonic()
    try:
        failures = soak(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.tasks} tasks (+{args.warmup} warm-up) in {time.monotonic() - started:.0f} s")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
