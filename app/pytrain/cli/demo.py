"""``pytrain demo``: the main job end to end on embedded parts (see :mod:`pytrain.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command()
    def demo(
        sources: Optional[Path] = typer.Option(None, "--sources", help="A dataset folder <dataset>/<class_subclass>/*.mp4; default: a synthetic one."),
        model_name: str = typer.Option("demo", "--model-name", help="Triton model name to publish."),
        epochs: int = typer.Option(8, "--epochs", min=1, help="Training epochs."),
        num_frames: int = typer.Option(8, "--num-frames", min=1, help="Frames per clip."),
        size: int = typer.Option(64, "--size", min=16, help="Clip height and width, pixels."),
    ) -> None:
        """Make a dataset, insert a task row, train on the CPU, publish, serve with Triton, predict over gRPC."""
        from rich.console import Console

        from pytrain.demo import DemoOptions, run_demo
        from pytrain.settings import get_settings

        result = run_demo(
            DemoOptions(sources=sources, model_name=model_name, epochs=epochs, num_frames=num_frames, size=size),
            get_settings(),
            Console(stderr=False),
        )
        if result.accuracy < 0.5:
            typer.echo(f"warning: held-out accuracy {result.accuracy:.3f} is low", err=True)
