"""Evaluating a served model on labelled clips, through Triton exactly as ``pytrain predict`` does.

Clips come from folders named ``<class>_<subclass>`` (the class is the text before the first
underscore, as for training: :func:`pytrain.sources.resolve.class_of`) or from a task's test split
(its ``manifest.csv``). Each clip is decoded with :meth:`TritonClient.read_views` (the evaluation
decode path of training: the model's sampling, ``test_clips`` views unless ``views`` says otherwise)
and sent in batches; the answer asks for every class's probability (Triton's classification
extension, so the names are the served ``labels.txt``), a clip's views are averaged, and the metrics
are :func:`pytrain.training.metrics.classification_report`'s: accuracy, top-k, per-class
precision/recall/F1 and the confusion matrix.

A clip whose folder class is not one of the model's classes counts as ``Other`` when the model has
that class, else it is listed under ``unknown`` and left out of the metrics.

Example::

    with TritonClient("127.0.0.1:8001") as client:
        report = evaluate(client, "kitchen", clips_from_paths([Path("sources/holdout")]))
        report.metrics["accuracy"]
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pytrain.client.client import ModelInfo, TritonClient
from pytrain.errors import ClientError
from pytrain.settings import Settings

log = logging.getLogger(__name__)

OTHER = "Other"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class LabelledClip:
    """A video and its true class (``path`` absolute or relative to the working directory)."""

    path: Path
    label: str


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured.

    Attributes:
        model, version: what was evaluated (``version``: the one that answered every request).
        class_list: the model's classes, index ``i`` = row/column ``i`` of the confusion matrix.
        metrics: ``classification_report``'s dict (``count``, ``accuracy``, ``top_k``,
            ``per_class``, ``macro_f1``, ``confusion_matrix``) over the clips with a known class.
        predictions: one ``{"video", "true_label", "label", "probability"}`` per evaluated clip.
        unknown: clips whose class the model does not have (and no ``Other``): ``{"video", "label"}``.
        bad: clips that could not be decoded: ``{"video", "error"}``.
        seconds: wall time of the evaluation.
    """

    model: str
    version: str
    class_list: list[str]
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, str]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, results_dir: Path) -> Path:
        """Write ``report.json`` and ``confusion.png`` into a new folder
        ``<results_dir>/<model>/<version>/evaluations/<UTC time>/``; returns that folder."""
        from pytrain.spec import write_json_atomic
        from pytrain.training.plots import plot_confusion

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = Path(results_dir) / self.model / self.version / "evaluations" / stamp
        suffix = 1
        while folder.exists():  # two evaluations in one second
            suffix += 1
            folder = folder.with_name(f"{stamp}-{suffix}")
        folder.mkdir(parents=True)
        write_json_atomic(folder / "report.json", self.to_dict())
        plot_confusion(self.metrics["confusion_matrix"], self.class_list, folder / "confusion.png",
                       f"{self.model} v{self.version}: accuracy {self.metrics['accuracy']:.3f}")
        return folder


def clips_from_paths(paths: Sequence[Path]) -> list[LabelledClip]:
    """Labelled clips from ``paths``: a video file (class from its folder), a ``<class>_<subclass>``
    folder of videos, or a dataset folder of such folders. Sorted by path.

    Raises:
        ClientError: a path that does not exist, or no video found at all.
    """
    from pytrain.sources.resolve import class_of

    clips: set[LabelledClip] = set()
    for path in map(Path, paths):
        if path.is_file():
            clips.add(LabelledClip(path, class_of(path.parent.name)))
        elif path.is_dir():
            for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
                for video in folder.iterdir():
                    if video.is_file() and video.suffix.lower() in VIDEO_SUFFIXES:
                        clips.add(LabelledClip(video, class_of(folder.name)))
        else:
            raise ClientError(f"{path} does not exist", hint="pass video files or folders named <class>_<subclass>")
    if not clips:
        raise ClientError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {[str(p) for p in paths]}",
                          hint="pass folders named <class>_<subclass> holding the clips")
    return sorted(clips, key=lambda c: str(c.path))


def clips_from_task(settings: Settings, task_id: int) -> list[LabelledClip]:
    """The test split of task ``task_id``: ``<PYTRAIN_MODEL_TASKS_DIR>/task-<id>-<model>-<uid8>/manifest.csv``
    (paths relative to ``PYTRAIN_SOURCES_DIR``). After a database reset several rows may have had
    the id; the folder whose ``task.json`` was written last is the current row's.

    Raises:
        ClientError: no such task folder, or an empty test split.
    """
    from pytrain.spec import read_manifest

    folders = sorted(settings.model_tasks_dir.glob(f"task-{int(task_id)}-*"), key=lambda f: _mtime(f / "task.json"), reverse=True)
    if not folders:
        raise ClientError(f"no task folder task-{task_id}-<model> in {settings.model_tasks_dir}",
                          hint="check the task id (pytrain tasks) and PYTRAIN_MODEL_TASKS_DIR")
    clips = [LabelledClip(settings.sources_dir / row.path, row.label) for row in read_manifest(folders[0]) if row.split == "test"]
    if not clips:
        raise ClientError(f"task {task_id} ({folders[0]}) has no test split clips")
    return clips


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def served_version(client: TritonClient, model: str) -> str:
    """The version Triton answers unversioned requests with: the newest ready one (its metadata's
    ``versions``). Pinning it keeps one evaluation on one version even if a rollback happens meanwhile.

    Raises:
        ClientError: the model is not ready.
    """
    client.wait_model_ready(model)
    ready = client.ready_versions(model)
    if not ready:
        raise ClientError(f"model {model!r} on Triton at {client.url} lists no ready version", hint="pytrain models --url shows why")
    return str(ready[-1])


def evaluate(
    client: TritonClient,
    model: str,
    clips: Sequence[LabelledClip],
    *,
    version: str | int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    views: int | None = None,
) -> EvaluationReport:
    """Classify ``clips`` on ``model`` and measure the answers against their labels.

    Args:
        client: a connected :class:`TritonClient`.
        model: the Triton model name.
        clips: the labelled clips.
        version: the version to evaluate; default the one Triton serves now (:func:`served_version`).
        batch_size: clips per request; default the model's ``max_batch_size``.
        progress: called with the number of clips handled after each batch.
        views: evenly spaced views per clip whose probabilities are averaged; default the
            model's ``test_clips``.

    Returns:
        The :class:`EvaluationReport`; clips that could not be decoded are in ``bad``.

    Raises:
        ClientError: Triton unreachable, the model not ready, a request failed, or no clip has a
            class the model knows.
    """
    from pytrain.training.metrics import classification_report

    started = time.monotonic()
    version_s = str(version) if version else served_version(client, model)
    info = client.model_info(model, version_s)
    step = max(1, batch_size or info.max_batch_size or 1)
    rows, bad = _classify(client, model, version_s, info, clips, step=step, views=views, progress=progress)
    if not rows:
        raise ClientError(f"model {model!r}: none of the {len(clips)} clips could be decoded", hint="see the report's bad clips")
    class_list = sorted(rows[0][1])
    known, labels, unknown = _known_labels(rows, class_list, model, version_s)
    scores = np.array([[s[c] for c in class_list] for _, s in known], dtype=np.float64)
    predictions = [
        {"video": str(clip.path), "true_label": class_list[t], "label": class_list[int(row.argmax())], "probability": round(float(row.max()), 4)}
        for (clip, _), t, row in zip(known, labels, scores)
    ]
    metrics = classification_report(np.array(labels), scores, class_list)
    return EvaluationReport(model, version_s, class_list, metrics, predictions, unknown, bad, time.monotonic() - started)


_Scored = tuple[LabelledClip, dict[str, float]]  # a clip and the model's probability of each class


def _classify(
    client: TritonClient, model: str, version: str, info: ModelInfo, clips: Sequence[LabelledClip], *, step: int,
    views: int | None, progress: Callable[[int], None] | None,
) -> tuple[list[_Scored], list[dict[str, str]]]:
    """Classify ``clips`` ``step`` at a time: ``(scored clips, clips that could not be decoded)``.

    Raises:
        ClientError: a request failed.
    """
    rows: list[_Scored] = []
    bad: list[dict[str, str]] = []
    for start in range(0, len(clips), step):
        batch, frames = [], []
        for clip in clips[start : start + step]:
            try:
                frames.append(client.read_views(clip.path, info, clips=views))
                batch.append(clip)
            except ClientError as exc:
                bad.append({"video": str(clip.path), "error": exc.message})
        if frames:
            answers = client.classify_views(model, frames, version=version, top_k=info.num_classes)
            rows += [(clip, {p.label: p.probability for p in answer}) for clip, answer in zip(batch, answers)]
        if progress is not None:
            progress(min(start + step, len(clips)))
    return rows, bad


def _known_labels(
    rows: list[_Scored], class_list: list[str], model: str, version: str,
) -> tuple[list[_Scored], list[int], list[dict[str, str]]]:
    """``(clips whose label the model knows, their label indexes, the others)``; a class the
    model does not know counts as its ``Other`` class when it has one.

    Raises:
        ClientError: no clip has a class the model knows.
    """
    known, labels, unknown = [], [], []
    for clip, scores in rows:
        label = clip.label if clip.label in class_list else OTHER if OTHER in class_list else None
        if label is None:
            unknown.append({"video": str(clip.path), "label": clip.label})
            continue
        known.append((clip, scores))
        labels.append(class_list.index(label))
    if not known:
        raise ClientError(
            f"model {model!r} version {version} knows the classes {class_list}; none of the clips' classes "
            f"{sorted({c.label for c, _ in rows})} is among them",
            hint="name the clip folders <class>_<subclass> with the model's classes",
        )
    return known, labels, unknown


__all__ = ["EvaluationReport", "LabelledClip", "clips_from_paths", "clips_from_task", "evaluate", "served_version"]
