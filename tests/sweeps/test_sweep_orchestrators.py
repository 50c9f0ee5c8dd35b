"""Sweeps served by real orchestrator processes (``pytrain orchestrate``, the local runner) training
for real on the test clips, on a real PostgreSQL with Optuna's RDB storage.

Budgets (2 cores): the 12-trial sweep ~1.5-2 min (2-epoch runs of the smallest architectures at
32x32, 4 frames; pruned ones stop after epoch 1), the SIGKILL test ~45 s.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from fixtures.processes import Worker, orchestrator_env, wait_for
from pytrain.cli.main import main
from pytrain.db import TaskQueue
from pytrain.publish.versions import existing_versions
from pytrain.spec import read_progress_records
from pytrain.sweeps.store import SweepStore

pytestmark = pytest.mark.slow

BASE = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny", "epochs": 2,
        "num_frames": 4, "height": 32, "width": 32, "batch_size": 4, "options": {"augment": False}}
CLI = [sys.executable, "-c", "import sys; from pytrain.cli.main import main; main(sys.argv[1:])"]


def cli(capsys, *args: str) -> str:
    """Run ``pytrain ARGS`` in this process; its stdout (a non-zero exit fails the test)."""
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    return capsys.readouterr().out


def start_orchestrator(settings, worker_id: str, tmp_path: Path, *, lease_seconds: float) -> Worker:
    env = orchestrator_env(settings, worker_id, lease_seconds=lease_seconds, heartbeat_seconds=0.2, poll_seconds=0.2,
                           OMP_NUM_THREADS="1")
    return Worker([*CLI, "orchestrate", "--runner", "local"], env, tmp_path / f"{worker_id}.log")


def sweep_finished(store: SweepStore, name: str):
    return store.get(name)["status"] == "finished"


def check_show_agrees_with_rows_and_study(shown: dict, store: SweepStore, engine) -> None:
    """``sweep show --json`` against the task rows and Optuna's storage, trial by trial."""
    queue = TaskQueue(engine)
    sweep = store.get(shown["name"])
    study = {t.number: t for t in store.study(sweep).get_trials(deepcopy=False)}
    assert sorted(study) == [t["number"] for t in shown["trials"]]  # no trial created twice, none missing
    for trial in shown["trials"]:
        row, frozen = queue.get(trial["task_id"]), study[trial["number"]]
        assert trial["status"] == row.status and trial["version"] == row.version
        assert trial["state"] == frozen.state.name == {"succeeded": "COMPLETE", "pruned": "PRUNED"}[row.status]
        assert trial["params"] == frozen.params
        assert all(getattr(row, name) == value for name, value in frozen.params.items())  # the task trains what Optuna drew
        assert trial["epochs_run"] == row.progress["epoch"] == max(frozen.intermediate_values)
    assert shown["best_trial"] == store.study(sweep).best_trial.number


def test_a_12_trial_asha_sweep_on_two_orchestrators_prunes_and_publishes_only_the_best(sweep_settings, engine, tmp_path, capsys):
    settings = sweep_settings
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    cli(capsys, "sweep", "create", "lr-arch", "--task-json", str(tmp_path / "base.json"),
        "--param", "learning_rate=loguniform:1e-4:3e-2", "--param", "architecture=choice:tiny,frames_mobilenet_v3_small",
        "--trials", "12", "--parallel", "2", "--pruner", "asha", "--metric", "val_loss", "--seed", "3")
    store = SweepStore(engine, settings)
    workers = [start_orchestrator(settings, f"host-{n}", tmp_path, lease_seconds=10.0) for n in ("a", "b")]
    try:
        wait_for(lambda: sweep_finished(store, "lr-arch"), "the sweep's end", timeout=600, step=1.0)
    finally:
        codes = [w.stop(timeout=60) for w in workers]
    assert codes == [0, 0], [w.log()[-3000:] for w in workers]
    shown = json.loads(cli(capsys, "sweep", "show", "lr-arch", "--json"))
    statuses = [t["status"] for t in shown["trials"]]
    assert len(statuses) == 12 and set(statuses) <= {"succeeded", "pruned"} and "pruned" in statuses, statuses
    assert {w for t in shown["trials"] for w in [TaskQueue(engine).get(t["task_id"]).worker_id]} == {"host-a", "host-b"}
    check_show_agrees_with_rows_and_study(shown, store, engine)
    for trial in (t for t in shown["trials"] if t["status"] == "pruned"):  # stopped within seconds of its last epoch record
        row = TaskQueue(engine).get(trial["task_id"])
        assert row.error == f"pruned by its sweep after epoch {trial['epochs_run']}"
        assert [r.outcome for r in TaskQueue(engine).runs(row.id)] == ["pruned"]
        assert row.finished_at.timestamp() - row.progress["time"] < 20, (trial, row.finished_at)
    best = next(t for t in shown["trials"] if t["best"])
    completed = [t["best_metric"] for t in shown["trials"] if t["status"] == "succeeded"]
    assert best["best_metric"] == min(completed)  # val_loss: the lowest
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]  # exactly one version: the best trial's
    assert (shown["published_task_id"], shown["published_version"], best["version"]) == (best["task_id"], 1, 1)
    assert [t["version"] for t in shown["trials"] if not t["best"]] == [None] * 11
    assert shown["importances"] is None or set(shown["importances"]) <= {"learning_rate", "architecture"}
    assert "lr-arch#" in cli(capsys, "tasks")  # `pytrain tasks` names each trial's sweep and number


def test_a_sigkilled_orchestrator_s_trial_is_resumed_by_the_other_and_counted_once(sweep_settings, engine, tmp_path, capsys):
    settings = sweep_settings
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    cli(capsys, "sweep", "create", "crash", "--task-json", str(tmp_path / "base.json"), "--param", "learning_rate=loguniform:1e-3:1e-2",
        "--trials", "2", "--parallel", "2", "--pruner", "none", "--seed", "1")
    store = SweepStore(engine, settings)
    queue = TaskQueue(engine)
    doomed = start_orchestrator(settings, "doomed", tmp_path, lease_seconds=3.0)
    victim = wait_for(lambda: next((t for t in store.trials(store.get("crash")["id"])
                                    if t["status"] == "running" and (t["progress"] or {}).get("epoch")), None),
                      "a trial of the doomed orchestrator mid-run", timeout=300)
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait()
    rescuer = start_orchestrator(settings, "rescuer", tmp_path, lease_seconds=3.0)
    try:
        wait_for(lambda: sweep_finished(store, "crash"), "the sweep's end", timeout=400, step=1.0)
    finally:
        assert rescuer.stop(timeout=60) == 0, rescuer.log()[-3000:]
    row = queue.get(victim["task_id"])
    assert (row.status, row.attempts, row.worker_id) == ("succeeded", 1, "rescuer")
    assert [(r.worker_id, r.outcome) for r in queue.runs(row.id)][0] == ("doomed", "requeued")
    shown = json.loads(cli(capsys, "sweep", "show", "crash", "--json"))
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE"] * 2  # none left RUNNING, none counted twice
    check_show_agrees_with_rows_and_study(shown, store, engine)
    assert existing_versions(settings.model_repo_dir / "kitchen") == [1]
    starts = [r for r in read_progress_records(Path(row.task_dir)) if r.event == "start"]
    assert starts[-1].resumed_from_epoch >= 1  # the rescuer's run went on from the killed run's checkpoint
