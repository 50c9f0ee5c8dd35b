"""The worker's side of a trial, in process with a fake runner (fast; the real thing, with real
orchestrator processes and training, is test_sweep_orchestrators.py): the pruner's stop recorded
as ``pruned``, a successful trial recorded unpublished, the sweep topped up after each end."""

from __future__ import annotations

import json
import time

from orchestrator.orchestrator_fakes import FakePublisher, FakeRunner
from pytrain.db import TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.outcome import Outcome
from pytrain.spec import ProgressRecord
from pytrain.sweeps.params import parse_param
from pytrain.sweeps.store import SweepStore


class BehindRunner(FakeRunner):
    """Writes one epoch (of 9) far behind the lead, then runs until it is stopped."""

    def run(self, task, cancel, stop=None):
        self.started.set()
        with open(task.task_dir / "progress.jsonl", "a") as progress:
            progress.write(json.dumps({"event": "epoch", "epoch": 1, "epochs": 9, "val_accuracy": 0.1, "time": time.time()}) + "\n")
        return self.wait_until_stopped(cancel, stop)


def test_the_worker_records_a_pruned_trial_as_pruned_a_finished_one_unpublished_and_tops_the_sweep_up(sweep_settings, engine):
    store = SweepStore(engine, sweep_settings)
    sweep = store.create({"name": "lr", "base": {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]},
                          "params": [parse_param("learning_rate=loguniform:1e-4:3e-3")], "trials": 3, "parallel": 1,
                          "sampler": "random", "pruner": "asha", "metric": "val_accuracy", "publish": "best", "seed": 1})
    queue = TaskQueue(engine)
    lead = store.trial_of(store.trials(sweep["id"])[0]["task_id"])
    store.report_epochs(lead, [ProgressRecord(event="epoch", epoch=1, epochs=9, val_accuracy=0.9)])  # the lead's rung 0
    publisher = FakePublisher()
    worker = Orchestrator(sweep_settings, engine=engine, runner=FakeRunner("succeed"), publisher=publisher, worker_id="w1")

    assert worker.run_once()  # trial 0 trains to its end (FakeRunner: its one epoch of one)
    first = queue.get(store.trials(sweep["id"])[0]["task_id"])
    assert (first.status, first.version, publisher.calls) == ("succeeded", None, [])  # the sweep publishes at its end

    worker.runner = BehindRunner()
    started = time.monotonic()
    assert worker.process(queue.claim("w1", 60)) is Outcome.PRUNED
    assert time.monotonic() - started < 30  # stopped at once, not after the fake run's 30 s
    trials = store.trials(sweep["id"])
    pruned = queue.get(trials[1]["task_id"])
    assert (pruned.status, pruned.error) == ("pruned", "pruned by its sweep after epoch 1")
    assert [r.outcome for r in queue.runs(pruned.id)] == ["pruned"]
    assert [(t["number"], t["status"], t["told"]) for t in trials] == [(0, "succeeded", "COMPLETE"), (1, "pruned", "PRUNED"),
                                                                         (2, "queued", None)]
