"""Validation of a task before it is inserted (``pytrain submit``), mirroring the CHECK constraints.

The database stays the final judge (a direct INSERT is checked by its constraints); this model
gives a CLI user one clear line per bad field before anything is sent.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pytrain.errors import ConfigurationError
from pytrain.sampling import check_sampling
from pytrain.task_options import check_options
from pytrain.task_columns import FRACTION_SUM_TOLERANCE, SQL_INT_RANGES, TASK_COLUMNS, TaskColumn, default


def _field(spec: TaskColumn) -> tuple[Any, Any]:
    """``(annotation, Field)`` of column ``spec`` for :func:`pydantic.create_model`: a required
    column must be given (a ``text[]`` one with at least one entry); any other may be ``None``
    (the database default) or a value within the column table's bounds, integers also within
    their SQL type's range (PostgreSQL would overflow)."""
    bounds = spec.pydantic_bounds()
    if spec.sql_type in SQL_INT_RANGES:
        low, high = SQL_INT_RANGES[spec.sql_type]
        if "gt" not in bounds:
            bounds.setdefault("ge", low)
        if "lt" not in bounds:
            bounds.setdefault("le", high)
    if spec.required:
        if spec.sql_type == "text[]":
            bounds["min_length"] = 1
        return spec.annotation, Field(..., description=spec.help, **bounds)
    return spec.annotation | None, Field(default=None, description=spec.help, **bounds)


class _TaskRequestRules(BaseModel):
    """The rules of a task request beyond each column's own bounds (the base of :class:`TaskRequest`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("options", check_fields=False)  # the fields come with the subclass
    @classmethod
    def _known_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                check_options(value)
            except ConfigurationError as exc:
                raise ValueError(f"{exc} ({exc.hint})" if exc.hint else str(exc)) from None
        return value

    @field_validator("sources", "classes", check_fields=False)
    @classmethod
    def _no_empty_names(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("names must not be empty")
        return list(dict.fromkeys(cleaned))  # drop duplicates, keep order

    @model_validator(mode="after")
    def _sampling_followable(self) -> "_TaskRequestRules":
        """``frame_interval`` other than 1 needs ``sampling='dense'`` (the orchestrator checks it again at claim)."""
        values = {name: default(name) if getattr(self, name) is None else getattr(self, name)
                  for name in ("sampling", "frame_interval", "num_clips", "test_clips")}
        try:
            check_sampling(values.pop("sampling"), values.pop("frame_interval"), **values)
        except ConfigurationError as exc:
            raise ValueError(f"{exc.message}: {exc.hint}" if exc.hint else exc.message) from None
        return self

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "_TaskRequestRules":
        fractions = [
            default(name) if getattr(self, name) is None else getattr(self, name)
            for name in ("train_fraction", "val_fraction", "test_fraction")
        ]
        if not math.isclose(sum(fractions), 1.0, abs_tol=FRACTION_SUM_TOLERANCE):
            raise ValueError(f"train/val/test fractions {fractions} must sum to 1")
        return self


#: The fields of :class:`TaskRequest`, one per column of :data:`pytrain.task_columns.TASK_COLUMNS`.
_TaskRequestFields = create_model(  # type: ignore[call-overload]
    "_TaskRequestFields", __base__=_TaskRequestRules, __module__=__name__, **{c.name: _field(c) for c in TASK_COLUMNS},
)


class TaskRequest(_TaskRequestFields):  # type: ignore[misc,valid-type]  # fields made from the column table
    """The user-settable columns of ``training_tasks`` (:data:`pytrain.task_columns.TASK_COLUMNS`).

    One field per column, made from the table (a new column there is a new field here): ``None``
    means "use the database default"; the bounds and patterns are the table's. Beyond them:
    ``options`` are known training options, ``sources`` and ``classes`` hold no empty name (and
    lose repeats), the sampling is one training can follow and the fractions sum to 1.
    """

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "TaskRequest":
        """Validate ``data``.

        Raises:
            ConfigurationError: one line naming every bad field.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            # The message names every field, value and rule; pydantic's own text would only repeat it.
            raise ConfigurationError(
                f"invalid task: {problems}", hint="see `pytrain submit --help` and the column table in docs/user-guide/tasks.md"
            ) from None

    def columns(self) -> dict[str, Any]:
        """The columns to insert: only those given, so the database fills in its defaults."""
        return self.model_dump(exclude_none=True)


def _problem(error: Any) -> str:
    """``field=value: rule`` for a field error; the bare rule for a whole-task one (the fractions)."""
    message = error["msg"].removeprefix("Value error, ")
    field = ".".join(str(p) for p in error["loc"])
    if not field:
        return message
    return f"{field}={error['input']!r}: {message}"
