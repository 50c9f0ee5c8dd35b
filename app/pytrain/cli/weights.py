"""``pytrain weights``: the pretrained weights folder that ``pretrained = true`` tasks load from.

- ``pytrain weights fetch ARCH...`` -- download torchvision's weights of those architectures into
  ``PYTRAIN_TORCH_HOME`` (hash-verified, progress bar; a verified file is not downloaded again)
- ``pytrain weights list``          -- architecture, file, size and whether its hash matches

Every flag also reads the ``PYTRAIN_*`` variable that ``--help`` names. See :mod:`pytrain.weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

weights_app = typer.Typer(help="Pretrained weights for pretrained = true tasks (fetch once per host, read-only for training).",
                          no_args_is_help=True)

_TORCH_HOME = typer.Option(None, "--torch-home", envvar="PYTRAIN_TORCH_HOME",
                           help="Weights folder (torch's layout, hub/checkpoints/); default <data dir>/torch (env PYTRAIN_TORCH_HOME).")


def _settings(**overrides: object):
    from pytrain.settings import with_overrides

    return with_overrides(**overrides)


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


@weights_app.command("fetch")
def fetch_command(
    architectures: List[str] = typer.Argument(..., help="Architectures, e.g. r3d_18 frames_resnet18 (`pytrain weights list` names them)."),
    torch_home: Optional[Path] = _TORCH_HOME,
    base_url: Optional[str] = typer.Option(None, "--base-url", envvar="PYTRAIN_WEIGHTS_BASE_URL",
                                           help="Where the files are downloaded from (env PYTRAIN_WEIGHTS_BASE_URL)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Draw a progress bar on stderr."),
) -> None:
    """Download and verify the weights of ARCHITECTURES; files already there and verified are kept."""
    from pytrain.weights import fetch_weights, pretrained_weights

    settings = _settings(torch_home=torch_home, weights_base_url=base_url)
    for architecture in architectures:  # every name checked before the first download
        pretrained_weights(architecture)
    for architecture in dict.fromkeys(architectures):
        result = fetch_weights(architecture, settings.torch_home, settings.weights_base_url, progress=progress)
        state = f"downloaded and verified in {result.seconds:.1f} s" if result.downloaded else "already there, verified"
        typer.echo(f"{architecture}: {result.path} ({state})")


@weights_app.command("list")
def list_command(torch_home: Optional[Path] = _TORCH_HOME) -> None:
    """Show each architecture's weights file in the folder: size and whether its SHA-256 matches its name."""
    from pytrain.weights import list_weights

    settings = _settings(torch_home=torch_home)
    typer.echo(f"weights folder: {settings.torch_home}")
    typer.echo(f"{'ARCHITECTURE':<27} {'FILE':<40} {'SIZE':>10}  VERIFIED")
    for row in list_weights(settings.torch_home):
        verified = "missing" if row.verified is None else "yes" if row.verified else "NO (fetch it again)"
        typer.echo(f"{row.architecture or '-':<27} {row.file_name:<40} {_size(row.size):>10}  {verified}")


def register(app: typer.Typer) -> None:
    """Add ``pytrain weights`` to the root app."""
    app.add_typer(weights_app, name="weights")
