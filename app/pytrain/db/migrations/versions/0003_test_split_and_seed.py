"""Require a test split and a non-negative seed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Training reports the published model's test accuracy, so ``test_fraction`` must be > 0; numpy's
generators take only seeds >= 0. Both were accepted by 0001 and then failed at training time.
The constraints are added ``NOT VALID``: they hold for every new or updated row, and an upgrade
never fails on old finished rows.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE training_tasks DROP CONSTRAINT ck_training_tasks_fractions_range;
ALTER TABLE training_tasks ADD CONSTRAINT ck_training_tasks_fractions_range CHECK (
    train_fraction > 0 AND train_fraction <= 1 AND val_fraction >= 0 AND val_fraction < 1
    AND test_fraction > 0 AND test_fraction < 1
) NOT VALID;
ALTER TABLE training_tasks ADD CONSTRAINT ck_training_tasks_seed_not_negative CHECK (seed >= 0) NOT VALID;
"""

DOWNGRADE = r"""
ALTER TABLE training_tasks DROP CONSTRAINT ck_training_tasks_seed_not_negative;
ALTER TABLE training_tasks DROP CONSTRAINT ck_training_tasks_fractions_range;
ALTER TABLE training_tasks ADD CONSTRAINT ck_training_tasks_fractions_range CHECK (
    train_fraction > 0 AND train_fraction <= 1 AND val_fraction >= 0 AND val_fraction < 1
    AND test_fraction >= 0 AND test_fraction < 1
);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
