"""The one table of ``training_tasks``' user-settable columns: name, type, default, bounds, meaning.

Everything else is derived from :data:`TASK_COLUMNS` or checked against it by a test:

- the SQLAlchemy model's ``server_default`` and SQL types, and its CHECK constraints
  (:mod:`pytrain.db.models`; ``tests/db`` checks that the migrated database has the same defaults
  and constraints, so a migration that disagrees fails a test);
- :class:`pytrain.db.requests.TaskRequest` (``pytrain submit``'s validation) and ``pytrain
  submit``'s option help;
- :class:`pytrain.spec.TaskSpec`'s defaults;
- the README's column table (``tests/test_task_columns.py`` reads it).

This module imports nothing heavy: the training entrypoint (inside a container) reads it through
:mod:`pytrain.spec`.

Example::

    >>> column("epochs").default, column("epochs").check_sql()
    (50, 'epochs BETWEEN 1 AND 100000')
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any


class _Required:
    """The default of a column the user must give (``model_name``, ``sources``, ``classes``)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: ``[A-Za-z0-9_-]{1,64}``: a Triton model name that is also a safe folder name.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: The longest dataset name and class name (characters).
MAX_SOURCE_CHARS = 128
MAX_CLASS_CHARS = 255
#: A dataset folder name under the sources root (no leading dot: hidden folders are not datasets).
SOURCE_NAME_PATTERN = rf"^[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_SOURCE_CHARS - 1}}}$"
#: What the database accepts as an architecture name; training checks it against its own list.
ARCHITECTURE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: A class is the start of a folder name: no ``/``, no control character, at most 255 characters.
CLASS_NAME_PATTERN = rf"^[^/\x00-\x1f\x7f]{{1,{MAX_CLASS_CHARS}}}$"
#: ``sampling`` values: see :mod:`pytrain.training.data` for what each draws.
SAMPLING_MODES = ("uniform", "dense")
SAMPLING_PATTERN = "^(" + "|".join(SAMPLING_MODES) + ")$"
#: The most datasets and classes one task may list (checked when a worker claims the task).
MAX_SOURCES = 256
MAX_CLASSES = 1000
#: How deep the JSON columns may nest (migration 0006): nothing more than this many levels below the
#: top. A worker decodes a claimed row with Python's JSON decoder, which recurses once per level: a
#: value nested 3,000 deep (PostgreSQL takes it) raised ``RecursionError`` in every claim.
MAX_JSON_DEPTH = 32
#: The most characters of each JSON column's text (migration 0006). ``options`` are a user's
#: settings (``class_weights`` for 1000 classes fits); ``progress`` and ``metrics`` are written by
#: training (``metrics`` hold a history per epoch and the confusion matrices).
MAX_JSON_CHARS = {"options": 2**20, "progress": 2**24, "metrics": 2**26}

# PostgreSQL type -> Python type of the column's values.
_PYTHON_TYPES: dict[str, type] = {
    "text": str,
    "text[]": list,
    "boolean": bool,
    "integer": int,
    "bigint": int,
    "double precision": float,
    "jsonb": dict,
}


@dataclass(frozen=True)
class TaskColumn:
    """One user-settable column of ``training_tasks``.

    Attributes:
        name: the column name (also the ``TaskSpec`` field and the ``pytrain submit`` option).
        sql_type: the PostgreSQL type (``text``, ``text[]``, ``boolean``, ``integer``, ``bigint``,
            ``double precision``, ``jsonb``).
        default: the database default, or :data:`REQUIRED`.
        low, high: bounds of the value (``None``: unbounded on that side).
        low_open, high_open: the bound itself is excluded (``> low`` / ``< high``).
        pattern: a regular expression the value must match (text columns).
        check: name of the CHECK constraint holding the bounds (without the
            ``ck_training_tasks_`` prefix); several columns may share one (the fractions).
        condition: the CHECK's SQL condition when it is neither bounds nor a pattern
            (``jsonb_typeof(options) = 'object'``).
        help: one line for ``pytrain submit --help`` (the README's table says more).
    """

    name: str
    sql_type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    pattern: str | None = None
    check: str | None = None
    condition: str | None = None

    @property
    def python_type(self) -> type:
        """The Python type of the values (``int`` for ``integer``/``bigint``)."""
        return _PYTHON_TYPES[self.sql_type]

    @property
    def required(self) -> bool:
        """Whether an INSERT must give this column (it has no database default)."""
        return self.default is REQUIRED

    def sql_default(self) -> str | None:
        """The default as a PostgreSQL literal (``'r3d_18'``, ``false``, ``0.001``), ``None`` if required."""
        if self.required:
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, str):
            return "'" + self.default.replace("'", "''") + "'"
        if self.sql_type == "jsonb":
            return "'" + json.dumps(self.default).replace("'", "''") + "'::jsonb"
        return repr(self.default)

    def check_sql(self) -> str | None:
        """The bounds as a SQL condition (``epochs BETWEEN 1 AND 100000``), ``None`` when unbounded.

        Integer bounds closed on both sides read as ``BETWEEN``; every other combination as
        ``low-comparison AND high-comparison``.
        """
        parts: list[str] = []
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open) \
                and self.python_type is int:
            return f"{self.name} BETWEEN {int(self.low)} AND {int(self.high)}"
        if self.low is not None:
            parts.append(f"{self.name} {'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{self.name} {'<' if self.high_open else '<='} {_number(self.high)}")
        return " AND ".join(parts) or None

    def bounds_text(self) -> str:
        """The bounds for people: ``1..512``, ``> 0, <= 10``, ``>= 0``; empty when unbounded."""
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"{_number(self.low)}..{_number(self.high)}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return ", ".join(parts)

    def pydantic_bounds(self) -> dict[str, Any]:
        """The bounds as ``pydantic.Field`` keywords (``ge``/``gt``/``le``/``lt``/``pattern``)."""
        bounds: dict[str, Any] = {}
        if self.low is not None:
            bounds["gt" if self.low_open else "ge"] = self.low
        if self.high is not None:
            bounds["lt" if self.high_open else "le"] = self.high
        if self.pattern is not None:
            bounds["pattern"] = self.pattern
        return bounds

    def help_text(self) -> str:
        """``help`` plus the default and bounds, for ``pytrain submit --help``."""
        extras = []
        if not self.required and not isinstance(self.default, bool):
            extras.append(f"default {self.default}")
        if self.bounds_text():
            extras.append(self.bounds_text())
        return f"{self.help} ({'; '.join(extras)})." if extras else f"{self.help}."


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

#: The user-settable columns of ``training_tasks``, in table order.
TASK_COLUMNS: tuple[TaskColumn, ...] = (
    TaskColumn("model_name", "text", REQUIRED, "Triton model name, [A-Za-z0-9_-]{1,64}",
               pattern=MODEL_NAME_PATTERN, check="model_name_format"),
    TaskColumn("sources", "text[]", REQUIRED, "Dataset name(s); repeat or comma-separate"),
    TaskColumn("classes", "text[]", REQUIRED, "Class name(s); repeat or comma-separate"),
    TaskColumn("architecture", "text", "r3d_18",
               "Model architecture: r3d_18 (for GPUs), tiny (trains on a CPU), or another of training's list",
               pattern=ARCHITECTURE_PATTERN, check="architecture_format"),
    TaskColumn("pretrained", "boolean", False, "Start from pretrained weights"),
    TaskColumn("num_frames", "integer", 20, "Frames per clip", low=1, high=512, check="num_frames_range"),
    TaskColumn("height", "integer", 224, "Frame height in pixels", low=8, high=4096, check="height_range"),
    TaskColumn("width", "integer", 224, "Frame width in pixels", low=8, high=4096, check="width_range"),
    TaskColumn("epochs", "integer", 50, "Maximum epochs", low=1, high=100_000, check="epochs_range"),
    TaskColumn("batch_size", "integer", 4, "Clips per optimisation step", low=1, high=4096, check="batch_size_range"),
    TaskColumn("shuffle_size", "integer", 300, "Shuffle buffer in clips", low=1, high=1_000_000, check="shuffle_size_range"),
    TaskColumn("learning_rate", "double precision", 0.001, "Peak learning rate", low=0, high=10, low_open=True,
               check="learning_rate_range"),
    # bigint, and numpy's generators take only seeds >= 0 (migration 0003).
    TaskColumn("seed", "bigint", 0, "Seed of split, sampling, augmentation and initialisation", low=0,
               check="seed_not_negative"),
    TaskColumn("train_fraction", "double precision", 0.6, "Share of each class for training", low=0, high=1,
               low_open=True, check="fractions_range"),
    TaskColumn("val_fraction", "double precision", 0.2, "Share of each class for validation (may be 0)", low=0, high=1,
               high_open=True, check="fractions_range"),
    # The test split gives the published accuracy, so it may not be empty (migration 0003).
    TaskColumn("test_fraction", "double precision", 0.2, "Share of each class for the test set", low=0, high=1,
               low_open=True, high_open=True, check="fractions_range"),
    TaskColumn("include_other", "boolean", False, "Unselected classes become 'Other'"),
    TaskColumn("priority", "integer", 0, "Higher runs first"),
    # Migration 0005: clip sampling for long videos (MMAction2's clip_len/frame_interval/num_clips).
    TaskColumn("sampling", "text", "uniform",
               "Clip sampling: uniform (num_frames spread over the whole video) or dense (num_frames frames "
               "frame_interval apart, a window at a random start)", pattern=SAMPLING_PATTERN, check="sampling_known"),
    TaskColumn("frame_interval", "integer", 1, "Frames between two sampled frames in dense sampling (must be 1 with uniform)",
               low=1, high=64, check="frame_interval_range"),
    TaskColumn("num_clips", "integer", 1, "Clips drawn from each training video per epoch", low=1, high=64,
               check="num_clips_range"),
    TaskColumn("test_clips", "integer", 1,
               "Evenly spaced clips per video whose probabilities are averaged at validation, test and prediction",
               low=1, high=64, check="test_clips_range"),
    # Migration 0005: Slurm (the other runners need 1).
    TaskColumn("nodes", "integer", 1, "Nodes to train on (the slurm runner; the others run on 1)", low=1, high=1024,
               check="nodes_range"),
    # Migration 0005: training settings beyond the columns (pytrain.task_options.TrainConfig).
    TaskColumn("options", "jsonb", {}, "Further training settings as a JSON object (cache, class_weights, patience, ...)",
               condition="jsonb_typeof(options) = 'object'", check="options_object"),
)

_BY_NAME = {c.name: c for c in TASK_COLUMNS}

#: The train/val/test fractions must sum to 1 within this (float rounding of e.g. 0.7 + 0.1 + 0.2).
FRACTION_SUM_TOLERANCE = 1e-6

#: The integer range of each SQL type, the bound pydantic checks before PostgreSQL would overflow.
SQL_INT_RANGES: dict[str, tuple[int, int]] = {"integer": (-_INT32 - 1, _INT32), "bigint": (-_INT64 - 1, _INT64)}


def column(name: str) -> TaskColumn:
    """The column ``name``.

    Raises:
        KeyError: no such user-settable column.
    """
    return _BY_NAME[name]


def task_defaults() -> dict[str, Any]:
    """``{column: database default}`` for every column that has one (what a minimal INSERT gets);
    a fresh copy each call (``options``' default is a dict)."""
    return {c.name: copy.deepcopy(c.default) for c in TASK_COLUMNS if not c.required}


def default(name: str) -> Any:
    """The database default of column ``name`` (for dataclass field defaults).

    Raises:
        KeyError: no such column, or it has no default.
    """
    value = column(name).default
    if value is REQUIRED:
        raise KeyError(f"column {name} has no default")
    return copy.deepcopy(value)


def check_constraints() -> dict[str, str]:
    """``{constraint name (without prefix): SQL condition}`` from the columns' bounds and patterns.

    Columns sharing a ``check`` are joined with ``AND`` in table order (the fractions).
    """
    checks: dict[str, list[str]] = {}
    for c in TASK_COLUMNS:
        if c.check is None:
            continue
        if c.condition is not None:
            condition = c.condition
        elif c.pattern is not None:
            condition = f"{c.name} ~ '{c.pattern}'"
        else:
            condition = c.check_sql()
        checks.setdefault(c.check, []).append(condition)
    return {name: " AND ".join(parts) for name, parts in checks.items()}


def size_constraints() -> dict[str, str]:
    """``{constraint name (without prefix): SQL condition}`` bounding the size and nesting of every
    JSON and array column of ``training_tasks`` (migration 0006, named ``<column>_within_limits``).

    JSON: at most :data:`MAX_JSON_CHARS` characters of text and nothing nested deeper than
    :data:`MAX_JSON_DEPTH` (``strict $.**{N}`` finds the values at level ``N``; PostgreSQL walks
    no deeper, so the check costs less than parsing the value: 0.4 ms for a 3,000-deep one). Arrays (``sources``,
    ``classes``): at most :data:`MAX_SOURCES` / :data:`MAX_CLASSES` entries, and at most that many
    longest names' characters in all (``*_not_empty`` already refuses a multidimensional array).
    """
    checks = {
        f"{name}_within_limits": (f"length(CAST({name} AS text)) <= {chars} "
                                  f"AND NOT jsonb_path_exists({name}, 'strict $.**{{{MAX_JSON_DEPTH + 1}}}')")
        for name, chars in MAX_JSON_CHARS.items()
    }
    for name, entries, chars in (("sources", MAX_SOURCES, MAX_SOURCE_CHARS), ("classes", MAX_CLASSES, MAX_CLASS_CHARS)):
        checks[f"{name}_within_limits"] = (f"cardinality({name}) <= {entries} "
                                           f"AND length(array_to_string({name}, '')) <= {entries * chars}")
    return checks
