"""A sweep's parameters: ``--param SPEC`` parsed, checked against the task's own rules, and applied.

A SPEC names a task column or an option and a distribution::

    learning_rate=loguniform:1e-4:3e-3        a float, log-uniform between the bounds
    options.label_smoothing=uniform:0:0.2     a float, uniform between the bounds
    num_frames=int:8:32:8                     an integer from 8 to 32 in steps of 8 (step default 1)
    architecture=choice:r3d_18,r2plus1d_18    one of the listed values

Nothing here keeps a bound of its own: a column's type and bounds are the column table's
(:data:`pytrain.task_columns.TASK_COLUMNS`), an option's type and range :class:`TrainConfig`'s, and
every end of a range and every choice is checked by :func:`pytrain.task_check.check_task` in the
base task (so a value the worker would refuse, e.g. ``frame_interval`` 2 with uniform sampling, is
refused at ``sweep create``). Imports nothing heavy; Optuna's distributions are built on demand.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.task_check import check_architecture, check_task
from pytrain.task_columns import TASK_COLUMNS, column
from pytrain.task_options import TrainConfig

#: The distribution kinds of a SPEC and the value type each draws.
KINDS = ("loguniform", "uniform", "int", "choice")
#: Prefix of a SPEC naming an option (a key of the ``options`` column) rather than a column.
OPTION_PREFIX = "options."
#: Columns a sweep may not vary: who the model is, what it learns from, and the options object
#: itself (its keys are varied one by one as ``options.KEY``).
_FIXED = ("model_name", "sources", "classes", "options")
_EXAMPLE = "e.g. learning_rate=loguniform:1e-4:3e-3, architecture=choice:tiny,r3d_18, options.label_smoothing=uniform:0:0.2"


@dataclass(frozen=True)
class ParamSpec:
    """One swept parameter.

    Attributes:
        name: a column (``learning_rate``) or ``options.KEY`` (``options.label_smoothing``).
        kind: one of :data:`KINDS`.
        low, high: the range of ``loguniform``/``uniform``/``int`` (inclusive), else ``None``.
        step: the step of ``int`` (default 1), else ``None``.
        choices: the values of ``choice``, typed as the column or option (``str``, ``int``,
            ``float``, ``bool``), else ``None``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def option(self) -> str | None:
        """The option key of an ``options.KEY`` spec, else ``None``."""
        return self.name[len(OPTION_PREFIX):] if self.name.startswith(OPTION_PREFIX) else None

    def values_to_check(self) -> tuple[Any, ...]:
        """The values that bound what the spec can draw: both ends of a range, or every choice."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def grid_values(self) -> list[Any]:
        """Every value of the spec for the grid sampler.

        Raises:
            ConfigurationError: a continuous range (``loguniform``/``uniform``) has no grid.
        """
        if self.choices is not None:
            return list(self.choices)
        if self.kind == "int":
            assert self.low is not None and self.high is not None and self.step is not None
            return list(range(int(self.low), int(self.high) + 1, self.step))
        raise ConfigurationError(f"--param {self.name}={self.kind}:... has no grid: a grid needs choice: or int: values",
                                 hint=f"use --sampler tpe or random, or e.g. {self.name}=choice:V1,V2")

    def distribution(self) -> Any:
        """The Optuna distribution (``FloatDistribution``, ``IntDistribution``, ``CategoricalDistribution``)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices or ()))
        if self.kind == "int":
            return IntDistribution(int(self.low or 0), int(self.high or 0), step=self.step or 1)
        return FloatDistribution(float(self.low or 0), float(self.high or 0), log=self.kind == "loguniform")

    def apply(self, task: dict[str, Any], value: Any) -> dict[str, Any]:
        """``task`` (column -> value) with this parameter set to ``value`` (a copy)."""
        task = copy.deepcopy(task)
        if self.option is None:
            task[self.name] = value
        else:
            task["options"] = {**task.get("options", {}), self.option: value}
        return task

    def to_json(self) -> dict[str, Any]:
        """The spec as stored in ``sweeps.params``."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.choices is not None:
            data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ParamSpec":
        """Read back :meth:`to_json`."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("choices") is not None:
            values["choices"] = tuple(values["choices"])
        return cls(**values)


def parse_param(text: str) -> ParamSpec:
    """Parse one ``NAME=KIND:ARGS`` SPEC, typing its values as the column or option they set.

    Raises:
        ConfigurationError: not ``NAME=KIND:ARGS``, an unknown column or option, a kind the
            value's type cannot take (``choice`` only for text and booleans), a value that is not
            a number where one is needed, or an empty range (``LOW >= HIGH``, no choice).
    """
    name, sep, distribution = text.partition("=")
    kind, colon, args = distribution.partition(":")
    name, kind = name.strip(), kind.strip()
    if not sep or not colon or not name:
        raise ConfigurationError(f"--param {text!r} is not NAME=KIND:ARGS", hint=_EXAMPLE)
    if kind not in KINDS:
        raise ConfigurationError(f"--param {name}: unknown distribution {kind!r}", hint=f"one of {', '.join(KINDS)}; {_EXAMPLE}")
    value_type = _value_type(name)
    if kind == "choice":
        choices = tuple(dict.fromkeys(_typed(name, value_type, part.strip()) for part in args.split(",") if part.strip()))
        if not choices:
            raise ConfigurationError(f"--param {name}=choice: lists no value", hint=f"e.g. {name}=choice:V1,V2")
        return ParamSpec(name, kind, choices=choices)
    if value_type not in (int, float):
        raise ConfigurationError(f"--param {name} is a {value_type.__name__}: it takes choice:V1,V2 only, not {kind}",
                                 hint=f"e.g. {name}=choice:...")
    if kind != "int" and value_type is int:
        raise ConfigurationError(f"--param {name} is an integer: use int:LOW:HIGH[:STEP] or choice:, not {kind}",
                                 hint=f"e.g. {name}=int:8:32:8")
    return _parse_range(name, kind, args)


def _parse_range(name: str, kind: str, args: str) -> ParamSpec:
    parts = [part.strip() for part in args.split(":")]
    wanted = (2, 3) if kind == "int" else (2,)
    if len(parts) not in wanted:
        form = "int:LOW:HIGH[:STEP]" if kind == "int" else f"{kind}:LOW:HIGH"
        raise ConfigurationError(f"--param {name}={kind}:{args} is not {form}", hint=_EXAMPLE)
    number = int if kind == "int" else float
    low, high, *step = (_typed(name, number, part) for part in parts)
    if not low < high:
        raise ConfigurationError(f"--param {name}={kind}:{args} is an empty range: LOW {low} must be below HIGH {high}",
                                 hint=f"e.g. {name}={kind}:{low}:{low * 2 if low > 0 else 1}")
    if kind == "loguniform" and low <= 0:
        raise ConfigurationError(f"--param {name}=loguniform:{args}: LOW must be above 0 for a log scale", hint="or use uniform:")
    if step and not 1 <= step[0] <= high - low:
        raise ConfigurationError(f"--param {name}=int:{args}: STEP {step[0]} must be between 1 and HIGH - LOW", hint="e.g. int:8:32:8")
    return ParamSpec(name, kind, low=low, high=high, step=(step[0] if step else 1) if kind == "int" else None)


def _value_type(name: str) -> type:
    """The Python type of what ``name`` sets: the column's, or the option's default's.

    Raises:
        ConfigurationError: no such column or option, or a column a sweep may not vary.
    """
    if name.startswith(OPTION_PREFIX):
        key = name[len(OPTION_PREFIX):]
        known = {f.name: f for f in fields(TrainConfig)}
        if key not in known:
            raise ConfigurationError(f"--param {name}: unknown option {key!r}", hint=f"known options: {', '.join(sorted(known))}")
        return type(getattr(TrainConfig, key))
    variable = [c.name for c in TASK_COLUMNS if c.name not in _FIXED]
    if name in _FIXED or name not in variable:
        what = "cannot be swept" if name in _FIXED else "is not a task column"
        raise ConfigurationError(f"--param {name} {what}", hint=f"columns: {', '.join(variable)}; or options.KEY")
    return column(name).python_type


def _typed(name: str, value_type: type, text: str) -> Any:
    """``text`` as a ``value_type`` value (``true``/``false`` for booleans).

    Raises:
        ConfigurationError: naming the parameter and the text.
    """
    try:
        if value_type is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        value = value_type(text)
    except ValueError:
        raise ConfigurationError(f"--param {name}: {text!r} is not a {value_type.__name__}",
                                 hint="true or false" if value_type is bool else None) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"--param {name}: {text!r} is not a finite number")
    return value


def check_params(base: Mapping[str, Any], params: list[ParamSpec], *, registered: list[str] | None = None) -> None:
    """Check the base task and every value the specs can draw, before anything is created.

    Each end of a range and each choice is set in the base task and the whole task checked by
    :func:`pytrain.task_check.check_task` (columns' bounds and patterns, options' types and
    ranges, the sampling), and an architecture against training's list where training is installed
    (:func:`pytrain.task_check.check_architecture`, as ``pytrain submit``).

    Args:
        base: every user-settable column of the base task (defaults filled in).
        params: the specs.
        registered: the registered datasets (``None``: not checked).

    Raises:
        ConfigurationError: a parameter named twice, no parameter, a value out of bounds (the
            parameter, the value and the rule named), or a base task without a validation split
            (the pruner and the trial's value read the validation metric).
    """
    if not params:
        raise ConfigurationError("a sweep needs at least one --param", hint=_EXAMPLE)
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"--param {', '.join(twice)} given more than once", hint="give each parameter once")
    check_task(base, sources_dir=None, registered=registered)
    if not base["val_fraction"] > 0:
        raise ConfigurationError(f"the base task's val_fraction is {base['val_fraction']}: a sweep needs a validation split",
                                 hint="the pruner and each trial's value read the validation metric; e.g. val_fraction 0.2")
    for spec in params:
        for value in spec.values_to_check():
            try:
                check_task(spec.apply(dict(base), value), sources_dir=None, registered=registered)
                if spec.name == "architecture":
                    check_architecture(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"--param {spec.name}: {value!r} is refused: {exc.message}", hint=exc.hint) from None


def format_value(value: Any) -> str:
    """A drawn value as ``pytrain sweep show`` and the console show it: a float to 4 significant
    digits (``0.0003162``), anything else as ``str``."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
