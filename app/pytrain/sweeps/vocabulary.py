"""The words of a sweep: its samplers, pruners, metrics, publishing modes and statuses.

One place for each vocabulary: the ``sweeps`` table's CHECKs (:mod:`pytrain.db.models`, migration
0008), ``pytrain sweep create``'s options and the Optuna objects built from a sweep's row
(:mod:`pytrain.sweeps.study`) all read them here. Imports nothing heavy (the models import it).
"""

from __future__ import annotations

#: ``--sampler``: Optuna's TPE, random search, or the grid of every combination of the params.
SAMPLERS = ("tpe", "random", "grid")
#: ``--pruner``: Optuna's successive halving (ASHA), the median rule, or no pruning.
PRUNERS = ("asha", "median", "none")
#: ``--metric`` -> the study's direction. The value is the epoch record's field of that name
#: (:class:`pytrain.spec.ProgressRecord`): what the pruner sees after each epoch, and the trial's
#: value is its best over the run's epochs.
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
#: ``--publish``: the best finished trial's model when the sweep ends, every successful trial as it
#: ends (like an ordinary task), or none (``pytrain sweep publish`` by hand).
PUBLISH_MODES = ("best", "all", "none")
#: A sweep's ``status``: trials are being created or run; every trial ended (and the best was
#: published, with ``--publish best``); cancelled by ``pytrain sweep cancel``.
SWEEP_STATUSES = ("running", "finished", "cancelled")
#: The PostgreSQL schema of Optuna's own tables (its RDB storage), apart from PyTrain's in ``public``
#: (Optuna keeps its own ``alembic_version``, which would clash with ours there). Migration 0008 creates it.
OPTUNA_SCHEMA = "optuna"


def sql_in(column: str, values) -> str:
    """``column IN ('a', 'b')``: a CHECK condition from a vocabulary (its words are plain identifiers)."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"
