"""A sweep in MLflow (a real ``mlflow server``, ``fixtures.mlflow``): ``sweep create`` makes one
parent run; each trial's run is its child, in the sweep's experiment, tagged with sweep and trial."""

from __future__ import annotations

import uuid

from pytrain.db import TaskQueue
from pytrain.sweeps.params import parse_param
from pytrain.sweeps.store import SweepStore
from pytrain.tracking import TrackedRun
from pytrain.tracking.store import make_client
from pytrain.tracking.tracker import SWEEP_PARENT_TAG, create_sweep_parent, sync_run


def test_a_sweep_s_trials_are_children_of_its_one_mlflow_parent_run(tracking_settings, engine):
    name = f"mlflow-{uuid.uuid4().hex[:8]}"  # the server outlives each test's database
    store = SweepStore(engine, tracking_settings)
    store.create({"name": name, "base": {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]},
                  "params": [parse_param("learning_rate=loguniform:1e-4:3e-3")], "trials": 2, "parallel": 2, "sampler": "random",
                  "pruner": "none", "metric": "val_accuracy", "publish": "none", "seed": 1})
    client = make_client(tracking_settings)
    experiment = client.get_experiment_by_name(name)
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_PARENT_TAG}` = '{name}'")
    assert [p.info.run_name for p in parents] == [f"sweep-{name}"]
    assert create_sweep_parent(client, tracking_settings, name, name) == parents[0].info.run_id  # found, not made twice

    run = TaskQueue(engine).claim("w1", 60)
    tracked = TrackedRun.from_row(run.task, run_id=run.run_id, worker_id="w1", runner="local", task_dir=None)
    child = client.get_run(sync_run(client, tracked, tracking_settings)[0])
    assert child.info.experiment_id == experiment.experiment_id
    assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert (child.data.tags["pytrain.sweep"], child.data.tags["pytrain.trial"]) == (name, str(run.task.options["trial"]))
