"""Where the MLflow tracking store is, and the client PyTrain logs with.

With no ``PYTRAIN_MLFLOW_TRACKING_URI`` the store is database ``mlflow`` on PyTrain's own
PostgreSQL server (the embedded one, or ``PYTRAIN_DATABASE_URL``'s), created when missing; MLflow
builds its schema in it on first use. Artifacts then live under ``<data_dir>/mlflow-artifacts``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from pytrain.errors import ConfigurationError
from pytrain.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The database PyTrain's default tracking store lives in (on PyTrain's PostgreSQL server).
MLFLOW_DATABASE = "mlflow"
#: The folder under ``data_dir`` the default store keeps artifacts in.
ARTIFACTS_DIR = "mlflow-artifacts"
#: MLflow client settings PyTrain sets unless the environment does: one bounded HTTP try (MLflow's
#: defaults retry 7 times with back-off for minutes; tracking is a side channel, and the next epoch
#: or the retry of a pending end tries again), and no "View run at" line on stdout per ended run
#: (the CLI's output is PyTrain's). Source: ``mlflow.environment_variables``.
CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def tracking_uri(settings: Settings) -> str:
    """``PYTRAIN_MLFLOW_TRACKING_URI``, or the SQLAlchemy URL of database ``mlflow`` on PyTrain's
    PostgreSQL server (created when missing; the embedded server is started when it is PyTrain's).

    Raises:
        DatabaseError: the database cannot be created.
        ConfigurationError: ``PYTRAIN_DATABASE_URL`` is not a PostgreSQL URL.
    """
    if settings.mlflow_tracking_uri is not None:
        return settings.mlflow_tracking_uri.get_secret_value()
    from sqlalchemy.engine import make_url

    from pytrain.db.engine import database_url

    url = make_url(database_url(settings)).set(database=MLFLOW_DATABASE)
    _create_database(url.set(drivername="postgresql").render_as_string(hide_password=False))
    return url.render_as_string(hide_password=False)


def _create_database(libpq_url: str) -> None:
    """``CREATE DATABASE mlflow`` on the server of ``libpq_url`` unless it exists (connecting to
    database ``postgres``, the maintenance database every server has)."""
    from sqlalchemy.engine import make_url

    from pytrain.db.embedded import create_database

    admin = make_url(libpq_url).set(database="postgres").render_as_string(hide_password=False)
    create_database(admin, MLFLOW_DATABASE, what="for MLflow")


def artifact_location(settings: Settings, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``file://<data_dir>/mlflow-artifacts/<experiment>``
    for the default store, ``None`` (the server's own default) with ``PYTRAIN_MLFLOW_TRACKING_URI``."""
    if settings.mlflow_tracking_uri is not None:
        return None
    return (settings.data_dir / ARTIFACTS_DIR / experiment).resolve().as_uri()


def make_client(settings: Settings) -> MlflowClient:
    """An :class:`mlflow.MlflowClient` on :func:`tracking_uri`, with :data:`CLIENT_ENVIRONMENT` set.

    Raises:
        ConfigurationError: mlflow is not installed (hint: ``pip install 'pytrain[tracking]'``).
        DatabaseError: see :func:`tracking_uri`.
    """
    for name, value in CLIENT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow import MlflowClient
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"PYTRAIN_MLFLOW=on but mlflow cannot be imported ({exc})",
                                 hint="pip install 'pytrain[tracking]', or set PYTRAIN_MLFLOW=off") from exc

    return MlflowClient(tracking_uri=tracking_uri(settings))
