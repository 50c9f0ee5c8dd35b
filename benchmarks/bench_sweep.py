"""What does pruning save? A 16-trial ASHA sweep on the demo data with one worker, against 16 full runs.

Makes the demo's synthetic dataset (``pytrain demo``'s: 8 classes' folders of real H.264 clips),
creates a sweep over ``learning_rate`` (log-uniform) and ``options.dropout`` with the random
sampler (seeded: the trials' values do not depend on their results, so a second sweep without
pruning trains the very same trials), ASHA on ``val_loss``, ``--parallel 1``, and runs one
orchestrator (local runner, CPU) in this process until the sweep ends. On the embedded PostgreSQL
(or ``PYTRAIN_DATABASE_URL``).

It prints the sweep's wall time, the epochs trained against ``16 x epochs``, and the wall time of
16 full runs of the same trials: extrapolated (each pruned trial as long as the mean completed
trial: the values swept do not change a run's cost), or, with ``--measure``, measured by running
the same 16 trials again with ``--pruner none``.

Run::

    .venv/bin/python benchmarks/bench_sweep.py                 # 16 trials, 4 epochs (the docs figures)
    .venv/bin/python benchmarks/bench_sweep.py --measure       # also run the 16 full trials
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pytrain.db import get_engine, upgrade
from pytrain.orchestrator import Orchestrator
from pytrain.settings import Settings
from pytrain.sources.registry import sync_sources
from pytrain.sources.synthetic import DEMO_FOLDERS, make_dataset
from pytrain.sweeps.params import parse_param
from pytrain.sweeps.store import SweepStore

PARAMS = ("learning_rate=loguniform:1e-4:1e-1", "options.dropout=uniform:0:0.5")


def _sweep(store: SweepStore, settings: Settings, engine, name: str, args: argparse.Namespace, pruner: str) -> tuple[float, list[dict]]:
    """Create the sweep and run one orchestrator until it ends. Returns (wall seconds, ``sweep show``'s trials)."""
    base = {"model_name": name, "sources": ["demo"], "classes": ["cooking", "drinking", "eating", "walking"], "architecture": "tiny",
            "num_frames": 8, "height": args.size, "width": args.size, "epochs": args.epochs, "batch_size": 8, "seed": 0}
    started = time.perf_counter()
    store.create({"name": name, "base": base, "params": [parse_param(p) for p in PARAMS], "trials": args.trials, "parallel": 1,
                  "sampler": "random", "pruner": pruner, "metric": "val_loss", "publish": "best", "seed": 0})
    worker = Orchestrator(settings, engine=engine, worker_id=f"bench-{name}")
    worker.run(exit_when_idle=True)
    seconds = time.perf_counter() - started
    summary = store.summary(name)
    assert summary["status"] == "finished", summary["status"]
    return seconds, summary["trials"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--clips", type=int, default=8, help="clips per folder (the demo's folders)")
    parser.add_argument("--size", type=int, default=32, help="clip height and width (pixels)")
    parser.add_argument("--measure", action="store_true", help="also run the same trials without pruning")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="pytrain-bench-sweep-"))
    try:
        make_dataset(root / "sources" / "demo", folders=DEMO_FOLDERS, clips_per_folder=args.clips, height=64, width=64)
        settings = Settings(data_dir=root / "data", sources_dir=root / "sources", model_repo_dir=root / "model_repo",
                            model_tasks_dir=root / "model_tasks", results_dir=root / "results", mlflow="off",
                            heartbeat_seconds=0.5, poll_seconds=0.5, triton_grpc_url=None)
        engine = get_engine(settings)
        upgrade(engine)
        sync_sources(settings, engine=engine)
        store = SweepStore(engine, settings)
        wall, trials = _sweep(store, settings, engine, "pruned", args, "asha")
        _report(args, wall, trials)
        if args.measure:
            full_wall, full = _sweep(store, settings, engine, "full", args, "none")
            assert [t["params"] for t in full] == [t["params"] for t in trials]  # the very same trials
            print(f"  measured: {args.trials} full runs {full_wall:.1f} s; the sweep took {wall / full_wall:.2f} x that")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _report(args: argparse.Namespace, wall: float, trials: list[dict]) -> None:
    """Print the figures: wall time, epochs trained and saved, and the extrapolated full runs."""
    completed = [t for t in trials if t["status"] == "succeeded"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    epochs = sum(t["epochs_run"] or 0 for t in trials)
    full_trial = statistics.mean(t["wall_seconds"] for t in completed)
    trained = sum(t["wall_seconds"] for t in trials)
    full = full_trial * len(trials)
    print(f"\n{args.trials} trials x {args.epochs} epochs, tiny {args.size}x{args.size}x8, demo data ({len(DEMO_FOLDERS)} folders x "
          f"{args.clips} clips), ASHA on val_loss, one worker, local runner, CPU")
    print(f"  trials: {len(completed)} completed, {len(pruned)} pruned (after epochs {sorted(t['epochs_run'] for t in pruned)})")
    print(f"  epochs trained: {epochs} of {args.trials * args.epochs}: pruning saved {args.trials * args.epochs - epochs}")
    print(f"  sweep wall time: {wall:.1f} s (trials' own runs {trained:.1f} s)")
    first = [t["wall_seconds"] for t in pruned if t["epochs_run"] == 1]
    if first:
        print(f"  a trial pruned after epoch 1: {statistics.mean(first):.1f} s on average (its start and one epoch)")
    print(f"  {len(trials)} full runs, extrapolated ({full_trial:.1f} s per completed trial): {full:.1f} s; "
          f"the sweep took {wall / full:.2f} x that")


if __name__ == "__main__":
    main()
