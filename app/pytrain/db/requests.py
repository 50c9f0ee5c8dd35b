"""Validation of a task before it is inserted (``pytrain submit``), mirroring the CHECK constraints.

The database stays the final judge (a direct INSERT is checked by its constraints); this model
gives a CLI user one clear line per bad field before anything is sent.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytrain.errors import ConfigurationError
from pytrain.sampling import check_sampling
from pytrain.task_options import check_options
from pytrain.task_columns import FRACTION_SUM_TOLERANCE, SQL_INT_RANGES, column, default


def _field(name: str) -> Any:
    """A ``Field`` for column ``name``: ``None`` (the database default) or a value within the column
    table's bounds; integers also within their SQL type's range (PostgreSQL would overflow)."""
    spec = column(name)
    bounds = spec.pydantic_bounds()
    if spec.sql_type in SQL_INT_RANGES:
        low, high = SQL_INT_RANGES[spec.sql_type]
        if "gt" not in bounds:
            bounds.setdefault("ge", low)
        if "lt" not in bounds:
            bounds.setdefault("le", high)
    return Field(default=None if not spec.required else ..., description=spec.help, **bounds)


class TaskRequest(BaseModel):
    """The user-settable columns of ``training_tasks`` (:data:`pytrain.task_columns.TASK_COLUMNS`).

    ``None`` means "use the database default". The bounds come from the column table; the
    annotations repeat only the Python types.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = _field("model_name")
    sources: list[str] = Field(min_length=1)
    classes: list[str] = Field(min_length=1)
    architecture: str | None = _field("architecture")
    pretrained: bool | None = _field("pretrained")
    num_frames: int | None = _field("num_frames")
    height: int | None = _field("height")
    width: int | None = _field("width")
    epochs: int | None = _field("epochs")
    batch_size: int | None = _field("batch_size")
    shuffle_size: int | None = _field("shuffle_size")
    learning_rate: float | None = _field("learning_rate")
    seed: int | None = _field("seed")
    train_fraction: float | None = _field("train_fraction")
    val_fraction: float | None = _field("val_fraction")
    test_fraction: float | None = _field("test_fraction")
    include_other: bool | None = _field("include_other")
    priority: int | None = _field("priority")
    sampling: str | None = _field("sampling")
    frame_interval: int | None = _field("frame_interval")
    num_clips: int | None = _field("num_clips")
    test_clips: int | None = _field("test_clips")
    nodes: int | None = _field("nodes")
    options: dict[str, Any] | None = _field("options")

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                check_options(value)
            except ConfigurationError as exc:
                raise ValueError(f"{exc} ({exc.hint})" if exc.hint else str(exc)) from None
        return value

    @field_validator("sources", "classes")
    @classmethod
    def _no_empty_names(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("names must not be empty")
        return list(dict.fromkeys(cleaned))  # drop duplicates, keep order

    @model_validator(mode="after")
    def _sampling_followable(self) -> "TaskRequest":
        """``frame_interval`` other than 1 needs ``sampling='dense'`` (the orchestrator checks it again at claim)."""
        values = {name: default(name) if getattr(self, name) is None else getattr(self, name)
                  for name in ("sampling", "frame_interval", "num_clips", "test_clips")}
        try:
            check_sampling(values.pop("sampling"), values.pop("frame_interval"), **values)
        except ConfigurationError as exc:
            raise ValueError(f"{exc.message}: {exc.hint}" if exc.hint else exc.message) from None
        return self

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "TaskRequest":
        fractions = [
            default(name) if getattr(self, name) is None else getattr(self, name)
            for name in ("train_fraction", "val_fraction", "test_fraction")
        ]
        if not math.isclose(sum(fractions), 1.0, abs_tol=FRACTION_SUM_TOLERANCE):
            raise ValueError(f"train/val/test fractions {fractions} must sum to 1")
        return self

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
