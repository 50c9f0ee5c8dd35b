"""``pytrain serve``, ``pytrain predict`` and ``pytrain publish``.

Examples::

    pytrain serve                                   # embedded Triton on 127.0.0.1:8001 over model_repo/
    pytrain serve --host 0.0.0.0                    # every interface (see docs/operations/security.md)
    pytrain control-key                             # the Triton control key's file (created mode 0600)
    pytrain predict --model kitchen --top-k 3 clip1.mp4 clip2.mp4
    pytrain publish --task-dir model_tasks/task-7-kitchen
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer

from pytrain.errors import ClientError
from pytrain.task_columns import column


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``predict``, ``publish`` and ``control-key`` to ``app``."""
    for name, command in (("serve", serve), ("predict", predict), ("publish", publish), ("control-key", control_key_file)):
        app.command(name)(command)


def serve(
    model_repo: Optional[Path] = typer.Option(None, "--model-repo", exists=True, file_okay=False,
                                              help="An existing model repository (default PYTRAIN_MODEL_REPO_DIR, created when missing)."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", min=1, max=65535, help="gRPC port (default PYTRAIN_TRITON_GRPC_PORT, 8001)."),
    http_port: Optional[int] = typer.Option(None, "--http-port", min=1, max=65535, help="HTTP port (default PYTRAIN_TRITON_HTTP_PORT, 8000)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=1, max=65535, help="Metrics port (default PYTRAIN_TRITON_METRICS_PORT, 8002)."),
    mode: str = typer.Option("explicit", "--model-control-mode", help="explicit (load every model at start; later ones load when publishing has PYTRAIN_TRITON_GRPC_URL set to this server), poll (watch the repository) or none."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default loopback only; 0.0.0.0: every interface)."),
) -> None:
    """Start the embedded Triton server (CPU, Python backend) and serve until Ctrl-C.

    Loading, unloading and model configs need the control key (PYTRAIN_TRITON_CONTROL_KEY, else the
    file `pytrain control-key` names); inference, health and metadata are open.
    """
    from pytrain.serving import TritonServer
    from pytrain.settings import get_settings

    if mode not in ("explicit", "poll", "none"):
        raise typer.BadParameter(f"{mode!r} is not one of explicit, poll, none", param_hint="--model-control-mode")
    settings = get_settings()
    overrides: dict[str, object] = {"model_control_mode": mode, "host": host}
    for key, value in (("grpc_port", grpc_port), ("http_port", http_port), ("metrics_port", metrics_port)):
        if value is not None:
            overrides[key] = value
    server = TritonServer.from_settings(settings, **overrides)
    if model_repo is not None:
        server.model_repository = model_repo.expanduser().resolve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        typer.echo(f"Triton is serving {server.model_repository}")
        typer.echo(f"  listening on {host}" + (" (loopback only; --host to change)" if host in ("127.0.0.1", "::1", "localhost") else " (reachable from other hosts)"))
        typer.echo(f"  gRPC    {server.grpc_url}   (pytrain predict --url {server.grpc_url} ...)")
        typer.echo(f"  HTTP    {server.http_url}")
        typer.echo(f"  control load/unload/config need the key: {_key_source(settings)}")
        typer.echo(f"  log     {server.log_path}")
        typer.echo("Press Ctrl-C to stop.")
        try:
            while not stop.wait(1.0):
                if not server.is_running():
                    raise ClientError(f"tritonserver exited: {server.log_tail()}", hint=f"see {server.log_path}")
        except KeyboardInterrupt:
            pass


def _key_source(settings) -> str:
    """Where the control key comes from, for people (never the key itself)."""
    from pytrain.serving.control import key_file

    return "PYTRAIN_TRITON_CONTROL_KEY" if settings.triton_control_key is not None else str(key_file(settings))


def control_key_file() -> None:
    """Print the path of the Triton control key's file, creating it (mode 0600) when missing.

    Compose mounts this file into Triton and the orchestrator as a secret; HTTP callers send
    its content in the header pytrain-control-key (curl -H "pytrain-control-key: $(cat FILE)").
    """
    from pytrain.serving.control import control_key, key_file
    from pytrain.settings import get_settings

    settings = get_settings()
    if settings.triton_control_key is not None:
        typer.echo("PYTRAIN_TRITON_CONTROL_KEY is set: it is the key, no file is used", err=True)
        return
    control_key(settings)
    typer.echo(str(key_file(settings)))


#: ``--clips`` of ``pytrain predict`` and ``pytrain evaluate``: the bounds of the ``test_clips`` column.
MAX_CLIPS = column("test_clips").high
CLIPS_HELP = ("Evenly spaced clips (views) per video whose probabilities are averaged (default: the model's test_clips, "
               "from --config, the served config's parameters or the local model repository's tensor_spec.json; else 1).")


def predict(
    videos: List[Path] = typer.Argument(..., help="Video files (mp4)."),
    model: str = typer.Option(..., "--model", help="Triton model name."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="Model version, an integer (default: the newest)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Classes per video, most probable first."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL", help="Triton gRPC host:port (env PYTRAIN_TRITON_GRPC_URL; default 127.0.0.1:PYTRAIN_TRITON_GRPC_PORT)."),
    config: Optional[Path] = typer.Option(None, "--config", help="PyTrain <model>.config to read clip size and tensor names from (default: Triton's model metadata)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Inference timeout per request, seconds."),
    ready_timeout: float = typer.Option(10.0, "--ready-timeout", help="How long to wait for the server and the model, seconds."),
    clips: Optional[int] = typer.Option(None, "--clips", min=1, max=MAX_CLIPS, help=CLIPS_HELP),
) -> None:
    """Classify videos over gRPC; prints one JSON object per video.

    Each video is sampled as the model was trained (its sampling mode; --clips evenly spaced views, probabilities averaged).

    Each line is {"video": PATH, "label": "cooking", "probability": 0.7779}, plus "top_k": [{"label", "probability"}, ...] with --top-k K > 1.

    A video that cannot be decoded prints {"video": PATH, "error": ...}; the command then exits 1 after the others.
    """
    from pytrain.client import TritonClient

    failed = 0
    with TritonClient(url, ready_timeout_s=ready_timeout, load_timeout_s=max(ready_timeout, 10.0), inference_timeout_s=timeout) as client:
        info = client.model_info(model, version, config_path=config)
        for video in videos:
            try:
                views = client.read_views(video, info, clips=clips)
            except ClientError as exc:
                failed += 1
                typer.echo(json.dumps({"video": str(video), "error": str(exc)}))
                continue
            [top] = client.classify_views(model, [views], version=version, top_k=top_k)
            line = {"video": str(video), **top[0].to_dict()}
            if top_k > 1:
                line["top_k"] = [p.to_dict() for p in top]
            typer.echo(json.dumps(line))
    if failed:
        raise typer.Exit(1)


def publish(
    task_dir: Path = typer.Option(..., "--task-dir", exists=True, file_okay=False, help="Finished task folder (model_tasks/task-<id>-<model>)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Publish under this name (default: task.json's model_name)."),
) -> None:
    """Publish a finished task folder as the next version of its model (manual publishing)."""
    from pytrain.publish import publish_task
    from pytrain.settings import get_settings
    from pytrain.spec import TASK_SPEC

    record: dict[str, object] = {}
    spec_path = task_dir / TASK_SPEC
    if spec_path.is_file():
        record = json.loads(spec_path.read_text(encoding="utf-8"))
        record.pop("extra", None)
    if model_name:
        record["model_name"] = model_name
    published = publish_task(task_dir, settings=get_settings(), task_record=record)
    typer.echo(json.dumps({"model": published.name, "version": published.version, "path": str(published.path),
                           "results": str(published.results_path), "loaded": published.load_requested}))
