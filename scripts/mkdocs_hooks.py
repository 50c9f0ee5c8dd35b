"""MkDocs hooks (``hooks:`` in ``mkdocs.yml``): the reference pages, generated from the code at build time.

Nothing generated is committed, so the reference cannot drift from the code it describes:

- ``reference/task-columns.md`` from :data:`pytrain.task_columns.TASK_COLUMNS`;
- ``reference/task-options.md`` from :class:`pytrain.task_options.TrainConfig` (the ``options`` column's keys;
  each described in its docstring's ``Attributes:``);
- ``reference/settings.md``     from :class:`pytrain.settings.Settings` (every ``PYTRAIN_*`` variable);
- ``reference/cli.md``          from the ``pytrain`` command itself (each command's ``--help``, found by
  walking the Typer app of :mod:`pytrain.cli.main`).

The ``Decisions`` section of the navigation is filled with every ``docs/adr/*.md`` in number order, so
a new ADR is listed without a second edit. The ``render_*`` functions are plain functions of the code:
``tests/docs/test_docs_site.py`` calls them and builds the site with ``mkdocs build --strict``.

Serve the site locally with ``scripts/docs.sh`` (``mkdocs serve``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "app") not in sys.path:  # document this checkout's code, not another installed copy
    sys.path.insert(0, str(ROOT / "app"))

#: The generated pages: ``{path under docs/: render function name}``.
GENERATED = {
    "reference/task-columns.md": "render_task_columns",
    "reference/task-options.md": "render_task_options",
    "reference/settings.md": "render_settings",
    "reference/cli.md": "render_cli",
}
#: The navigation section that lists ``docs/adr/*.md``.
ADR_SECTION = "Decisions (ADRs)"
#: The width the CLI's help is drawn at (Rich reads ``COLUMNS``).
HELP_COLUMNS = 100

_log = logging.getLogger("mkdocs.hooks.reference")


def _cell(text: str) -> str:
    """Inline code or plain text for a Markdown table cell: one line, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """Text (with ``code`` spans, as docstrings and help write it) for a table cell: outside code spans
    ``<sources_dir>`` is not taken for HTML, nor ``*`` for emphasis; Sphinx roles (``:func:`x```) become code."""
    parts = re.split(r"((?<!`)`+[^`]+`+(?!`))", re.sub(r":\w+:(`[^`]+`)", r"\1", _cell(text)))
    return "".join(part if part.startswith("`") else
                   part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
                   for part in parts)


def _code(text: str) -> str:
    """Inline code that survives backquotes inside ``text``."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


# --- task columns --------------------------------------------------------------------------

def render_task_columns() -> str:
    """The user-settable columns of ``training_tasks``: name, SQL type, default, bounds or pattern, the
    CHECK constraint, meaning (from :data:`pytrain.task_columns.TASK_COLUMNS`)."""
    from pytrain.task_columns import TASK_COLUMNS

    lines = [
        "# Task columns",
        "",
        "The columns a task row may set, generated from `app/pytrain/task_columns.py` (the one table the",
        "SQLAlchemy model, the CHECK constraints, `pytrain submit` and `TaskSpec` are derived from).",
        "Only the *required* ones must be given; an INSERT with a value outside its bounds fails with",
        "PostgreSQL's error naming the constraint (`ck_training_tasks_<check>`). What each column does, in",
        "more words, and the columns the orchestrator writes: [Training tasks](../user-guide/tasks.md#the-training_tasks-table).",
        "",
        "| column | type | default | bounds | CHECK | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for c in TASK_COLUMNS:
        default = "required" if c.required else _code(c.sql_default())
        bounds = c.bounds_text() or (_code(c.pattern) if c.pattern else (_code(c.condition) if c.condition else ""))
        check = _code(c.check) if c.check else ""
        lines.append(f"| `{c.name}` | {c.sql_type} | {default} | {bounds} | {check} | {_prose(c.help)} |")
    return "\n".join(lines) + "\n"


# --- task options --------------------------------------------------------------------------

def docstring_attributes(cls: type) -> dict[str, str]:
    """``{name: description}`` from the ``Attributes:`` section of a Google-style class docstring
    (a description may go on over more deeply indented lines)."""
    import inspect

    described: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside, name, indent = False, None, 0
    for line in lines:
        if line.strip() == "Attributes:":
            inside, indent = True, len(line) - len(line.lstrip()) + 4
            continue
        if not inside:
            continue
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break  # the section ended
        stripped = line.strip()
        head, sep, rest = stripped.partition(": ")
        if len(line) - len(line.lstrip()) == indent and sep and head.replace(",", "").replace(" ", "").isidentifier():
            name = head
            described[name] = rest
        elif name is not None and stripped:
            described[name] += " " + stripped
    return described


def render_task_options() -> str:
    """The keys of a task's ``options``: name, type, default, range, meaning (from
    :class:`pytrain.task_options.TrainConfig`'s fields, their ``bounds`` metadata and its docstring)."""
    from dataclasses import fields

    from pytrain.task_options import RUNNER_OPTIONS, TrainConfig

    described = docstring_attributes(TrainConfig)
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    lines = [
        "# Task options",
        "",
        "The keys of a task row's `options` column (a JSON object, default `{}`), generated from",
        "`pytrain.task_options.TrainConfig`. `pytrain submit` and the orchestrator (when it claims the task) check",
        "them: an unknown key, a wrong type or a value out of range fails the task, naming the key.",
        f"Read by a runner or the orchestrator, not by training: {', '.join(f'`{k}`' for k in RUNNER_OPTIONS)}",
        "(see [A Slurm cluster](../operations/slurm.md)). More: [Training options](../user-guide/training-options.md).",
        "",
        "| key | type | default | range | meaning |",
        "|---|---|---|---|---|",
    ]
    for option in fields(TrainConfig):
        bounds = ", ".join(f"{words[k]} {v:g}" for k, v in option.metadata.get("bounds", {}).items())
        default = _code(json.dumps(option.default))
        lines.append(f"| `{option.name}` | {option.type} | {default} | {bounds} | {_prose(described.get(option.name, ''))} |")
    return "\n".join(lines) + "\n"


# --- settings ------------------------------------------------------------------------------

def _type_name(annotation: Any) -> str:
    """``int | None`` -> ``int, optional``; ``Literal['a', 'b']`` -> ``'a' | 'b'``; Annotated types by their base."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(repr(v) for v in get_args(annotation))
    if origin is Union or type(annotation).__name__ == "UnionType":
        args = [a for a in get_args(annotation) if a is not type(None)]
        name = " \\| ".join(_type_name(a) for a in args)
        return f"{name}, optional" if len(args) < len(get_args(annotation)) else name
    if origin is not None and getattr(annotation, "__metadata__", None) is not None:  # Annotated[T, ...]
        return _type_name(get_args(annotation)[0])
    return getattr(annotation, "__name__", str(annotation))


def _constraints(metadata: list[Any]) -> str:
    """pydantic's ``Field(ge=..., gt=..., min_length=...)`` metadata as ``>= 1``, ``> 0``, ``min length 1``."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length"}
    parts = []
    for item in metadata:
        for attribute, word in words.items():
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(f"{word} {value}")
    return ", ".join(parts)


def _default_text(value: Any) -> str:
    """A default for people: paths inside the checkout relative to it, ``None`` as *unset*."""
    if value is None:
        return "unset"
    if isinstance(value, Path):
        try:
            return _code(f"<repo>/{value.relative_to(ROOT)}")
        except ValueError:
            return _code(str(value))
    return _code(str(value))


def render_settings() -> str:
    """Every ``PYTRAIN_*`` setting: variable, type (with its bounds), default, description (from
    :class:`pytrain.settings.Settings`' fields)."""
    from pytrain.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    lines = [
        "# Settings",
        "",
        "Every setting of `pytrain.settings.Settings`, read from the environment variable named here (generated",
        "from the code). A value of the wrong type or out of range stops PyTrain at start-up with a message naming",
        "the variable. `<repo>` is the checkout's root (the folder holding `pyproject.toml`); a regular install",
        "uses the current directory instead.",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _constraints(field.metadata)
        if bounds:
            kind = f"{kind} ({bounds})"
        description = field.description or ""
        lines.append(f"| `{prefix}{name.upper()}` | {kind} | {_default_text(field.default)} | {_prose(description)} |")
    return "\n".join(lines) + "\n"


# --- CLI -----------------------------------------------------------------------------------

def cli_commands() -> list[tuple[list[str], Any]]:
    """``[(["pytrain", "db", "upgrade"], click command), ...]``: every command and group of the
    ``pytrain`` CLI, depth first in name order, the root first."""
    import typer.main

    from pytrain.cli.main import app

    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), ["pytrain"])
    return found


def _help_text(path: list[str]) -> str:
    """``pytrain ... --help`` as the user sees it in a terminal ``HELP_COLUMNS`` wide."""
    from typer.testing import CliRunner

    from pytrain.cli.main import app

    result = CliRunner().invoke(app, [*path[1:], "--help"], prog_name="pytrain",
                                env={"COLUMNS": str(HELP_COLUMNS), "TERMINAL_WIDTH": str(HELP_COLUMNS), "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise RuntimeError(f"`{' '.join(path)} --help` exited {result.exit_code}: {result.output[-500:]}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render_cli() -> str:
    """Every ``pytrain`` command with its ``--help`` (from the CLI itself)."""
    commands = cli_commands()
    lines = [
        "# Command line",
        "",
        "Every `pytrain` command and its `--help`, generated by walking the CLI (`app/pytrain/cli/`). Options that",
        "also read an environment variable say so (`[env var: ...]`); the settings they fall back on are in",
        "[Settings](settings.md).",
        "",
    ]
    lines += [f"- [`{' '.join(path)}`](#{'-'.join(path)})" for path, _ in commands]
    for path, _ in commands:
        depth = min(len(path) + 1, 4)
        lines += ["", f"{'#' * depth} `{' '.join(path)}` {{#{'-'.join(path)}}}", "", "```text", _help_text(path), "```"]
    return "\n".join(lines) + "\n"


# --- MkDocs events -------------------------------------------------------------------------

def on_config(config: Any) -> Any:
    """Fill the ``Decisions (ADRs)`` navigation section with ``docs/adr/*.md`` in number order."""
    adr_dir = Path(config["docs_dir"]) / "adr"
    for item in config["nav"] or []:
        if isinstance(item, dict) and ADR_SECTION in item:
            item[ADR_SECTION] = [f"adr/{path.name}" for path in sorted(adr_dir.glob("*.md"))]
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated reference pages to the build (in memory: nothing is written to ``docs/``)."""
    from mkdocs.structure.files import File

    for src_uri, function in GENERATED.items():
        content = globals()[function]()
        files.append(File.generated(config, src_uri, content=content))
        _log.debug("generated %s (%d characters)", src_uri, len(content))
    return files
