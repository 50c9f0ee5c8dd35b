"""The column table (:mod:`pytrain.task_columns`) against everything derived from it or written beside it:
the migrated database, the SQLAlchemy model, ``TaskRequest``, ``TaskSpec``, ``TaskRow``, the
generated reference page (``scripts/mkdocs_hooks.py``)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import psycopg
import pytest
from sqlalchemy import CheckConstraint, text
from sqlalchemy.exc import IntegrityError

from fixtures.docs import mkdocs_hooks
from pytrain.db import TaskRequest, TaskRow, TrainingTask
from pytrain.errors import ConfigurationError
from pytrain.spec import TaskSpec
from pytrain.task_columns import (
    MAX_CLASS_CHARS,
    MAX_CLASSES,
    MAX_JSON_CHARS,
    MAX_JSON_DEPTH,
    MAX_SOURCES,
    REQUIRED,
    TASK_COLUMNS,
    column,
    size_constraints,
    task_defaults,
)

REQUIRED_ROW = {"model_name": "'kitchen'", "sources": "'{dataset1}'", "classes": "'{cooking,drinking}'"}
# Values that keep the fractions summing to 1 while one fraction is probed.
FRACTION_PARTNER = {"train_fraction": "test_fraction", "val_fraction": "train_fraction", "test_fraction": "train_fraction"}


def _database_defaults(engine) -> dict[str, tuple[str | None, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT column_name, column_default, data_type, udt_name FROM information_schema.columns "
            "WHERE table_name = 'training_tasks'"
        )).all()
    return {name: (default, "text[]" if udt == "_text" else data_type) for name, default, data_type, udt in rows}


def test_migrated_database_has_the_column_tables_defaults_and_types(engine):
    database = _database_defaults(engine)
    for spec in TASK_COLUMNS:
        default, sql_type = database[spec.name]
        assert sql_type == spec.sql_type, spec.name
        if spec.required:
            assert default is None, spec.name
            continue
        # PostgreSQL shows a text default with its cast: 'r3d_18'::text
        assert default.removesuffix("::text") == spec.sql_default(), spec.name


def test_minimal_insert_gets_every_default_of_the_column_table(engine):
    with engine.begin() as conn:
        row = conn.execute(text(
            f"INSERT INTO training_tasks ({', '.join(REQUIRED_ROW)}) VALUES ({', '.join(REQUIRED_ROW.values())}) RETURNING *"
        )).mappings().one()
    assert {name: row[name] for name in task_defaults()} == task_defaults()


def test_model_server_defaults_come_from_the_column_table():
    for spec in TASK_COLUMNS:
        server_default = TrainingTask.__table__.c[spec.name].server_default
        if spec.required:
            assert server_default is None
        else:
            assert server_default.arg.text == spec.sql_default()


def test_task_spec_defaults_are_the_database_defaults():
    spec_fields = {f.name: f.default for f in dataclasses.fields(TaskSpec)}
    shared = [c for c in TASK_COLUMNS if c.name in spec_fields and not c.required]
    assert {c.name for c in shared} >= {"architecture", "num_frames", "height", "width", "epochs", "batch_size",
                                          "shuffle_size", "learning_rate", "seed", "pretrained"}
    for c in shared:
        assert spec_fields[c.name] == c.default, c.name
    assert TaskSpec(task_id=1, model_name="m", class_list=["a", "b"]).architecture == column("architecture").default


def test_task_row_fields_are_the_tables_columns():
    assert [f.name for f in dataclasses.fields(TaskRow)] == list(TrainingTask.__table__.columns.keys())


def _row_with(name: str, value: float) -> dict[str, float] | None:
    """The probed value, plus a partner fraction that keeps the three summing to 1; ``None`` when
    no valid partner exists (``train_fraction = 1`` leaves nothing for the required test split).
    ``frame_interval`` is probed with ``dense`` sampling (``uniform`` needs 1: pytrain.sampling)."""
    if name == "frame_interval":
        return {"sampling": "dense", name: value}
    if name not in FRACTION_PARTNER:
        return {name: value}
    values = {"train_fraction": 0.6, "val_fraction": 0.2, "test_fraction": 0.2, name: value}
    partner = FRACTION_PARTNER[name]
    values[partner] = round(values[partner] + 1 - sum(values.values()), 9)
    p = column(partner)
    if (values[partner] <= p.low if p.low_open else values[partner] < p.low) or \
            (values[partner] >= p.high if p.high_open else values[partner] > p.high):
        return None
    return values


def _boundary_cases():
    """(column, value, accepted) just inside and just outside every bound of the table."""
    cases = []
    for c in TASK_COLUMNS:
        step = 1 if c.python_type is int else 1e-3
        if c.low is not None:
            cases += [(c.name, c.low, not c.low_open), (c.name, c.low - step, False)]
        if c.high is not None:
            cases += [(c.name, c.high, not c.high_open), (c.name, c.high + step, False)]
    return [case for case in cases if _row_with(case[0], case[1]) is not None]


BOUNDARIES = _boundary_cases()


@pytest.mark.parametrize(("name", "value", "accepted"), BOUNDARIES, ids=[f"{n}={v}" for n, v, _ in BOUNDARIES])
def test_database_and_submit_accept_exactly_the_column_tables_bounds(engine, name, value, accepted):
    values = _row_with(name, value)
    row = {**REQUIRED_ROW, **{k: repr(v) for k, v in values.items()}}
    sql = f"INSERT INTO training_tasks ({', '.join(row)}) VALUES ({', '.join(row.values())})"
    request = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking"], **values}
    if accepted:
        with engine.begin() as conn:
            conn.execute(text(sql))
        TaskRequest.parse(request)
        return
    with pytest.raises(IntegrityError) as info, engine.begin() as conn:
        conn.execute(text(sql))
    assert isinstance(info.value.orig, psycopg.errors.CheckViolation)
    assert f"ck_training_tasks_{column(name).check}" in str(info.value.orig)
    with pytest.raises(ConfigurationError, match=name):
        TaskRequest.parse(request)


def _reference_rows() -> dict[str, tuple[str, str, str]]:
    """``{column: (type, default, bounds)}`` from the generated task columns reference page."""
    rows = {}
    for line in mkdocs_hooks().render_task_columns().splitlines():
        match = re.match(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ((?:[^|\\]|\\.)*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip().strip("`"), match.group(4).strip())
    return rows


def test_reference_page_states_each_columns_type_default_and_bounds():
    rows = _reference_rows()
    assert list(rows) == [c.name for c in TASK_COLUMNS]
    for c in TASK_COLUMNS:
        sql_type, default, bounds = rows[c.name]
        assert sql_type == c.sql_type, c.name
        assert default == ("required" if c.default is REQUIRED else c.sql_default()), c.name
        if c.check is not None and c.pattern is None and c.condition is None:
            assert bounds == c.bounds_text(), c.name


def test_options_must_be_a_json_object_in_the_database(engine):
    row = {**REQUIRED_ROW, "options": "'[1, 2]'::jsonb"}
    with pytest.raises(IntegrityError) as info, engine.begin() as conn:
        conn.execute(text(f"INSERT INTO training_tasks ({', '.join(row)}) VALUES ({', '.join(row.values())})"))
    assert "ck_training_tasks_options_object" in str(info.value.orig)


def test_submit_names_an_unknown_or_mistyped_option():
    base = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking"]}
    assert TaskRequest.parse({**base, "options": {"cache": True, "patience": 3}}).columns()["options"] == {"cache": True, "patience": 3}
    with pytest.raises(ConfigurationError, match=r"'cahce' is not known.*known options: .*cache"):
        TaskRequest.parse({**base, "options": {"cahce": True}})
    with pytest.raises(ConfigurationError, match=r"patience='3' should be a int"):
        TaskRequest.parse({**base, "options": {"patience": "3"}})


def test_claim_refuses_a_rows_unknown_option(tmp_path):
    from pytrain.orchestrator.prepare import prepare_task
    from pytrain.settings import Settings

    row = {"id": 1, "model_name": "m", "sources": ["d"], "classes": ["a"], "options": {"chache": True}}
    with pytest.raises(ConfigurationError, match="'chache' is not known"):
        prepare_task(row, Settings(data_dir=tmp_path), registered=None)


def _nested(levels: int) -> dict:
    """``{"x": [[...[1]...]]}`` whose ``1`` lies ``levels`` levels below the top (``levels`` >= 1)."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"x": value}


def _insert_row(engine, **values: str) -> None:
    row = {**REQUIRED_ROW, **values}
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO training_tasks ({', '.join(row)}) VALUES ({', '.join(row.values())})"))


def _refused_by(engine, **values: str) -> str:
    """The constraint that refused the INSERT (``""`` when it was accepted)."""
    try:
        _insert_row(engine, **values)
    except IntegrityError as exc:
        assert isinstance(exc.orig, psycopg.errors.CheckViolation)
        return exc.orig.diag.constraint_name
    return ""


def _jsonb(value: Any) -> str:
    return "'" + json.dumps(value).replace("'", "''") + "'::jsonb"


def test_options_nested_3000_levels_deep_is_refused_by_its_check(engine):
    deep = '{"x": ' + "[" * 3000 + "]" * 3000 + "}"  # PostgreSQL itself takes it; a worker's decoder cannot
    with pytest.raises(IntegrityError) as info, engine.begin() as conn:
        conn.execute(text(f"INSERT INTO training_tasks ({', '.join(REQUIRED_ROW)}, options) "
                          f"VALUES ({', '.join(REQUIRED_ROW.values())}, CAST(:deep AS jsonb))"), {"deep": deep})
    assert 'violates check constraint "ck_training_tasks_options_within_limits"' in str(info.value.orig)


@pytest.mark.parametrize("name", sorted(MAX_JSON_CHARS))
def test_json_columns_take_exactly_the_column_tables_depth_and_size(engine, name):
    constraint = f"ck_training_tasks_{name}_within_limits"
    assert _refused_by(engine, **{name: _jsonb(_nested(MAX_JSON_DEPTH))}) == ""
    assert _refused_by(engine, **{name: _jsonb(_nested(MAX_JSON_DEPTH + 1))}) == constraint
    assert _refused_by(engine, **{name: _jsonb({"x": [[] for _ in range(MAX_JSON_DEPTH)]})}) == ""  # wide is fine
    fill = MAX_JSON_CHARS[name] - len('{"x": ""}')  # jsonb's text: {"x": "..."}
    assert _refused_by(engine, **{name: f"""jsonb_build_object('x', repeat('a', {fill}))"""}) == ""
    assert _refused_by(engine, **{name: f"""jsonb_build_object('x', repeat('a', {fill + 1}))"""}) == constraint


def test_array_columns_take_exactly_the_column_tables_entries_and_characters(engine):
    many = ",".join(f"c{i}" for i in range(MAX_CLASSES + 1))
    assert _refused_by(engine, classes=f"'{{{many}}}'") == "ck_training_tasks_classes_within_limits"
    many = ",".join(f"d{i}" for i in range(MAX_SOURCES + 1))
    assert _refused_by(engine, sources=f"'{{{many}}}'") == "ck_training_tasks_sources_within_limits"
    longest = ",".join(f"{i:03d}" + "c" * (MAX_CLASS_CHARS - 3) for i in range(MAX_CLASSES))
    assert _refused_by(engine, classes=f"'{{{longest}}}'") == ""
    assert _refused_by(engine, classes=f"'{{{longest}x}}'") == "ck_training_tasks_classes_within_limits"


def test_migrated_database_has_the_models_check_constraints(engine):
    with engine.connect() as conn:
        names = set(conn.execute(text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'training_tasks'::regclass AND contype = 'c'")).scalars())
    model = {c.name for c in TrainingTask.__table__.constraints if isinstance(c, CheckConstraint)}
    assert names == model
    assert {f"ck_training_tasks_{name}" for name in size_constraints()} <= names


def test_migration_0006_adds_the_column_tables_size_constraints():
    import importlib

    migration = importlib.import_module("pytrain.db.migrations.versions.0006_bound_json_and_arrays")
    assert {f"{name}_within_limits": condition for name, condition in migration.LIMITS.items()} == size_constraints()
