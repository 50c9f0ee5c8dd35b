"""Class resolution: from a task's datasets and selected classes to labelled video files.

Layout: ``<sources root>/<dataset>/<class>_<subclass>/*.mp4``. The class is the text before the
first underscore of a folder name (a folder without an underscore is its own class), so
``cooking_cuttingbread`` and ``cooking_peelingpotatoes`` both hold class ``cooking``. A selected
class merges its subclass folders across all of the task's datasets. With ``include_other``, the
clips of every other class become class ``Other``; without it they are ignored. The class list is
sorted, so a label's index is stable.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pytrain.errors import SourceError, printable
from pytrain.spec import OTHER_CLASS

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4",)

#: Why a file or folder whose name is not UTF-8 (``caf\xe9.mp4``, from a Latin-1 system) is left
#: out: neither PostgreSQL nor ``manifest.csv`` can hold its name. Shown with :func:`pytrain.errors.printable`.
NOT_UTF8 = "its name is not valid UTF-8 (rename it, e.g. with convmv)"


def is_utf8_name(name: str) -> bool:
    """Whether a name read from the disk (``os.fsdecode``: undecodable bytes become lone surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unreadable_folder(path: Path, exc: OSError, what: str) -> SourceError:
    """The error for a folder that cannot be listed (``PermissionError`` and other ``OSError``), naming its path."""
    return SourceError(f"cannot read {what} {printable(str(path))}: {exc.strerror or exc}",
                       hint="make it readable by the user the orchestrator runs as (chmod/chown), then retry the task")


@dataclass(frozen=True)
class Clip:
    """One video file and its label.

    Attributes:
        path: POSIX path relative to the sources root (``dataset1/cooking_x/clip_000.mp4``).
        label: its class in the task's class list.
    """

    path: str
    label: str


@dataclass(frozen=True)
class ResolvedClasses:
    """The labelled clips of a task.

    Attributes:
        class_list: sorted labels (``Other`` included when used).
        clips: every clip, sorted by ``(label, path)``.
        folders: ``{label: ["dataset/folder", ...]}`` the label's clips come from.
        unlisted: ``{path: reason}`` of the video files and class folders (``path/``) left out
            because their name is not UTF-8 (:data:`NOT_UTF8`; the path relative to the sources
            root, shown with :func:`pytrain.errors.printable`).
    """

    class_list: list[str]
    clips: list[Clip]
    folders: dict[str, list[str]]
    unlisted: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Clips per label."""
        counts = dict.fromkeys(self.class_list, 0)
        for clip in self.clips:
            counts[clip.label] += 1
        return counts


def class_of(folder_name: str) -> str:
    """The class of a ``<class>_<subclass>`` folder: the text before the first underscore."""
    return folder_name.split("_", 1)[0]


def _inside(real_root: Path, path: Path, what: str) -> Path:
    real = path.resolve()
    if not real.is_relative_to(real_root):
        raise SourceError(
            f"{what} {path} resolves to {real}, outside the sources root {real_root}",
            hint="datasets must live inside the sources root; replace the symlink by the files",
        )
    return real


def _is_class_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def _utf8_entries(folder: Path, root: Path, unlisted: dict[str, str], keep: Callable[[Path], bool], what: str) -> list[Path]:
    """The sorted entries of ``folder`` that ``keep(path)`` selects; those whose name is not UTF-8
    go to ``unlisted`` (path relative to ``root``, a folder's ending in ``/`` -> :data:`NOT_UTF8`), logged.

    Raises:
        SourceError: ``folder`` cannot be listed (:func:`unreadable_folder`).
    """
    try:
        entries = sorted(p for p in folder.iterdir() if keep(p))
    except OSError as exc:
        raise unreadable_folder(folder, exc, what) from exc
    kept = []
    for entry in entries:
        if is_utf8_name(entry.name):
            kept.append(entry)
            continue
        shown = printable(entry.relative_to(root).as_posix()) + ("/" if entry.is_dir() else "")
        log.warning("leaving out %s: %s", shown, NOT_UTF8)
        unlisted[shown] = NOT_UTF8
    return kept


def resolve_classes(
    sources_root: Path,
    datasets: Iterable[str],
    classes: Iterable[str],
    *,
    include_other: bool = False,
    registered: Iterable[str] | None = None,
) -> ResolvedClasses:
    """Find the labelled clips of a task.

    Args:
        sources_root: root folder of all datasets.
        datasets: the task's dataset names (``training_tasks.sources``).
        classes: the selected classes (``training_tasks.classes``).
        include_other: label every unselected class ``Other`` instead of ignoring it.
        registered: the registered dataset names; ``None`` skips that check.

    Returns:
        The :class:`ResolvedClasses`.

    A class folder or video file whose name is not UTF-8 is left out and listed in
    ``unlisted``, as training lists a video that does not decode. A folder that cannot be read is
    an error: leaving it out would train, and publish, a model on part of a class without anyone
    noticing, and a later run that can read it would split the clips differently.

    Raises:
        SourceError: a dataset is not registered or has no folder; a dataset or class folder
            cannot be read (its path named); a dataset has no mp4 files; a selected class has no
            folder (or no clip) in any dataset; ``include_other`` is set but there is no other clip;
            a folder or file resolves outside the sources root.
    """
    root = Path(sources_root)
    if not root.is_dir():
        raise SourceError(f"the sources root {root} is not a folder", hint="set PYTRAIN_SOURCES_DIR")
    real_root = root.resolve()
    datasets = list(dict.fromkeys(datasets))
    selected = list(dict.fromkeys(classes))
    if include_other and OTHER_CLASS in selected:
        raise SourceError(f"class {OTHER_CLASS!r} is reserved for include_other", hint=f"rename the {OTHER_CLASS} folders")
    if registered is not None:
        unregistered = [d for d in datasets if d not in set(registered)]
        if unregistered:
            raise SourceError(
                f"dataset(s) {unregistered} are not registered",
                hint="put them under the sources root and run `pytrain sources sync`",
            )

    clips: list[Clip] = []
    folders: dict[str, list[str]] = defaultdict(list)
    found_classes: set[str] = set()
    unlisted: dict[str, str] = {}
    for dataset in datasets:
        dataset_dir = root / dataset
        if not dataset_dir.is_dir():
            raise SourceError(f"dataset {dataset!r} has no folder {dataset_dir}", hint="check the task's sources and the sources root")
        _inside(real_root, dataset_dir, f"dataset {dataset!r}")
        dataset_clips = 0
        class_folders = _utf8_entries(dataset_dir, root, unlisted, _is_class_folder, "dataset folder")
        for folder in class_folders:
            cls = class_of(folder.name)
            if not cls:
                log.warning("ignoring folder %s: no class name before the first underscore", folder)
                continue
            _inside(real_root, folder, "class folder")
            videos = _utf8_entries(folder, root, unlisted, _is_video, "class folder")
            for video in videos:
                _inside(real_root, video, "video")
            dataset_clips += len(videos)
            found_classes.add(cls)
            if cls in selected:
                label = cls
            elif include_other:
                label = OTHER_CLASS
            else:
                continue
            folders[label].append(f"{dataset}/{folder.name}")
            clips += [Clip(path=video.relative_to(root).as_posix(), label=label) for video in videos]
        if dataset_clips == 0:
            raise SourceError(f"dataset {dataset!r} has no mp4 files", hint=f"expected {dataset_dir}/<class>_<subclass>/*.mp4")

    missing = [c for c in selected if c not in found_classes]
    if missing:
        raise SourceError(
            f"class(es) {missing} have no folder in dataset(s) {datasets}",
            hint=f"classes found: {sorted(found_classes)}; a class folder is named <class> or <class>_<subclass>",
        )
    class_list = sorted(selected)
    if include_other:
        if not any(clip.label == OTHER_CLASS for clip in clips):
            raise SourceError(
                f"include_other is set but dataset(s) {datasets} have no clip outside the selected classes {selected}",
                hint="unset include_other or add datasets with other classes",
            )
        class_list = sorted([*selected, OTHER_CLASS])
    resolved = ResolvedClasses(
        class_list=class_list,
        clips=sorted(clips, key=lambda c: (c.label, c.path)),
        folders={label: folders[label] for label in class_list},
        unlisted=unlisted,
    )
    empty = [label for label, n in resolved.counts().items() if n == 0]
    if empty:
        raise SourceError(f"class(es) {empty} have folders but no mp4 files", hint=f"folders: {[resolved.folders[e] for e in empty]}")
    return resolved
