from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from pytrain.db import TASK_DEFAULTS, check_schema, current_revision, head_revision, upgrade
from pytrain.db.engine import libpq_url
from pytrain.db.models import Base
from pytrain.errors import SchemaOutOfDateError

MINIMAL_INSERT = "INSERT INTO training_tasks (model_name, sources, classes) VALUES ('kitchen', '{dataset1}', '{cooking,drinking}') RETURNING *"


def test_minimal_insert_takes_database_defaults(engine):
    with engine.begin() as conn:
        row = conn.execute(text(MINIMAL_INSERT)).mappings().one()
    assert row["model_name"] == "kitchen"
    assert row["sources"] == ["dataset1"]
    assert row["classes"] == ["cooking", "drinking"]
    assert {k: row[k] for k in TASK_DEFAULTS} == TASK_DEFAULTS
    assert (row["num_frames"], row["height"], row["width"], row["epochs"], row["batch_size"], row["shuffle_size"]) == (20, 224, 224, 50, 4, 300)
    assert row["status"] == "queued"
    assert row["attempts"] == 0
    assert row["progress"] == {}
    assert row["created_at"] is not None
    for empty in ("started_at", "finished_at", "error", "metrics", "version", "worker_id", "lease_expires_at"):
        assert row[empty] is None


BAD_VALUES = [
    ("epochs", "0", "ck_training_tasks_epochs_range"),
    ("epochs", "-3", "ck_training_tasks_epochs_range"),
    ("num_frames", "0", "ck_training_tasks_num_frames_range"),
    ("height", "4", "ck_training_tasks_height_range"),
    ("width", "100000", "ck_training_tasks_width_range"),
    ("batch_size", "0", "ck_training_tasks_batch_size_range"),
    ("shuffle_size", "0", "ck_training_tasks_shuffle_size_range"),
    ("learning_rate", "0", "ck_training_tasks_learning_rate_range"),
    ("train_fraction", "0.7", "ck_training_tasks_fractions_sum_to_one"),
    ("test_fraction", "-0.2", "ck_training_tasks_fractions_range"),
    ("test_fraction", "0", "ck_training_tasks_fractions_range"),
    ("seed", "-1", "ck_training_tasks_seed_not_negative"),
    ("model_name", "'bad name'", "ck_training_tasks_model_name_format"),
    ("model_name", "'kitchen/../x'", "ck_training_tasks_model_name_format"),
    ("model_name", "''", "ck_training_tasks_model_name_format"),
    ("model_name", "'" + "m" * 65 + "'", "ck_training_tasks_model_name_format"),
    ("classes", "'{}'", "ck_training_tasks_classes_not_empty"),
    ("classes", "'{cooking,\"\"}'", "ck_training_tasks_classes_not_empty"),
    ("sources", "'{}'", "ck_training_tasks_sources_not_empty"),
    ("status", "'done'", "ck_training_tasks_status_known"),
    ("status", "'running'", "ck_training_tasks_running_has_lease"),
    ("attempts", "-1", "ck_training_tasks_attempts_not_negative"),
    ("architecture", "'r3d 18; drop'", "ck_training_tasks_architecture_format"),
]


@pytest.mark.parametrize(("column", "value", "constraint"), BAD_VALUES, ids=[f"{c}={v}" for c, v, _ in BAD_VALUES])
def test_check_constraint_rejects_impossible_value(engine, column, value, constraint):
    columns = {"model_name": "'kitchen'", "sources": "'{dataset1}'", "classes": "'{cooking,drinking}'", column: value}
    sql = f"INSERT INTO training_tasks ({', '.join(columns)}) VALUES ({', '.join(columns.values())})"
    with pytest.raises(IntegrityError) as info:
        with engine.begin() as conn:
            conn.execute(text(sql))
    assert isinstance(info.value.orig, psycopg.errors.CheckViolation)
    assert f'violates check constraint "{constraint}"' in str(info.value.orig)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM training_tasks")).scalar_one() == 0


def test_fractions_summing_to_one_with_float_error_are_accepted(engine):
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO training_tasks (model_name, sources, classes, train_fraction, val_fraction, test_fraction) "
            "VALUES ('m', '{d}', '{a,b}', 0.7, 0.1, 0.2)"
        ))


def test_insert_trigger_notifies_channel_with_task_id(engine):
    with psycopg.connect(libpq_url(engine), autocommit=True) as listener:
        listener.execute("LISTEN pytrain_tasks")
        with engine.begin() as conn:
            task_id = conn.execute(text(MINIMAL_INSERT)).mappings().one()["id"]
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert payloads == [str(task_id)]


def test_requeue_notifies_channel_but_other_updates_do_not(engine):
    with engine.begin() as conn:
        task_id = conn.execute(text(MINIMAL_INSERT)).mappings().one()["id"]
    with psycopg.connect(libpq_url(engine), autocommit=True) as listener:
        listener.execute("LISTEN pytrain_tasks")
        with engine.begin() as conn:
            conn.execute(text("UPDATE training_tasks SET priority = 5 WHERE id = :id"), {"id": task_id})
            conn.execute(text("UPDATE training_tasks SET status = 'failed' WHERE id = :id"), {"id": task_id})
            conn.execute(text("UPDATE training_tasks SET status = 'queued' WHERE id = :id"), {"id": task_id})
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert payloads == [str(task_id)]


def test_schema_check_refuses_database_without_schema_and_names_the_fix(empty_database_url):
    engine = create_engine(empty_database_url)
    try:
        with pytest.raises(SchemaOutOfDateError, match="no PyTrain schema") as info:
            check_schema(engine)
        assert "pytrain db upgrade" in info.value.hint
        assert upgrade(engine) == head_revision()
        check_schema(engine)
        assert upgrade(engine) == head_revision()  # idempotent
    finally:
        engine.dispose()


def test_schema_check_and_upgrade_refuse_a_revision_from_a_newer_pytrain(engine):
    """Migrations only get added, so a revision this PyTrain does not know was made by a newer one:
    `pytrain db upgrade` cannot help (it used to end in alembic's traceback)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    message = (f"the database schema is at revision 0099, which this PyTrain (newest {head_revision()}) does not know: "
               "a newer PyTrain migrated it (hint: upgrade PyTrain to the version the other orchestrators run)")
    for call in (check_schema, upgrade):
        with pytest.raises(SchemaOutOfDateError) as info:
            call(engine)
        assert str(info.value) == message
    assert current_revision(engine) == "0099"  # left alone


def test_models_match_migrations(engine):
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_plain_sql_cancel_of_queued_task_stamps_end_time_and_reason(engine):
    with engine.begin() as conn:
        task_id = conn.execute(text(MINIMAL_INSERT)).mappings().one()["id"]
        conn.execute(text("UPDATE training_tasks SET status = 'cancelled' WHERE id = :id"), {"id": task_id})
        row = conn.execute(text("SELECT * FROM training_tasks WHERE id = :id"), {"id": task_id}).mappings().one()
    assert (row["status"], row["error"]) == ("cancelled", "cancelled before it started")
    assert row["finished_at"] is not None


def test_schema_one_revision_behind_is_refused_then_upgraded_step_by_step(empty_database_url):
    from alembic import command

    from pytrain.db.schema import alembic_config

    engine = create_engine(empty_database_url)
    try:
        assert upgrade(engine, "0001") == "0001"
        with pytest.raises(SchemaOutOfDateError, match=f"at revision 0001, this PyTrain needs {head_revision()}"):
            check_schema(engine)
        assert upgrade(engine) == head_revision()
        config = alembic_config()
        with engine.begin() as conn:  # every migration can be undone
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert current_revision(engine) is None
    finally:
        engine.dispose()


def test_upgrade_to_0006_fails_the_waiting_rows_over_its_limits_naming_the_columns(empty_database_url):
    """Every UPDATE of a row checks it, NOT VALID or not: a queued row over the new limits could
    never be claimed, and stopped every worker's claim. The upgrade fails it; other rows keep theirs."""
    from pytrain.db import TaskQueue

    engine = create_engine(empty_database_url)
    deep = '{"x": ' + "[" * 3000 + "]" * 3000 + "}"
    insert = text("INSERT INTO training_tasks (model_name, sources, classes, options, status, finished_at) VALUES "
                  "('m', '{d}', CAST(:classes AS text[]), CAST(:options AS jsonb), :status, "
                  "CASE WHEN :status = 'queued' THEN NULL ELSE now() END) RETURNING id")
    try:
        assert upgrade(engine, "0005") == "0005"
        with engine.begin() as conn:
            ids = [conn.execute(insert, row).scalar_one() for row in (
                {"classes": "{a,b}", "options": deep, "status": "queued"},
                {"classes": "{" + ",".join(f"c{i}" for i in range(1001)) + "}", "options": deep, "status": "queued"},
                {"classes": "{a,b}", "options": "{}", "status": "queued"},
                {"classes": "{a,b}", "options": deep, "status": "failed"},
                {"classes": "{a,b}", "options": deep, "status": "queued"},  # running, below
            )]
            run_id = conn.execute(text("INSERT INTO task_runs (task_id, worker_id) VALUES (:id, 'w') RETURNING id"),
                                  {"id": ids[4]}).scalar_one()
            conn.execute(text("UPDATE training_tasks SET status = 'running', worker_id = 'w', run_id = :run_id, "
                              "lease_expires_at = now() + interval '1 hour' WHERE id = :id"), {"id": ids[4], "run_id": run_id})
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status, error FROM training_tasks ORDER BY id")).all()
        limits = "too large or nested too deep (migration 0006 bounds them); insert the task again with smaller values"
        assert [tuple(row) for row in rows] == [
            (ids[0], "failed", f"options {limits}"),
            (ids[1], "failed", f"options, classes {limits}"),
            (ids[2], "queued", None),
            (ids[3], "failed", None),  # ended before: left as it was
            (ids[4], "failed", f"options {limits}"),
        ]
        assert [(run.outcome, run.error) for run in TaskQueue(engine).runs(ids[4])] == [("failed", f"options {limits}")]
        claim = TaskQueue(engine).claim("w", 30)
        assert claim is not None and claim.task_id == ids[2]
    finally:
        engine.dispose()
