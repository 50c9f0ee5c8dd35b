"""Migration 0008 against the vocabularies it was written from (a real PostgreSQL): every word of
:mod:`pytrain.sweeps.vocabulary` and every final status and run outcome (``pruned`` included) is
accepted by the migrated database's CHECKs, and anything else is refused by the named constraint."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pytrain.db.models import RUN_OUTCOMES, STATUSES
from pytrain.sweeps.vocabulary import METRICS, PRUNERS, PUBLISH_MODES, SAMPLERS, SWEEP_STATUSES

SWEEP = {"name": "s", "base": json.dumps({}), "params": json.dumps([]), "trials": 1, "parallel": 1, "sampler": "tpe", "pruner": "asha",
         "metric": "val_accuracy", "publish": "best", "status": "running"}
INSERT = text("INSERT INTO sweeps (name, base, params, trials, parallel, sampler, pruner, metric, publish, status) "
              "VALUES (:name, CAST(:base AS jsonb), CAST(:params AS jsonb), :trials, :parallel, :sampler, :pruner, :metric, :publish, :status)")


@pytest.mark.parametrize(("column", "words"), [("sampler", SAMPLERS), ("pruner", PRUNERS), ("metric", tuple(METRICS)),
                                               ("publish", PUBLISH_MODES), ("status", SWEEP_STATUSES)])
def test_the_sweeps_checks_take_every_word_of_the_vocabulary_and_nothing_else(engine, column, words):
    with engine.begin() as conn:
        for n, word in enumerate(words):
            conn.execute(INSERT, {**SWEEP, "name": f"s{n}", column: word})
    with pytest.raises(IntegrityError, match=f"ck_sweeps_{column}_known"), engine.begin() as conn:
        conn.execute(INSERT, {**SWEEP, "name": "bad", column: "bogus"})


def test_every_task_status_and_run_outcome_is_accepted_pruned_included(engine):
    assert "pruned" in STATUSES and "pruned" in RUN_OUTCOMES
    with engine.begin() as conn:
        task = conn.execute(text("INSERT INTO training_tasks (model_name, sources, classes) VALUES ('k', '{d}', '{a,b}') RETURNING id")).scalar()
        for status in (s for s in STATUSES if s != "running"):  # running needs a worker and a lease (its own CHECK)
            conn.execute(text("UPDATE training_tasks SET status = :s WHERE id = :t"), {"s": status, "t": task})
        for outcome in RUN_OUTCOMES:
            conn.execute(text("INSERT INTO task_runs (task_id, worker_id, finished_at, outcome) VALUES (:t, 'w', now(), :o)"),
                         {"t": task, "o": outcome})


def test_downgrading_0008_fails_pruned_tasks_with_the_reason_and_drops_the_sweeps(empty_database_url):
    from alembic import command
    from sqlalchemy import create_engine

    from pytrain.db import head_revision, upgrade
    from pytrain.db.schema import alembic_config

    engine = create_engine(empty_database_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO training_tasks (model_name, sources, classes, status) VALUES ('k', '{d}', '{a,b}', 'pruned')"))
            conn.execute(INSERT, SWEEP)
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
        with engine.connect() as conn:
            status, error = conn.execute(text("SELECT status, error FROM training_tasks")).one()
            left = conn.execute(text("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('sweeps', 'sweep_trials') "
                                     "OR table_schema = 'optuna'")).scalar()
        assert (status, error, left) == ("failed", "pruned by its sweep (downgraded below migration 0008)", 0)
        assert upgrade(engine) == head_revision()
    finally:
        engine.dispose()
