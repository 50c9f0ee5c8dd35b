"""A sweep's database side on a real PostgreSQL with Optuna's real RDB storage (schema ``optuna``):
top-ups under the sweep's row lock, each trial told once, orphaned Optuna trials failed, the
sweep finished once. Trials' tasks are claimed and ended with the queue's own operations (no
training: tests/sweeps/test_sweep_orchestrators.py trains for real)."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from pytrain.db import TaskQueue, head_revision
from pytrain.outcome import Outcome
from pytrain.spec import ProgressRecord
from pytrain.sweeps.params import parse_param
from pytrain.sweeps.store import SweepStore

BASE = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny", "epochs": 2}


def make_sweep(store: SweepStore, *, trials: int = 5, parallel: int = 2, **extra) -> dict:
    return store.create({"name": "lr", "base": BASE, "params": [parse_param("learning_rate=loguniform:1e-4:3e-3")],
                         "trials": trials, "parallel": parallel, "sampler": "random", "pruner": "asha", "metric": "val_accuracy",
                         "publish": "none", "seed": 7, **extra})


def end_next(queue: TaskQueue, outcome: Outcome = Outcome.SUCCEEDED, accuracy: float = 0.5) -> int:
    """Claim the next queued trial and end it as ``outcome`` (a success with a two-epoch history)."""
    run = queue.claim("w1", 60)
    assert run is not None
    metrics = {"history": [{"epoch": 1, "val_accuracy": accuracy - 0.1}, {"epoch": 2, "val_accuracy": accuracy}]}
    assert queue.finish(run, outcome, metrics=metrics if outcome is Outcome.SUCCEEDED else None)
    return run.task_id


def study_states(store: SweepStore, sweep: dict) -> dict[int, str]:
    return {t.number: t.state.name for t in store.study(sweep).get_trials(deepcopy=False)}


@pytest.fixture
def store(engine, settings):
    return SweepStore(engine, settings)


def test_create_queues_parallel_trials_and_a_second_settle_creates_none(store, engine):
    sweep = make_sweep(store)
    assert store.settle(sweep["id"]).created == []
    trials = store.trials(sweep["id"])
    assert [(t["number"], t["status"], t["told"]) for t in trials] == [(0, "queued", None), (1, "queued", None)]
    rates = [TaskQueue(engine).get(t["task_id"]).learning_rate for t in trials]
    assert rates[0] != rates[1] and all(1e-4 <= r <= 3e-3 for r in rates)  # re-seeded per top-up: two different draws
    assert TaskQueue(engine).get(trials[1]["task_id"]).options == {"experiment": "lr", "sweep": "lr", "trial": 1}  # MLflow's
    assert study_states(store, sweep) == {0: "RUNNING", 1: "RUNNING"}


def test_an_ended_trial_is_told_once_with_its_best_epoch_and_replaced(store, engine):
    sweep = make_sweep(store)
    queue = TaskQueue(engine)
    end_next(queue, accuracy=0.8)
    settled = store.settle(sweep["id"])
    assert settled.told == {0: "COMPLETE"} and len(settled.created) == 1
    assert store.settle(sweep["id"]).told == {}  # told once
    assert store.study(sweep).trials[0].value == pytest.approx(0.8)  # the best epoch of its history
    assert study_states(store, sweep) == {0: "COMPLETE", 1: "RUNNING", 2: "RUNNING"}


@pytest.mark.parametrize(("outcome", "state"), [(Outcome.PRUNED, "PRUNED"), (Outcome.FAILED, "FAIL"), (Outcome.CANCELLED, "FAIL")])
def test_pruned_failed_and_cancelled_trials_are_recorded_as_such_in_the_study(store, engine, outcome, state):
    sweep = make_sweep(store)
    end_next(TaskQueue(engine), outcome)
    assert store.settle(sweep["id"]).told == {0: state}
    assert study_states(store, sweep)[0] == state


def test_concurrent_settles_never_create_a_trial_twice(store, engine, settings):
    sweep = make_sweep(store, trials=10, parallel=3)
    queue = TaskQueue(engine)
    for _ in range(3):
        end_next(queue)
    stores = [SweepStore(engine, settings) for _ in range(4)]  # as four orchestrators would
    threads = [threading.Thread(target=s.settle, args=(sweep["id"],)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = store.trials(sweep["id"])
    assert len(trials) == 6 and sum(t["status"] == "queued" for t in trials) == 3
    assert sorted(study_states(store, sweep).values()) == ["COMPLETE"] * 3 + ["RUNNING"] * 3


def test_an_optuna_trial_left_without_a_task_is_failed_before_the_next_top_up(store, engine):
    sweep = make_sweep(store, parallel=1)
    store.study(sweep).ask()  # a creator that died between asking Optuna and committing its rows
    end_next(TaskQueue(engine))
    store.settle(sweep["id"])
    assert study_states(store, sweep) == {0: "COMPLETE", 1: "FAIL", 2: "RUNNING"}
    assert [t["number"] for t in store.trials(sweep["id"])] == [0, 2]


def test_each_epoch_is_reported_once_however_often_it_is_read(store, engine):
    sweep = make_sweep(store)
    trial = store.trial_of(store.trials(sweep["id"])[0]["task_id"])
    records = [ProgressRecord(event="epoch", epoch=1, val_accuracy=0.5)]
    store.report_epochs(trial, records)
    store.report_epochs(trial, records + [ProgressRecord(event="epoch", epoch=1, val_accuracy=0.9),  # a resumed run writes it again
                                          ProgressRecord(event="epoch", epoch=2, val_accuracy=0.6)])
    assert store.study(sweep).trials[0].intermediate_values == {1: 0.5, 2: 0.6}


def test_the_sweep_finishes_once_however_many_settle_its_end(store, engine, settings):
    sweep = make_sweep(store, trials=2, parallel=2)
    queue = TaskQueue(engine)
    end_next(queue)
    end_next(queue)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(SweepStore(engine, settings).settle(sweep["id"]))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.finished for r in results) == 1
    assert store.get("lr")["status"] == "finished"


def test_optuna_keeps_its_tables_in_its_own_schema(store, engine):
    make_sweep(store)
    with engine.connect() as conn:
        tables = set(conn.execute(text("SELECT table_schema, table_name FROM information_schema.tables "
                                       "WHERE table_name IN ('studies', 'trials', 'alembic_version', 'sweeps')")).all())
        ours = conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar()
    assert tables == {("optuna", "studies"), ("optuna", "trials"), ("optuna", "alembic_version"),
                      ("public", "alembic_version"), ("public", "sweeps")}
    assert ours == head_revision()  # Optuna's own alembic_version did not touch ours


def test_show_gives_importances_once_four_trials_completed_and_marks_the_best(store, engine):
    sweep = make_sweep(store, trials=6, parallel=1)
    queue = TaskQueue(engine)
    for accuracy in (0.5, 0.9, 0.6):
        end_next(queue, accuracy=accuracy)
        store.settle(sweep["id"])
    assert store.summary("lr")["importances"] is None  # three completed: too few
    end_next(queue, accuracy=0.7)
    store.settle(sweep["id"])
    shown = store.summary("lr")
    assert list(shown["importances"]) == ["learning_rate"]
    assert [(t["number"], t["best"], t["best_metric"], t["best_epoch"]) for t in shown["trials"] if t["status"] == "succeeded"] == [
        (0, False, pytest.approx(0.5), 2), (1, True, pytest.approx(0.9), 2), (2, False, pytest.approx(0.6), 2),
        (3, False, pytest.approx(0.7), 2)]
    assert shown["best_trial"] == 1 and shown["trials"][4]["status"] == "queued" and shown["trials"][4]["state"] == "RUNNING"


def test_cancel_stops_the_sweep_and_tells_its_queued_trials_at_once(store, engine):
    sweep = make_sweep(store)
    assert len(store.cancel("lr")) == 2
    assert [t["status"] for t in store.trials(sweep["id"])] == ["cancelled", "cancelled"]
    assert study_states(store, sweep) == {0: "FAIL", 1: "FAIL"}
    assert store.get("lr")["status"] == "cancelled" and store.settle(sweep["id"]).created == []


def test_a_trial_is_published_by_hand_once_and_clean_removes_only_the_unpublished_models(store, engine, settings):
    from fixtures.triton import make_task_folder

    sweep = make_sweep(store, trials=2, parallel=2)
    queue = TaskQueue(engine)
    for accuracy in (0.6, 0.8):
        task_id = end_next(queue, accuracy=accuracy)
        folder = make_task_folder(settings.model_tasks_dir / f"task-{task_id}", task_id=task_id)
        with engine.begin() as conn:
            conn.execute(text("UPDATE training_tasks SET task_dir = :d WHERE id = :t"), {"d": str(folder), "t": task_id})
    store.settle(sweep["id"])  # publish none: nothing published at the end
    with pytest.raises(Exception, match="trial 5"):
        store.publish("lr", 5)
    assert store.publish("lr", 0) == (0, 1)
    assert store.publish("lr", 0) == (0, 1)  # the same trial again: its version, not a second one
    trials = store.trials(sweep["id"])
    assert [t["version"] for t in trials] == [1, None] and store.get("lr")["published_version"] == 1
    removed = store.clean("lr")
    assert [p.name for p in removed] == ["model.onnx"] and removed[0].parent == Path(trials[1]["task_dir"])
    assert (Path(trials[0]["task_dir"]) / "model.onnx").exists()


def test_asha_stops_a_trial_behind_the_best_at_its_first_epoch_but_never_after_its_last(store, engine):
    sweep = make_sweep(store)
    lead = store.trial_of(store.trials(sweep["id"])[0]["task_id"])
    assert store.report_epochs(lead, [ProgressRecord(event="epoch", epoch=1, epochs=2, val_accuracy=0.8)]) is False  # alone at rung 0
    end_next(TaskQueue(engine), accuracy=0.9)  # trial 0 ends: epochs 1 and 2 at 0.8 and 0.9
    store.settle(sweep["id"])
    behind = [ProgressRecord(event="epoch", epoch=1, epochs=2, val_accuracy=0.1)]
    first, second = (store.trial_of(t["task_id"]) for t in store.trials(sweep["id"])[1:3])
    assert store.report_epochs(first, behind) is True  # rung 0 (epoch 1): behind the only other trial there
    # seen late (after its final epoch): it trained every epoch, only its export is left: it completes
    assert store.report_epochs(second, behind + [ProgressRecord(event="epoch", epoch=2, epochs=2, val_accuracy=0.1)]) is False


def test_a_grid_sweep_creates_every_combination_once(store, engine):
    sweep = store.create({"name": "grid", "base": BASE, "params": [parse_param("num_frames=int:8:16:8"),
                                                                   parse_param("architecture=choice:tiny,r3d_18")],
                          "trials": 4, "parallel": 4, "sampler": "grid", "pruner": "none", "metric": "val_accuracy",
                          "publish": "none", "seed": None})
    queue = TaskQueue(engine)
    drawn = sorted((queue.get(t["task_id"]).num_frames, queue.get(t["task_id"]).architecture) for t in store.trials(sweep["id"]))
    assert drawn == [(8, "r3d_18"), (8, "tiny"), (16, "r3d_18"), (16, "tiny")]


def test_list_counts_ended_trials_and_names_each_sweep_s_best_completed_trial(store, engine, settings, monkeypatch, capsys):
    from fixtures.processes import orchestrator_env
    from pytrain.cli.main import main
    from pytrain.settings import get_settings

    sweep = make_sweep(store, trials=4, parallel=1)
    assert [(s["name"], s["created"], s["live"], s["ended"], s["best_trial"], s["best_value"]) for s in store.list()] == [
        ("lr", 1, 1, 0, None, None)]  # no trial ended: Optuna not asked
    queue = TaskQueue(engine)
    for accuracy in (0.6, 0.8, 0.7):
        end_next(queue, accuracy=accuracy)
        store.settle(sweep["id"])
    [listed] = store.list()
    assert (listed["created"], listed["live"], listed["ended"], listed["best_trial"]) == (4, 1, 3, 1)
    assert listed["best_value"] == pytest.approx(0.8)
    for name, value in orchestrator_env(settings, "cli", lease_seconds=10.0, heartbeat_seconds=0.2, poll_seconds=0.2).items():
        if name.startswith("PYTRAIN_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main(["sweep", "list"])
    except SystemExit as exc:
        assert not exc.code
    finally:
        get_settings.cache_clear()
    assert "0.8 (trial 1)" in capsys.readouterr().out  # `pytrain sweep list`'s best column
