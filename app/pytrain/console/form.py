"""The Submit page's form, made from the column table and the training options, checked as
``pytrain submit`` checks a task.

Every field comes from :data:`pytrain.task_columns.TASK_COLUMNS` (type, bounds, default, help)
or :class:`pytrain.task_options.TrainConfig` (the ``options`` column: one field per option, its
default and range). A field left empty takes the database's (or training's) default, as an
option left out of ``pytrain submit`` does. :func:`submit_form` validates with
:class:`pytrain.db.TaskRequest` and :func:`pytrain.task_check.check_submission` (the CLI's own
checks) and inserts nothing when either refuses; each problem is attributed to the field it names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pydantic import ValidationError

from pytrain.db import SourceRegistry, TaskQueue, TaskRequest
from pytrain.errors import PyTrainError
from pytrain.settings import Settings
from pytrain.task_check import check_submission
from pytrain.task_columns import TASK_COLUMNS, TaskColumn
from pytrain.task_options import RUNNER_OPTIONS, TrainConfig, _range_text

#: The prefix of an option's form field (``option.patience``).
OPTION_PREFIX = "option."
#: The field an error that names no field is shown beside (the form's top).
FORM = "_form"
# Words of an error message that point at a field when it names none (a dataset, a class folder).
_MENTIONS = (("class", "classes"), ("dataset", "sources"), ("fraction", "test_fraction"), ("split", "test_fraction"),
             ("option", "options"), ("frame", "frame_interval"))


@dataclass(frozen=True)
class FormField:
    """One input of the Submit form.

    Attributes:
        name: the column (``epochs``) or ``option.<key>``.
        kind: ``text``, ``list`` (comma-separated), ``bool``, ``int``, ``float``.
        help: the column table's help with default and bounds, or the option's default and range.
        required: the column has no default.
        low, high: the HTML input's ``min``/``max`` (the server checks the exact bounds).
        default: shown as the placeholder.
    """

    name: str
    kind: str
    help: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    default: Any = None

    @property
    def label(self) -> str:
        return self.name.removeprefix(OPTION_PREFIX).replace("_", " ")


_KINDS = {"text": "text", "text[]": "list", "boolean": "bool", "integer": "int", "bigint": "int", "double precision": "float"}


def _column_field(c: TaskColumn) -> FormField:
    return FormField(c.name, _KINDS[c.sql_type], c.help_text(), c.required, c.low, c.high, None if c.required else c.default)


def _option_help() -> dict[str, str]:
    """Each option's line of :class:`TrainConfig`'s ``Attributes:`` (the one place it is described)."""
    helps: dict[str, str] = {}
    name = None
    for line in (TrainConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        match = re.match(r"^ {8}(\w+): (.*)", line)
        if match:
            name, helps[match[1]] = match[1], match[2]
        elif name and line.startswith(" " * 12):
            helps[name] += " " + line.strip()
        else:
            name = None
    return {key: re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "") for key, text in helps.items()}


def _option_field(option: Any) -> FormField:
    default = option.default
    kind = "bool" if isinstance(default, bool) else "int" if isinstance(default, int) else "float" if isinstance(default, float) else "text"
    bounds = option.metadata.get("bounds", {})
    limits = f"; {_range_text(bounds)}" if bounds else ""
    text = _option_help().get(option.name, "Training option").rstrip(".")
    return FormField(OPTION_PREFIX + option.name, kind, f"{text} (default {default}{limits}).",
                     low=bounds.get("ge", bounds.get("gt")), high=bounds.get("le", bounds.get("lt")), default=default)


def form_fields() -> list[FormField]:
    """The columns' fields in table order (``options`` as one field per training option and runner option)."""
    columns = [_column_field(c) for c in TASK_COLUMNS if c.sql_type != "jsonb"]
    options = [_option_field(o) for o in fields(TrainConfig)]
    runner = [FormField(OPTION_PREFIX + "experiment", "text", "MLflow experiment of the task's runs (default: the model name).")]
    return columns + options + [f for f in runner if f.name.removeprefix(OPTION_PREFIX) in RUNNER_OPTIONS]


def _value(field: FormField, raw: str | None, errors: dict[str, str]) -> Any:
    """The typed value of one input; ``None``: left empty (the default); a bad number goes to ``errors``."""
    if field.kind == "bool":
        value = raw is not None
        return None if value == bool(field.default) else value  # unchanged: the default
    text = (raw or "").strip()
    if not text:
        return None
    if field.kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return int(text) if field.kind == "int" else float(text) if field.kind == "float" else text
    except ValueError:
        errors[field.name] = f"{text[:40]!r} is not a {'whole number' if field.kind == 'int' else 'number'}"
        return None


def read_form(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(the given columns with an "options" object, errors by field)`` of a posted form."""
    errors: dict[str, str] = {}
    given: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for field in form_fields():
        value = _value(field, form.get(field.name), errors)
        if value is None:
            continue
        if field.name.startswith(OPTION_PREFIX):
            options[field.name.removeprefix(OPTION_PREFIX)] = value
        else:
            given[field.name] = value
    if options:
        given["options"] = options
    return given, errors


def field_of(message: str) -> str:
    """The form field an error message is about: the first column or option it names as a word,
    else one its words point at (a class folder: ``classes``), else :data:`FORM`."""
    names = [f.name for f in form_fields()]
    found = [(m.start(), n) for n in names for m in [re.search(rf"\b{re.escape(n.removeprefix(OPTION_PREFIX))}\b", message)] if m]
    if found:
        return min(found)[1]
    lowered = message.lower()
    return next((name for word, name in _MENTIONS if word in lowered), FORM)


def submit_form(form: Mapping[str, Any], *, queue: TaskQueue, settings: Settings) -> tuple[int | None, dict[str, str]]:
    """Check the posted form as ``pytrain submit`` does and insert the task when it passes.

    Returns:
        ``(task id, {})``, or ``(None, {field: message})`` with nothing inserted.
    """
    given, errors = read_form(form)
    if errors:
        return None, errors
    try:
        request = TaskRequest.model_validate(given)
    except ValidationError as exc:
        names = {f.name for f in form_fields()}
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            name = str(error["loc"][0]) if error["loc"] else FORM
            errors.setdefault(name if name in names else field_of(message), message)
        return None, errors
    try:
        check_submission(request.columns(), sources_dir=settings.sources_dir, registered=SourceRegistry(queue.engine).names())
        return queue.submit(request.columns()), {}
    except PyTrainError as exc:
        return None, {field_of(exc.message): str(exc)}
