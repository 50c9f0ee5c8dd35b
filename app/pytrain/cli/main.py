"""Entry point of the ``pytrain`` command.

Commands live in the module of their part of the pipeline and register themselves here:

- :mod:`pytrain.cli.tasks`   -- ``db``, ``sources``, ``submit``, ``tasks``, ``show``, ``cancel``, ``orchestrate``
- :mod:`pytrain.cli.serving` -- ``serve``, ``predict``, ``publish``
- :mod:`pytrain.cli.models`  -- ``models``, ``rollback``, ``unpublish``, ``evaluate``
- :mod:`pytrain.cli.images`  -- ``image`` (training image builds)
- :mod:`pytrain.cli.demo`    -- ``demo``
- :mod:`pytrain.cli.stream`  -- ``stream`` (live streams)
- :mod:`pytrain.cli.weights` -- ``weights`` (pretrained weights: ``fetch``, ``list``)
- :mod:`pytrain.cli.compare` -- ``compare`` (runs side by side)
- :mod:`pytrain.cli.sweeps`  -- ``sweep`` (hyper-parameter sweeps: ``create``, ``show``, ``list``, ...)
- :mod:`pytrain.cli.console` -- ``console`` (the web console)

A :class:`pytrain.errors.PyTrainError` prints as one line (with its cause chain and hint) on
stderr and exits 1; every other exception keeps its traceback, since it is a bug.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from pytrain.errors import PyTrainError

app = typer.Typer(
    name="pytrain",
    help="Train video clip classifiers from a PostgreSQL task row and serve them with Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_COMMAND_MODULES = ("pytrain.cli.tasks", "pytrain.cli.serving", "pytrain.cli.models", "pytrain.cli.images", "pytrain.cli.demo",
                    "pytrain.cli.stream", "pytrain.cli.weights", "pytrain.cli.compare",
                    "pytrain.cli.tracking", "pytrain.cli.console", "pytrain.cli.sweeps")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", envvar="PYTRAIN_VERBOSE", help="Log at DEBUG level (env PYTRAIN_VERBOSE)."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:  # a part that is not installed (extras) keeps the others usable
        if _exc.name and _exc.name.startswith("pytrain"):
            raise
        continue
    _module.register(app)


def format_error(exc: BaseException) -> str:
    """One line: the error, then each cause in the chain (``: caused by ...``)."""
    parts = [str(exc)]
    cause = exc.__cause__
    while cause is not None:
        text = str(cause).strip().splitlines()
        first = text[0] if text else ""
        if not first or first not in parts[-1]:  # SQLAlchemy wraps the driver's error with the same text
            parts.append(f"caused by {type(cause).__name__}: {first}")
        cause = cause.__cause__
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a :class:`PyTrainError` becomes ``error: ...`` on stderr and exit code 1."""
    try:
        code = app(args=argv, prog_name="pytrain", standalone_mode=False)  # also under `python -m pytrain.cli.main`
        if isinstance(code, int) and code != 0:  # typer.Exit(code) in non-standalone mode
            sys.exit(code)
    except PyTrainError as exc:
        typer.echo(f"error: {format_error(exc)}", err=True)
        sys.exit(1)
    except ValueError as exc:  # pydantic's ValidationError of a PYTRAIN_* variable read by get_settings()
        if not _is_settings_error(exc):
            raise
        from pytrain.settings import settings_error

        typer.echo(f"error: {format_error(settings_error(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors (bad option value, unknown option, ...)
        click_exception, abort = _click_exception_types()
        if isinstance(exc, click_exception):
            _show_usage_error(exc)
            sys.exit(exc.exit_code)
        if isinstance(exc, abort):
            sys.exit(1)
        raise


def _is_settings_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    return isinstance(exc, ValidationError) and exc.title == "Settings"


def _show_usage_error(exc: Exception) -> None:
    """A bad option or argument as one line, like every other error: ``error: ... (hint: ...)``."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
        exc.show()  # type: ignore[attr-defined]  # the help text itself
        return
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    hint = f" (hint: see `{ctx.command_path} --help`)" if ctx is not None else ""
    typer.echo(f"error: {message}{hint}", err=True)


def _click_exception_types() -> tuple[type[BaseException], type[BaseException]]:
    """``(ClickException, Abort)`` of the click that typer uses.

    Older typer releases run on the ``click`` package; newer ones vendor it as ``typer._click``
    and need no ``click`` installed, so the classes are found through typer's own exports.
    """
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return click_exception, typer.Abort


if __name__ == "__main__":
    main()
