"""``--param SPEC``: parsed and typed as the column or option it sets, checked by the task's own
rules (the column table's bounds, the options' ranges) before anything is created; and
``pytrain sweep create`` refusing a bad sweep before any row is inserted (a real PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from pytrain.cli.main import main
from pytrain.db import TASK_DEFAULTS
from pytrain.errors import ConfigurationError
from pytrain.sweeps.params import ParamSpec, check_params, parse_param

BASE = {**TASK_DEFAULTS, "model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}


@pytest.mark.parametrize(("spec", "parsed"), [
    ("learning_rate=loguniform:1e-4:3e-3", ParamSpec("learning_rate", "loguniform", low=1e-4, high=3e-3)),
    ("options.label_smoothing=uniform:0:0.2", ParamSpec("options.label_smoothing", "uniform", low=0.0, high=0.2)),
    ("num_frames=int:8:32:8", ParamSpec("num_frames", "int", low=8, high=32, step=8)),
    ("epochs=int:1:3", ParamSpec("epochs", "int", low=1, high=3, step=1)),
    ("architecture=choice:r3d_18,r2plus1d_18", ParamSpec("architecture", "choice", choices=("r3d_18", "r2plus1d_18"))),
    ("batch_size=choice:4,8", ParamSpec("batch_size", "choice", choices=(4, 8))),
    ("options.augment=choice:true,false", ParamSpec("options.augment", "choice", choices=(True, False))),
])
def test_a_spec_is_parsed_and_typed_as_what_it_sets(spec, parsed):
    assert parse_param(spec) == parsed
    assert ParamSpec.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed  # as stored in sweeps.params


@pytest.mark.parametrize(("spec", "message"), [
    ("colour=choice:red,blue", "--param colour is not a task column"),
    ("options.colour=uniform:0:1", "--param options.colour: unknown option 'colour'"),
    ("model_name=choice:a,b", "--param model_name cannot be swept"),
    ("learning_rate=uniform:0.1:0.1", "--param learning_rate=uniform:0.1:0.1 is an empty range: LOW 0.1 must be below HIGH 0.1"),
    ("learning_rate=loguniform:3e-3:1e-4", "is an empty range"),
    ("architecture=choice:", "--param architecture=choice: lists no value"),
    ("learning_rate=normal:0:1", "--param learning_rate: unknown distribution 'normal'"),
    ("num_frames=uniform:8:32", "--param num_frames is an integer: use int:LOW:HIGH[:STEP] or choice:, not uniform"),
    ("num_frames=choice:8,8.5", "--param num_frames: '8.5' is not a int"),
    ("architecture=uniform:0:1", "--param architecture is a str: it takes choice:V1,V2 only, not uniform"),
    ("learning_rate", "--param 'learning_rate' is not NAME=KIND:ARGS"),
    ("num_frames=int:8:32:64", "STEP 64 must be between 1 and HIGH - LOW"),
])
def test_an_unknown_name_a_wrong_kind_or_an_empty_range_is_refused_naming_it(spec, message):
    with pytest.raises(ConfigurationError) as raised:
        parse_param(spec)
    assert message in raised.value.message


@pytest.mark.parametrize(("spec", "message"), [
    ("learning_rate=loguniform:1e-4:20", "--param learning_rate: 20.0 is refused: learning_rate 20.0 is out of bounds (> 0, <= 10)"),
    ("num_frames=int:8:1024:8", "--param num_frames: 1024 is refused: num_frames 1024 is out of bounds (1..512)"),
    ("options.label_smoothing=uniform:0:1", "--param options.label_smoothing: 1.0 is refused: task option label_smoothing=1.0 is out of range"),
    ("architecture=choice:tiny,bad name", "--param architecture: 'bad name' is refused: architecture 'bad name' does not match"),
    ("frame_interval=int:1:4", "--param frame_interval: 4 is refused"),  # needs dense sampling: the task's own rule
    ("architecture=choice:tiny,resnet9000", "--param architecture: 'resnet9000' is refused: unknown architecture 'resnet9000'"),
])
def test_every_value_a_spec_can_draw_is_checked_by_the_task_s_own_rules(spec, message):
    with pytest.raises(ConfigurationError) as raised:
        check_params(BASE, [parse_param(spec)])
    assert message in raised.value.message


def test_a_sweep_needs_a_parameter_given_once_and_a_validation_split():
    spec = parse_param("learning_rate=uniform:0.001:0.01")
    for params, base, message in (([], BASE, "a sweep needs at least one --param"),
                                  ([spec, spec], BASE, "--param learning_rate given more than once"),
                                  ([spec], {**BASE, "train_fraction": 0.8, "val_fraction": 0.0}, "a sweep needs a validation split")):
        with pytest.raises(ConfigurationError, match=message):
            check_params(base, params)


def test_grid_values_enumerate_choices_and_integer_steps_and_refuse_a_continuous_range():
    assert parse_param("num_frames=int:8:32:8").grid_values() == [8, 16, 24, 32]
    assert parse_param("architecture=choice:tiny,r3d_18").grid_values() == ["tiny", "r3d_18"]
    with pytest.raises(ConfigurationError, match="has no grid"):
        parse_param("learning_rate=uniform:0.001:0.01").grid_values()


@pytest.mark.parametrize(("args", "message"), [
    (["--param", "learning_rate=loguniform:1e-4:20", "--trials", "4"], "learning_rate 20.0 is out of bounds"),
    (["--param", "options.colour=uniform:0:1", "--trials", "4"], "unknown option 'colour'"),
    (["--param", "learning_rate=loguniform:1e-4:3e-3", "--trials", "0"], "--trials 0 must be at least 1"),
    (["--param", "learning_rate=loguniform:1e-4:3e-3", "--trials", "4", "--parallel", "0"], "--parallel 0 must be at least 1"),
    (["--param", "num_frames=int:8:16:8", "--trials", "3", "--sampler", "grid"], "--trials 3 is more than the grid's 2 combinations"),
    (["--param", "learning_rate=loguniform:1e-4:3e-3", "--trials", "4", "--pruner", "hyperband"], "--pruner 'hyperband' is not known"),
    (["--param", "learning_rate=loguniform:1e-4:3e-3", "--trials", "4", "--base-task", "1"], "--base-task ID or --task-json FILE (one of"),
])
def test_sweep_create_refuses_a_bad_sweep_before_any_row_is_inserted(args, message, sweep_settings, engine, tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}))
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "create", "bad", "--task-json", str(tmp_path / "base.json"), *args])
    assert exited.value.code == 1
    assert message in capsys.readouterr().err
    with engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in ("sweeps", "sweep_trials", "training_tasks")]
        optuna_tables = conn.execute(text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'optuna'")).scalar()
    assert counts == [0, 0, 0] and optuna_tables == 0  # not even Optuna's storage was touched


@pytest.mark.parametrize(("options", "message"), [({"trial": -1}, "task option trial=-1 is not a trial number"),
                                                  ({"trial": True}, "task option trial=True is not a trial number"),
                                                  ({"sweep": 3}, "task option sweep=3 is not a sweep name")])
def test_a_trial_s_sweep_and_number_options_are_checked(options, message):
    from pytrain.task_options import check_options

    check_options({"sweep": "lr", "trial": 0})
    with pytest.raises(ConfigurationError, match=message):
        check_options(options)


def test_a_bad_sweep_name_is_refused_naming_the_rule(sweep_settings, tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}))
    with pytest.raises(SystemExit):
        main(["sweep", "create", "my sweep", "--task-json", str(tmp_path / "base.json"), "--param", "epochs=int:1:2", "--trials", "2"])
    assert "error: sweep name 'my sweep' does not match ^[A-Za-z0-9_-]{1,64}$" in capsys.readouterr().err


def test_a_sweep_based_on_another_sweep_s_trial_gets_its_own_sweep_options(sweep_settings, engine, capsys):
    from pytrain.db import TaskQueue

    base = TaskQueue(engine).submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"],
                                     "options": {"experiment": "old", "sweep": "old", "trial": 4, "patience": 3}})
    main(["sweep", "create", "new", "--base-task", str(base), "--param", "epochs=int:1:2", "--trials", "1", "--pruner", "none"])
    assert "sweep new created: 1 trial(s), 1 at a time" in capsys.readouterr().out
    trial = TaskQueue(engine).get(base + 1)
    assert trial.options == {"experiment": "new", "patience": 3, "sweep": "new", "trial": 0}
