"""The MLflow model registry follows Triton's model repository.

Each version PyTrain publishes becomes a version of the registered model of the same name, tagged
``pytrain.triton_version`` (and the task's id and uid); the alias ``served`` points at the version
whose Triton version is the served anchor (the newest version the model's config serves), and
moves with ``pytrain rollback`` and ``pytrain unpublish`` (:func:`follow_serving`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pytrain.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The alias of the registered version Triton serves.
SERVED_ALIAS = "served"
#: The run tag naming the artifact folder of the run's MLflow ONNX model (:mod:`pytrain.tracking.onnx_model`).
MODEL_TAG = "pytrain.mlflow_model"
#: The model-version tag holding the Triton version number.
TRITON_VERSION_TAG = "pytrain.triton_version"


def register_version(client: MlflowClient, model_name: str, mlflow_run: Any, triton_version: int, tags: dict[str, str]) -> str:
    """Register Triton version ``triton_version`` of ``model_name`` from ``mlflow_run`` (once: an
    existing registered version with that tag is returned). Its source is the run's MLflow ONNX
    model (the folder its tag ``pytrain.mlflow_model`` names), else the run's artifact folder.
    Returns the MLflow version number."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=f"PyTrain model {model_name}: one version per Triton version")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = _by_triton_version(client, model_name).get(triton_version)
    if existing is not None:
        return existing
    model_folder = mlflow_run.data.tags.get(MODEL_TAG)  # the run's MLflow ONNX model, when it logged one
    source = f"{mlflow_run.info.artifact_uri}/{model_folder}" if model_folder else mlflow_run.info.artifact_uri
    created = client.create_model_version(model_name, source=source, run_id=mlflow_run.info.run_id,
                                          tags={TRITON_VERSION_TAG: str(triton_version), **tags})
    return str(created.version)


def _by_triton_version(client: MlflowClient, model_name: str) -> dict[int, str]:
    """``{Triton version: MLflow version}`` of the registered model's versions."""
    found: dict[int, str] = {}
    for version in client.search_model_versions(f"name = '{model_name}'"):
        tag = (version.tags or {}).get(TRITON_VERSION_TAG)
        if tag is not None and tag.isdigit():
            found[int(tag)] = str(version.version)
    return found


def move_served(client: MlflowClient, model_name: str, served: list[int]) -> str | None:
    """Point alias ``served`` at the registered version of Triton version ``max(served)``; returns
    that MLflow version. When nothing is served, or that Triton version was never registered
    (tracking was off when it was published), the alias is removed (if set) and ``None`` returned:
    it never points at a version Triton does not serve."""
    mlflow_version = _by_triton_version(client, model_name).get(max(served)) if served else None
    if mlflow_version is not None:
        client.set_registered_model_alias(model_name, SERVED_ALIAS, mlflow_version)
        return mlflow_version
    client.delete_registered_model_alias(model_name, SERVED_ALIAS)  # MLflow: no alias, nothing done
    return None


def follow_serving(settings: Settings, model_name: str, served: list[int]) -> None:
    """After ``pytrain rollback``/``unpublish``: move alias ``served`` (:func:`move_served`). A side
    channel: with tracking off nothing happens, and a failure is a warning, never the command's."""
    if settings.mlflow != "on":
        return
    try:
        from pytrain.tracking.store import make_client

        client = make_client(settings)
        if client.search_registered_models(filter_string=f"name = '{model_name}'"):  # else never registered: nothing to move
            move_served(client, model_name, served)
    except Exception as exc:  # tracking never fails a serving change
        log.warning("model %s: cannot move the MLflow alias %r (%s: %s); run `pytrain tracking sync` later",
                    model_name, SERVED_ALIAS, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
