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
an upgrade never fails on an old row. A queued row that breaks them is failed when a worker claims
it (:meth:`pytrain.db.TaskQueue.claim`).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE training_tasks
    ADD CONSTRAINT ck_training_tasks_options_within_limits CHECK (
        length(CAST(options AS text)) <= 1048576 AND NOT jsonb_path_exists(options, 'strict $.**{33}')) NOT VALID,
    ADD CONSTRAINT ck_training_tasks_progress_within_limits CHECK (
        length(CAST(progress AS text)) <= 16777216 AND NOT jsonb_path_exists(progress, 'strict $.**{33}')) NOT VALID,
    ADD CONSTRAINT ck_training_tasks_metrics_within_limits CHECK (
        length(CAST(metrics AS text)) <= 67108864 AND NOT jsonb_path_exists(metrics, 'strict $.**{33}')) NOT VALID,
    ADD CONSTRAINT ck_training_tasks_sources_within_limits CHECK (
        cardinality(sources) <= 256 AND length(array_to_string(sources, '')) <= 32768) NOT VALID,
    ADD CONSTRAINT ck_training_tasks_classes_within_limits CHECK (
        cardinality(classes) <= 1000 AND length(array_to_string(classes, '')) <= 255000) NOT VALID;
"""

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
