"""``history.png`` (loss and accuracy per epoch) and ``confusion_<split>.png``, drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pytrain.spec import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in a container; must come before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss (left) and accuracy (right) of train and val per epoch from ``metrics.json``'s history."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [h.get(f"{key}_loss") for h in history], style, label=key)
        ax_acc.plot(epochs, [h.get(f"{key}_accuracy") for h in history], style, label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_confusion(matrix: list[list[int]], class_list: list[str], path: Path, title: str) -> Path:
    """A confusion matrix (rows true, columns predicted) with its counts written in the cells."""
    plt = _pyplot()
    m = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_list) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(class_list)), class_list, rotation=45, ha="right")
    ax.set_yticks(range(len(class_list)), class_list)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = m.max() / 2 if m.size and m.max() > 0 else 0
    for (i, j), value in np.ndenumerate(m):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_class_balance(counts: dict[str, int], path: Path, title: str) -> Path:
    """Clips per class as horizontal bars (``pytrain sources inspect``), the count at each bar's end."""
    plt = _pyplot()
    names = list(counts)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.4 * len(names) + 1)))
    bars = ax.barh(names, [counts[n] for n in names], color="tab:blue")
    ax.bar_label(bars, padding=3)
    ax.invert_yaxis()
    ax.set(xlabel="clips", title=title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_durations(durations: list[float], path: Path, title: str) -> Path:
    """A histogram of clip durations in seconds (``pytrain sources inspect``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(durations, bins=min(50, max(1, len(set(durations)))), color="tab:green")
    ax.set(xlabel="duration (s)", ylabel="clips", title=title)
    ax.grid(alpha=0.3)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def comparison_figure(curves: list[tuple[str, list[dict[str, Any]]]]):  # type: ignore[no-untyped-def]
    """The figure of ``pytrain compare --plot``: validation accuracy (left) and loss (right) per
    epoch, one line per run that has any (a run without a validation figure draws none).

    Args:
        curves: ``[(legend label, history)]``, ``history`` as :func:`pytrain.compare.epoch_history`
            gives it (``{"epoch", "val_accuracy", "val_loss", ...}`` per epoch).

    Returns:
        The matplotlib ``Figure`` (close it with ``pyplot.close``).
    """
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title in ((ax_acc, "val_accuracy", "validation accuracy"), (ax_loss, "val_loss", "validation loss")):
        for label, history in curves:
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points), "-o", markersize=3, label=label)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    ax_acc.set_ylim(0, 1.02)
    return fig


def plot_comparison(curves: list[tuple[str, list[dict[str, Any]]]], path: Path) -> Path:
    """Write :func:`comparison_figure` of ``curves`` to ``path`` (PNG, atomically); returns ``path``."""
    plt = _pyplot()
    fig = comparison_figure(curves)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)
