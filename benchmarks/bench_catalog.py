"""The video catalog's "Done when" figures (issue 13), on N hard-linked real clips.

Prints, on a dataset of ``--files`` mp4 files (hard links of a few real H.264 clips, made here),
with the embedded PostgreSQL (or ``PYTRAIN_DATABASE_URL``):

1. the first task's pre-scan with an empty catalog: training's ``_prepare_data`` decodes every
   file's evaluation clip in ``--jobs`` child processes (seconds, files/s);
2. the first ``sync_sources``: every file probed into the catalog (seconds, files/s);
3. the second task's pre-scan on the same data: the orchestrator's ``prepare_task`` seeds
   ``scan.json`` from the catalog (query + write, timed) and ``_prepare_data`` probes nothing
   (seconds, and the percentage of 1.);
4. ``sync_sources`` after 10 files were touched (rewritten as copies with a new mtime): the files
   probed (must be exactly 10) and the seconds.

Run::

    .venv/bin/python benchmarks/bench_catalog.py                    # 20,000 files, 2 jobs
    .venv/bin/python benchmarks/bench_catalog.py --files 500 --jobs 2

Targets (issue 13): 3. under 5 % of 1.; 4. probes exactly the 10 touched files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pytrain.db import TASK_DEFAULTS, VideoCatalog, get_engine, upgrade
from pytrain.orchestrator.prepare import prepare_task
from pytrain.settings import Settings
from pytrain.sources import sync_sources
from pytrain.sources.synthetic import make_dataset
from pytrain.spec import TaskSpec

FOLDERS = ("cooking_a", "drinking_b")


def _make_sources(root: Path, files: int, size: int) -> Path:
    """``root/bench/<folder>/clip_NNNNN.mp4``: ``files`` hard links of 8 real clips per folder."""
    originals = make_dataset(root / "_originals", folders=FOLDERS, clips_per_folder=8, height=size, width=size)
    for k in range(files):
        folder = FOLDERS[k % len(FOLDERS)]
        target = root / "bench" / folder / f"clip_{k:05d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(originals / folder / f"clip_{k // len(FOLDERS) % 8:03d}.mp4", target)
    return root / "bench"


def _pre_scan(settings: Settings, task_id: int, videos: list[dict], jobs: int) -> float:
    """Seconds of one task's pre-scan: ``prepare_task`` (seeding from ``videos``) + ``_prepare_data``."""
    # imported here, not at the top: spawned probe children re-import this module, and torch would
    # add seconds to each child's start that the CLI's children do not pay
    from pytrain.training import train as train_mod

    task = {**TASK_DEFAULTS, "id": task_id, "uid": uuid.uuid4(), "model_name": f"bench{task_id}", "sources": ["bench"],
            "classes": ["cooking", "drinking"], "num_frames": 8, "height": 32, "width": 32}
    started = time.perf_counter()
    prepared = prepare_task(task, settings, registered=None, videos=videos)
    train_mod._prepare_data(TaskSpec.load(prepared.task_dir), train_mod.TrainConfig.from_options({}), prepared.task_dir,
                            settings.sources_dir, train_mod._Distributed(), processes=jobs)
    return time.perf_counter() - started


def _touch_copies(files: list[Path]) -> None:
    """Rewrite each file as a copy of itself (its own inode) with an mtime 1 s later."""
    for path in files:
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        st = path.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="video files in the dataset")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="probe processes (default: the CPU count)")
    parser.add_argument("--size", type=int, default=64, help="the real clips' frame size in pixels")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_catalog_"))
    try:
        for name in ("sources", "tasks", "data", "repo", "results"):
            (work / name).mkdir()
        settings = Settings(data_dir=work / "data", sources_dir=work / "sources", model_tasks_dir=work / "tasks",
                            model_repo_dir=work / "repo", results_dir=work / "results",
                            **({"database_url": os.environ["PYTRAIN_DATABASE_URL"]} if os.environ.get("PYTRAIN_DATABASE_URL") else {}))
        dataset = _make_sources(work / "sources", args.files, args.size)
        engine = get_engine(settings)
        upgrade(engine)
        print(f"{args.files} files ({args.size}x{args.size} H.264, hard links of 16 clips), {args.jobs} jobs, {os.cpu_count()} CPUs")

        first = _pre_scan(settings, 1, [], args.jobs)
        print(f"1. first task's pre-scan, empty catalog: {first:.1f} s ({args.files / first:.1f} files/s)")

        started = time.perf_counter()
        synced = sync_sources(settings, engine=engine, jobs=args.jobs).catalog["bench"]
        sync_s = time.perf_counter() - started
        print(f"2. first sync: {sync_s:.1f} s ({len(synced.probed) / sync_s:.1f} files/s), {len(synced.probed)} probed")

        started = time.perf_counter()
        videos = VideoCatalog(engine).verdicts(["bench"])  # the orchestrator's catalog query, timed too
        second = (time.perf_counter() - started) + _pre_scan(settings, 2, videos, args.jobs)
        print(f"3. second task's pre-scan, catalog known: {second:.2f} s = {100 * second / first:.2f} % of the first (target < 5 %)")

        touched = sorted(dataset.glob("*/*.mp4"))[:: max(1, args.files // 10)][:10]
        _touch_copies(touched)
        started = time.perf_counter()
        again = sync_sources(settings, engine=engine, jobs=args.jobs).catalog["bench"]
        print(f"4. sync after touching {len(touched)} files: {time.perf_counter() - started:.1f} s, "
              f"{len(again.probed)} probed, {again.unchanged} unchanged (target: exactly {len(touched)} probed)")
        ok = second < 0.05 * first and len(again.probed) == len(touched)
        print(json.dumps({"files": args.files, "jobs": args.jobs, "first_prescan_s": round(first, 2), "first_sync_s": round(sync_s, 2),
                          "second_prescan_s": round(second, 2), "touched": len(touched), "probed_after_touch": len(again.probed)}))
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
