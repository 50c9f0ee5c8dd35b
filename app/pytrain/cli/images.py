"""``pytrain image``: the training image (content-hash tag, SDK build) and one-off container runs.

- ``pytrain image tag``    -- print the tag the current checkout would build (no engine needed)
- ``pytrain image build``  -- build it unless it exists, streaming the build output
- ``pytrain image run``    -- run one training container for a task folder (or a spec), without
  the database or the orchestrator, streaming its output (``app/container_up.sh`` calls this)

Every flag also reads the ``PYTRAIN_*`` variable that ``--help`` names.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Optional

import typer

from pytrain.errors import ConfigurationError

image_app = typer.Typer(help="Build and run the training image (docker runner).", no_args_is_help=True)


def _settings(**overrides: object):
    from pytrain.settings import with_overrides

    return with_overrides(**overrides)


@image_app.command("tag")
def tag_command(
    base_image: Optional[str] = typer.Option(None, "--base-image", envvar="PYTRAIN_BASE_IMAGE", help="Base image (env PYTRAIN_BASE_IMAGE)."),
    files: bool = typer.Option(False, "--files", help="Also list the files hashed into the tag."),
) -> None:
    """Print the content-hash tag of the training image for this checkout."""
    from pytrain.runners.images import build_inputs

    inputs = build_inputs(base_image or _settings().base_image)
    typer.echo(inputs.tag)
    if files:
        for rel, digest in inputs.files.items():
            typer.echo(f"{digest[:12]}  {rel}")


@image_app.command("build")
def build_command(
    base_image: Optional[str] = typer.Option(None, "--base-image", envvar="PYTRAIN_BASE_IMAGE", help="Base image (env PYTRAIN_BASE_IMAGE)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the tag exists (the layer cache still applies)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not stream the build output."),
) -> None:
    """Build the training image unless an image with its content hash exists; print its tag."""
    from pytrain.runners.images import docker_client, ensure_train_image

    settings = _settings(base_image=base_image)
    on_line = None if quiet else (lambda line: typer.echo(line, err=True))
    result = ensure_train_image(docker_client(), settings, on_line=on_line, force=force)
    state = "built" if result.built else "exists, not rebuilt"
    typer.echo(f"{result.tag}  ({state}, {result.seconds:.1f} s)", err=True)
    typer.echo(result.tag)


def _task_from_spec(spec_arg: str, manifest: Optional[Path], settings):
    """Make a task folder from ``--spec``: a ``task.json`` (with ``--manifest``) or a task row.

    A task row (``model_name``, ``sources``, ``classes`` and optional columns, as inserted into
    ``training_tasks``) is resolved and split exactly as the orchestrator does.
    """
    from pytrain.spec import MANIFEST, TaskSpec, task_dir_name

    path = Path(spec_arg)
    text = path.read_text(encoding="utf-8") if path.is_file() else spec_arg
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--spec is neither a JSON file nor JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError("--spec must be a JSON object (task.json fields, or a training_tasks row)")
    if "class_list" not in data:  # a task row: prepare it like the orchestrator
        from pytrain.orchestrator.prepare import prepare_task
        from pytrain.task_columns import TASK_COLUMNS, task_defaults

        missing = sorted({c.name for c in TASK_COLUMNS if c.required} - set(data))
        if missing:
            raise ConfigurationError(f"--spec row lacks {missing}", hint='e.g. {"model_name": "m", "sources": ["dataset1"], "classes": ["a", "b"]}')
        # a fresh uid per call: a debugging run never resumes another one's folder
        prepared = prepare_task({"id": 0, "uid": uuid.uuid4(), **task_defaults(), **data}, settings, registered=None, gpus=settings.gpus)
        return prepared.spec, prepared.task_dir
    spec = TaskSpec.from_dict(data, "--spec")
    if not spec.uid:  # a task.json from before the uid existed
        spec = dataclasses.replace(spec, uid=str(uuid.uuid4()))
    task_dir = settings.model_tasks_dir / task_dir_name(spec.task_id, spec.model_name, spec.uid)
    task_dir.mkdir(parents=True, exist_ok=True)
    spec.save(task_dir)
    if manifest is not None:
        shutil.copyfile(manifest, task_dir / MANIFEST)
    elif not (task_dir / MANIFEST).is_file():
        raise ConfigurationError(f"no manifest for the spec's task folder {task_dir}", hint="pass --manifest manifest.csv (columns path,label,split)")
    return spec, task_dir


@image_app.command("run")
def run_command(
    task_dir: Optional[Path] = typer.Argument(None, help="An existing task folder (task.json + manifest.csv)."),
    spec: Optional[str] = typer.Option(None, "--spec", help="Instead of TASK_DIR: a training_tasks row as JSON (model_name, sources, classes, ...; "
                                       "split like the orchestrator does) or task.json fields with --manifest. File or inline."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="manifest.csv for --spec."),
    no_build: bool = typer.Option(False, "--no-build", help="Reuse the last built training image (app/docker_components/cache/train-image.json)."),
    image: Optional[str] = typer.Option(None, "--image", help="Run this image (implies --no-build)."),
    base_image: Optional[str] = typer.Option(None, "--base-image", envvar="PYTRAIN_BASE_IMAGE", help="Base image (env PYTRAIN_BASE_IMAGE)."),
    sources_root: Optional[Path] = typer.Option(None, "--sources-root", envvar="PYTRAIN_SOURCES_DIR", help="Sources root (env PYTRAIN_SOURCES_DIR)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", envvar="PYTRAIN_GPUS", help="'all', '0' or '0,1' (env PYTRAIN_GPUS); unset: CPU."),
    memory: Optional[str] = typer.Option(None, "--memory", envvar="PYTRAIN_CONTAINER_MEMORY", help="Memory limit, e.g. 16g (env PYTRAIN_CONTAINER_MEMORY)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", envvar="PYTRAIN_TASK_TIMEOUT_SECONDS", help="Seconds before the container is stopped."),
    entrypoint: Optional[str] = typer.Option(None, "--entrypoint", help="Override the entrypoint for debugging, split like a shell does (e.g. 'sh -c \"ls /task\"')."),
) -> None:
    """Run one training container for a task folder, streaming its output; exit with its code."""
    from pytrain.runners.base import Outcome, PreparedTask
    from pytrain.runners.docker import DockerRunner
    from pytrain.runners.images import cache_dir, docker_client
    from pytrain.settings import with_overrides
    from pytrain.spec import TaskSpec

    settings = _settings(base_image=base_image, container_memory=memory, task_timeout_seconds=timeout, gpus=gpus)
    if (task_dir is None) == (spec is None):
        raise ConfigurationError("give either a task folder or --spec", hint="app/container_up.sh --help")
    if spec is not None:
        if sources_root is not None:
            settings = with_overrides(settings, sources_dir=Path(sources_root).resolve())
        task_spec, folder = _task_from_spec(spec, manifest, settings)
    else:
        folder = Path(task_dir).resolve()
        task_spec = TaskSpec.load(folder)
    if image is None and no_build:
        record = cache_dir() / "train-image.json"
        try:
            image = json.loads(record.read_text())["tag"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"--no-build: no previous build recorded in {record}", hint="run once without --no-build") from exc
    root = Path(sources_root or settings.sources_dir).resolve()
    out = sys.stdout.buffer

    def echo(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    runner = DockerRunner(
        settings, client=docker_client(), image=image, on_output=echo,
        on_build_line=lambda line: typer.echo(line, err=True),
        entrypoint=shlex.split(entrypoint) if entrypoint else None,
    )
    prepared = PreparedTask(spec=task_spec, task_dir=folder, sources_root=root, timeout_seconds=settings.task_timeout_seconds, gpus=settings.gpus)
    cancel = threading.Event()
    try:
        result = runner.run(prepared, cancel)
    except KeyboardInterrupt:  # the runner's finally removed the container
        raise
    typer.echo(f"{result.outcome.value}: exit code {result.exit_code}" + (f"; {result.message}" if result.message else ""), err=True)
    typer.echo(f"log: {prepared.log_path}", err=True)
    if result.outcome is not Outcome.SUCCEEDED:
        raise typer.Exit(result.exit_code if result.exit_code not in (None, 0) else 1)


def register(app: typer.Typer) -> None:
    """Add ``pytrain image ...`` to ``app``."""
    app.add_typer(image_app, name="image")
