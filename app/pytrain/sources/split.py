"""The deterministic, stratified train/val/test split and the manifest that records it.

Each class is split on its own (stratified), per video file, with a random generator seeded by
the task's ``seed`` and the label, so the same task always gets the same split and adding a class
does not reshuffle the others. The manifest (``manifest.csv``: ``path,label,split``, ``path``
relative to the sources root) is written into the task folder; videos are never copied.
"""

from __future__ import annotations

import math
import random

from pytrain.errors import SplitError
from pytrain.sources.resolve import ResolvedClasses

# manifest.csv's row, reader and writer belong to the task-folder contract in pytrain.spec
# (training reads the manifest too, and must not import the orchestrator's side); re-exported
# here beside the split that makes the rows.
from pytrain.spec import SPLITS, ManifestRow, read_manifest, write_manifest

__all__ = ["ManifestRow", "min_clips", "read_manifest", "split_clips", "split_sizes", "write_manifest"]


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
) -> list[ManifestRow]:
    """Split every class of ``resolved`` into train/val/test.

    Returns:
        Manifest rows grouped by split (train, val, test); inside a split the rows are in a
        seeded random order, so classes are interleaved. Training streams the train rows in
        manifest order through a ``shuffle_size`` buffer; a class-sorted manifest would give
        single-class batches whenever a class has more clips than the buffer holds.

    Raises:
        SplitError: a class has too few clips for the split (the message names the class, its
            count and the minimum).
    """
    rows: list[ManifestRow] = []
    by_label: dict[str, list[str]] = {label: [] for label in resolved.class_list}
    for clip in resolved.clips:
        by_label[clip.label].append(clip.path)
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
        shuffled = sorted(paths)
        random.Random(f"{seed}/{label}").shuffle(shuffled)  # str seeds hash deterministically (sha512)
        for i, path in enumerate(shuffled):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            rows.append(ManifestRow(path=path, label=label, split=split))
    order = {name: i for i, name in enumerate(SPLITS)}
    rows.sort(key=lambda r: (order[r.split], r.label, r.path))
    mixer = random.Random(f"{seed}/order")
    grouped = {name: [r for r in rows if r.split == name] for name in SPLITS}
    for split_rows in grouped.values():
        mixer.shuffle(split_rows)
    return [row for name in SPLITS for row in grouped[name]]
