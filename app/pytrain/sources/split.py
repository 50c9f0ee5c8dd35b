"""The deterministic, stratified train/val/test split and the manifest that records it.

Each class is split on its own (stratified), per video file, with a random generator seeded by
the task's ``seed`` and the label, so the same task always gets the same split and adding a class
does not reshuffle the others. Clips cut from one recording must not land in different splits:
a dataset can name its recordings (:func:`load_groups`: ``groups.csv``, or a file name up to a
separator), and then whole groups are split, still stratified by class. The manifest (``manifest.csv``: ``path,label,split``, ``path``
relative to the sources root) is written into the task folder; videos are never copied.
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytrain.errors import SplitError
from pytrain.sources.resolve import ResolvedClasses

# manifest.csv's row, reader and writer belong to the task-folder contract in pytrain.spec
# (training reads the manifest too, and must not import the orchestrator's side); re-exported
# here beside the split that makes the rows.
from pytrain.spec import SPLITS, ManifestRow, read_manifest, write_manifest

__all__ = ["ManifestRow", "load_groups", "min_clips", "read_manifest", "split_clips", "split_sizes", "write_manifest"]

#: In a dataset folder: ``path,group`` rows (``path`` relative to the dataset folder).
GROUPS_FILE = "groups.csv"
#: In a dataset folder: one line, the separator; a file's group is its name up to the first one
#: (``rec07__clip003.mp4`` -> ``rec07`` with ``__``).
GROUP_SEPARATOR_FILE = "group_separator"


def split_sizes(n: int, train_fraction: float, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` clips go to train, val and test.

    Val and test get ``round(n * fraction)`` clips, at least one when their fraction is above 0;
    train gets the rest and must get at least one.

    Raises:
        SplitError: ``n`` is too small for these fractions.
    """
    del train_fraction  # train takes what val and test leave

    def share(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, math.floor(n * fraction + 0.5))

    n_val, n_test = share(val_fraction), share(test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SplitError(f"{n} clips cannot be split {1 - val_fraction - test_fraction:g}/{val_fraction:g}/{test_fraction:g}")
    return n_train, n_val, n_test


def min_clips(val_fraction: float, test_fraction: float) -> int:
    """The fewest clips a class needs for this split."""
    n = 1
    while True:
        try:
            split_sizes(n, 1 - val_fraction - test_fraction, val_fraction, test_fraction)
            return n
        except SplitError:
            n += 1


def split_clips(
    resolved: ResolvedClasses,
    *,
    train_fraction: float,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> list[ManifestRow]:
    """Split every class of ``resolved`` into train/val/test.

    Args:
        groups: ``{clip path: group}`` (:func:`load_groups`); clips of one group all go to the
            same split, chosen so that each class comes as close to the fractions as the group
            sizes allow. ``None``: every file on its own (the plain split).

    Returns:
        Manifest rows grouped by split (train, val, test); inside a split the rows are in a
        seeded random order, so classes are interleaved. Training streams the train rows in
        manifest order through a ``shuffle_size`` buffer; a class-sorted manifest would give
        single-class batches whenever a class has more clips than the buffer holds.

    Raises:
        SplitError: a class has too few clips for the split (the message names the class, its
            count and the minimum), or, grouped, too few groups to give every split a clip.
    """
    rows: list[ManifestRow] = []
    by_label: dict[str, list[str]] = {label: [] for label in resolved.class_list}
    for clip in resolved.clips:
        by_label[clip.label].append(clip.path)
    targets: dict[str, dict[str, int]] = {}
    for label, paths in by_label.items():
        try:
            n_train, n_val, _ = split_sizes(len(paths), train_fraction, val_fraction, test_fraction)
        except SplitError as exc:
            need = min_clips(val_fraction, test_fraction)
            raise SplitError(
                f"class {label!r} has {len(paths)} clip(s); a {train_fraction:g}/{val_fraction:g}/{test_fraction:g} "
                f"split needs at least {need}",
                hint=f"add videos to {resolved.folders.get(label, [])}, or change the split fractions",
            ) from exc
        targets[label] = dict(zip(SPLITS, (n_train, n_val, len(paths) - n_train - n_val)))
        if groups is not None:
            continue
        shuffled = sorted(paths)
        random.Random(f"{seed}/{label}").shuffle(shuffled)  # str seeds hash deterministically (sha512)
        for i, path in enumerate(shuffled):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            rows.append(ManifestRow(path=path, label=label, split=split))
    if groups is not None:
        rows = _grouped_rows(resolved, targets, groups, seed)
    order = {name: i for i, name in enumerate(SPLITS)}
    rows.sort(key=lambda r: (order[r.split], r.label, r.path))
    mixer = random.Random(f"{seed}/order")
    grouped = {name: [r for r in rows if r.split == name] for name in SPLITS}
    for split_rows in grouped.values():
        mixer.shuffle(split_rows)
    return [row for name in SPLITS for row in grouped[name]]


def _grouped_rows(resolved: ResolvedClasses, targets: dict[str, dict[str, int]], groups: Mapping[str, str], seed: int) -> list[ManifestRow]:
    """Assign whole groups to splits: largest first (seeded order among equals), each to the split
    whose classes still lack the largest share of their target (``targets[label][split]`` clips).

    Raises:
        SplitError: a class ends with no clip in a split its fractions give clips to.
    """
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for clip in resolved.clips:
        members[groups.get(clip.path, clip.path)].append((clip.path, clip.label))
    order = sorted(members)
    random.Random(f"{seed}/groups").shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # stable: the seeded order breaks ties
    have = {label: Counter() for label in targets}

    def lack(split: str, labels: Counter) -> float:
        if any(targets[label][split] == 0 for label in labels):
            return -math.inf  # a split the fractions leave empty for one of these classes
        return sum(n * (targets[label][split] - have[label][split]) / targets[label][split] for label, n in labels.items())

    rows: list[ManifestRow] = []
    for group in order:
        labels = Counter(label for _, label in members[group])
        split = max(SPLITS, key=lambda s: lack(s, labels))  # ties: train, then val, then test
        for path, label in members[group]:
            have[label][split] += 1
            rows.append(ManifestRow(path=path, label=label, split=split))
    for label, target in targets.items():
        empty = [s for s in SPLITS if target[s] > 0 and have[label][s] == 0]
        if empty:
            count = len({groups.get(c.path, c.path) for c in resolved.clips if c.label == label})
            raise SplitError(
                f"class {label!r} gets no clip in {'/'.join(empty)}: its clips come from {count} group(s), and whole groups are split",
                hint=f"add recordings to {resolved.folders.get(label, [])}, change the split fractions, or the grouping ({GROUPS_FILE}, {GROUP_SEPARATOR_FILE})",
            )
    return rows


def load_groups(sources_root: Path, datasets: Iterable[str], paths: Iterable[str]) -> dict[str, str] | None:
    """The recording each clip comes from, from its dataset folder's grouping files.

    A dataset with ``groups.csv`` (``path,group``; a clip it does not list is its own group) or
    ``group_separator`` (a file's group is its name up to the first separator; a name without it
    is its own group) is grouped; a dataset with neither is not. Groups are named per dataset.

    Args:
        sources_root: the sources root.
        datasets: the task's datasets.
        paths: clip paths relative to the sources root (``dataset/folder/file``).

    Returns:
        ``{path: group}``, or ``None`` when no dataset is grouped (the plain split).

    Raises:
        SplitError: ``groups.csv`` has no ``path`` and ``group`` columns, or ``group_separator``
            is empty (the message names the file).
    """
    rules: dict[str, dict[str, str] | str] = {}
    for dataset in datasets:
        folder = Path(sources_root) / dataset
        if (folder / GROUPS_FILE).is_file():
            with open(folder / GROUPS_FILE, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not {"path", "group"} <= set(reader.fieldnames or ()):
                    raise SplitError(f"{folder / GROUPS_FILE} has columns {reader.fieldnames}; it needs 'path' and 'group'",
                                     hint="write a header line 'path,group', paths relative to the dataset folder")
                rules[dataset] = {row["path"]: row["group"] for row in reader}
        elif (folder / GROUP_SEPARATOR_FILE).is_file():
            separator = (folder / GROUP_SEPARATOR_FILE).read_text(encoding="utf-8").strip("\r\n")
            if not separator:
                raise SplitError(f"{folder / GROUP_SEPARATOR_FILE} is empty", hint="write the separator on its first line, e.g. __")
            rules[dataset] = separator
    if not rules:
        return None
    groups: dict[str, str] = {}
    for path in paths:
        dataset, _, rel = path.partition("/")
        rule = rules.get(dataset)
        if isinstance(rule, dict):
            group = rule.get(rel, rel)
        elif isinstance(rule, str):
            name = rel.rpartition("/")[2]
            group = name.split(rule, 1)[0] if rule in name else rel
        else:
            group = rel
        groups[path] = f"{dataset}/{group}"
    return groups
