"""Validation of a task before it is inserted (``pytrain submit``), mirroring the CHECK constraints.

The database stays the final judge (a direct INSERT is checked by its constraints); this model
gives a CLI user one clear line per bad field before anything is sent.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytrain.db.models import ARCHITECTURE_PATTERN, LIMITS, MODEL_NAME_PATTERN, TASK_DEFAULTS
from pytrain.errors import ConfigurationError


class TaskRequest(BaseModel):
    """The user-settable columns of ``training_tasks``. ``None`` means "use the database default"."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    sources: list[str] = Field(min_length=1)
    classes: list[str] = Field(min_length=1)
    architecture: str | None = Field(default=None, pattern=ARCHITECTURE_PATTERN)
    pretrained: bool | None = None
    num_frames: int | None = Field(default=None, ge=LIMITS["num_frames"][0], le=LIMITS["num_frames"][1])
    height: int | None = Field(default=None, ge=LIMITS["height"][0], le=LIMITS["height"][1])
    width: int | None = Field(default=None, ge=LIMITS["width"][0], le=LIMITS["width"][1])
    epochs: int | None = Field(default=None, ge=LIMITS["epochs"][0], le=LIMITS["epochs"][1])
    batch_size: int | None = Field(default=None, ge=LIMITS["batch_size"][0], le=LIMITS["batch_size"][1])
    shuffle_size: int | None = Field(default=None, ge=LIMITS["shuffle_size"][0], le=LIMITS["shuffle_size"][1])
    learning_rate: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # bigint; numpy's generators need >= 0
    train_fraction: float | None = Field(default=None, gt=0, le=1)
    val_fraction: float | None = Field(default=None, ge=0, lt=1)
    test_fraction: float | None = Field(default=None, gt=0, lt=1)  # the test split gives the published accuracy
    include_other: bool | None = None
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)

    @field_validator("sources", "classes")
    @classmethod
    def _no_empty_names(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("names must not be empty")
        return list(dict.fromkeys(cleaned))  # drop duplicates, keep order

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "TaskRequest":
        fractions = [
            TASK_DEFAULTS[name] if getattr(self, name) is None else getattr(self, name)
            for name in ("train_fraction", "val_fraction", "test_fraction")
        ]
        if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
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
                f"invalid task: {problems}", hint="see `pytrain submit --help` and the column table in the README"
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
