"""Workers: table ``workers``, each orchestrator's runner and GPU selection, recorded as it locks its id.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

An orchestrator holds its worker id's advisory lock on a connection of its own
(:class:`pytrain.db.queue.WorkerLock`); as it takes the lock it writes its row here on that
connection: the runner's name, the GPU selection it was given (``PYTRAIN_GPUS``; ``NULL``: none)
and ``backend_pid``, the lock connection's server process. A row names a live orchestrator only
while a session of that pid holds that id's lock (``LIVE_WORKERS`` joins on both), so a row left
by an orchestrator that stopped never describes the next one.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE workers (
    worker_id TEXT NOT NULL,
    runner TEXT NOT NULL,
    gpus TEXT,
    backend_pid INTEGER NOT NULL,
    locked_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_workers PRIMARY KEY (worker_id)
);
"""

DOWNGRADE = "DROP TABLE workers;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
