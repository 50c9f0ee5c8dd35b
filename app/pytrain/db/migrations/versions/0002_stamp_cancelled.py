"""Stamp ``finished_at`` and ``error`` when a queued task is cancelled with a plain UPDATE.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

``pytrain cancel`` sets both itself; a user who cancels with SQL
(``UPDATE training_tasks SET status = 'cancelled' WHERE id = ...``) gets them from this trigger.
A running task gets them from its worker once the run has stopped.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION pytrain_stamp_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.finished_at := COALESCE(NEW.finished_at, now());
    NEW.error := COALESCE(NEW.error, 'cancelled before it started');
    RETURN NEW;
END;
$$;

CREATE TRIGGER training_tasks_stamp_cancelled
    BEFORE UPDATE OF status ON training_tasks
    FOR EACH ROW WHEN (NEW.status = 'cancelled' AND OLD.status = 'queued')
    EXECUTE FUNCTION pytrain_stamp_cancelled();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS training_tasks_stamp_cancelled ON training_tasks;
DROP FUNCTION IF EXISTS pytrain_stamp_cancelled();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
