"""``pytrain console``: the web console (:mod:`pytrain.console`; docs/console.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``console`` to ``app``."""
    app.command("console")(console)


def console(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; any other than a loopback one needs PYTRAIN_CONSOLE_PASSWORD_HASH."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    hash_password: bool = typer.Option(False, "--hash-password", help="Read a password (prompted, or one line on stdin) and print its hash for PYTRAIN_CONSOLE_PASSWORD_HASH; then exit."),
) -> None:
    """Serve the web console: tasks (live), submit, models and rollback, workers, sources."""
    import sys

    from pytrain.console import hash_password as make_hash
    from pytrain.console import serve
    from pytrain.settings import get_settings

    if hash_password:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        typer.echo(make_hash(password))
        return
    serve(get_settings(), host=host, port=port)
