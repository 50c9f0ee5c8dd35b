"""Bound the size and nesting of the task row's JSON and array columns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A worker decodes a claimed row in Python, whose JSON decoder recurses once per nesting level: one
row whose ``options`` nested 3,000 levels deep (PostgreSQL accepts it) made every claim raise
``RecursionError``, so no orchestrator could run any task behind it. ``options``, ``progress`` and
``metrics`` may now nest at most 32 levels and hold a bounded amount of text; ``sources`` and
``classes`` hold at most 256 / 1000 entries, and at most that many longest names' characters in
all. The conditions are the column table's (:func:`pytrain.task_columns.size_constraints`);
``tests/db`` checks them.

The constraints are added ``NOT VALID`` (as in 0003): they hold for every new or updated row, and
an upgrade never fails on an old row. PostgreSQL checks them on every UPDATE of a row, so a queued
or running row over the limits could never be claimed (or renewed) again: the upgrade fails it
first, naming the columns. A row that gets past them anyway (the CHECKs dropped) is failed when a
worker claims it (:meth:`pytrain.db.TaskQueue.claim`).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: ``{column: condition}``: :func:`pytrain.task_columns.size_constraints` when this migration was
#: written (``tests/db`` checks that they still agree).
LIMITS = {
    "options": "length(CAST(options AS text)) <= 1048576 AND NOT jsonb_path_exists(options, 'strict $.**{33}')",
    "progress": "length(CAST(progress AS text)) <= 16777216 AND NOT jsonb_path_exists(progress, 'strict $.**{33}')",
    "metrics": "length(CAST(metrics AS text)) <= 67108864 AND NOT jsonb_path_exists(metrics, 'strict $.**{33}')",
    "sources": "cardinality(sources) <= 256 AND length(array_to_string(sources, '')) <= 32768",
    "classes": "cardinality(classes) <= 1000 AND length(array_to_string(classes, '')) <= 255000",
}

# A queued or running row over the limits could not even be claimed once the CHECKs exist (every
# UPDATE of a row checks it, NOT VALID or not): fail it now, naming its columns, and end its run.
_OVER = " OR ".join(f"({condition}) IS FALSE" for condition in LIMITS.values())
_COLUMNS = ", ".join(f"CASE WHEN ({condition}) IS FALSE THEN '{name}' END" for name, condition in LIMITS.items())
FAIL_ROWS_OVER_LIMITS = f"""
WITH failed AS (
    UPDATE training_tasks
    SET status = 'failed', finished_at = now(), lease_expires_at = NULL,
        error = concat_ws(', ', {_COLUMNS}) || ' too large or nested too deep (migration 0006 bounds them); '
                || 'insert the task again with smaller values'
    WHERE status IN ('queued', 'running') AND ({_OVER})
    RETURNING run_id, error
)
UPDATE task_runs AS r SET finished_at = now(), outcome = 'failed', error = failed.error
FROM failed WHERE r.id = failed.run_id AND r.outcome IS NULL;
"""

UPGRADE = FAIL_ROWS_OVER_LIMITS + "ALTER TABLE training_tasks\n" + ",\n".join(
    f"    ADD CONSTRAINT ck_training_tasks_{name}_within_limits CHECK ({condition}) NOT VALID" for name, condition in LIMITS.items()
) + ";\n"

DOWNGRADE = r"""
ALTER TABLE training_tasks
    DROP CONSTRAINT ck_training_tasks_classes_within_limits,
    DROP CONSTRAINT ck_training_tasks_sources_within_limits,
    DROP CONSTRAINT ck_training_tasks_metrics_within_limits,
    DROP CONSTRAINT ck_training_tasks_progress_within_limits,
    DROP CONSTRAINT ck_training_tasks_options_within_limits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
