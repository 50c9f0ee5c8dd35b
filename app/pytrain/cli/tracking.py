"""``pytrain tracking``: the MLflow side of PyTrain (:mod:`pytrain.tracking`).

- ``pytrain tracking ui``   -- MLflow's server and UI on PyTrain's tracking store, bound to 127.0.0.1
- ``pytrain tracking sync`` -- catch up the MLflow runs of recent tasks (after the server was down)

Every flag also reads the ``PYTRAIN_*`` variable that ``--help`` names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional

import typer

from pytrain.errors import ConfigurationError

tracking_app = typer.Typer(help="Experiment tracking in MLflow: the UI and the catch-up.", no_args_is_help=True)


def ui_command_line(host: str, port: int, app_name: str | None, allowed_hosts: str | None = None) -> list[str]:
    """The ``mlflow server`` command ``pytrain tracking ui`` runs (the store URI goes by environment:
    it may hold a password, which a command line shows to every user of the host)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    if app_name:
        command += ["--app-name", app_name]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


@tracking_app.command("ui")
def ui_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; another than 127.0.0.1 exposes the UI: "
                             "use --app-name basic-auth or a proxy that authenticates (docs: operations/security)."),
    port: int = typer.Option(5000, "--port", help="Port of the UI."),
    app_name: Optional[str] = typer.Option(None, "--app-name", help="MLflow's app, e.g. basic-auth (users and passwords)."),
    allowed_hosts: Optional[str] = typer.Option(None, "--allowed-hosts", help="Host headers MLflow accepts, comma-separated "
                                                "(default: localhost and private addresses; a name such as a compose service's)."),
) -> None:
    """Serve MLflow's UI on PyTrain's tracking store (PYTRAIN_MLFLOW_TRACKING_URI, default database mlflow)."""
    from pytrain.settings import get_settings
    from pytrain.tracking.store import ARTIFACTS_DIR, tracking_uri

    settings = get_settings()
    uri = tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        raise ConfigurationError(f"PYTRAIN_MLFLOW_TRACKING_URI is an MLflow server already ({uri.split('@')[-1]})",
                                 hint="open it in a browser; `pytrain tracking ui` serves a database store")
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri,
           "MLFLOW_ARTIFACTS_DESTINATION": (settings.data_dir / ARTIFACTS_DIR).resolve().as_uri()}
    typer.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it)", err=True)
    raise typer.Exit(subprocess.call(ui_command_line(host, port, app_name, allowed_hosts), env=env))


@tracking_app.command("sync")
def sync_command(
    task_ids: Optional[List[int]] = typer.Argument(None, help="Task ids (default: the --last most recent tasks)."),
    last: int = typer.Option(50, "--last", min=1, help="How many recent tasks when no id is given."),
) -> None:
    """Catch up the MLflow runs of tasks' runs: epochs not logged yet, and the end of ended runs."""
    from pytrain.db import get_engine
    from pytrain.settings import get_settings
    from pytrain.tracking.tracker import sync_tasks

    settings = get_settings()
    for task_id, run_id, mlflow_run_id in sync_tasks(settings, get_engine(settings), task_ids, last=last):
        typer.echo(f"task {task_id} run {run_id}: MLflow run {mlflow_run_id}")


def register(app: typer.Typer) -> None:
    """Add ``pytrain tracking`` to the root app."""
    app.add_typer(tracking_app, name="tracking")
