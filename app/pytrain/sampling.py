"""Which frames of a video make a clip: the one index function of training, evaluation and the client.

Two modes (the task row's ``sampling`` column, kept in ``tensor_spec.json`` and the INI):

- ``uniform`` (the default): ``num_frames`` frames spread over the whole video. The video is cut
  into ``num_frames`` equal segments (TSN, Wang et al. 2016); evaluation takes the centre of each
  segment, training a random frame in each (temporal jitter). A clip covers the whole video
  however long it is, so it suits trimmed clips of a few seconds.
- ``dense``: ``num_frames`` frames ``frame_interval`` frames apart (MMAction2's ``SampleFrames``
  with ``clip_len=num_frames``), a window of ``num_frames * frame_interval`` frames. Training
  draws the window's start at random; evaluation takes the centre window. It keeps the frame rate
  of motion the same whatever the video's length, so it suits long recordings.

Several clips per video:

- ``num_clips`` (training): each training video gives ``num_clips`` clips per epoch. In ``dense``
  mode clip ``j`` draws its start in the ``j``-th of ``num_clips`` equal parts of the possible
  starts (MMAction2's ``SampleFrames._get_train_clips``), so the clips cover the video; in
  ``uniform`` mode each clip has its own jitter.
- ``test_clips`` ``K`` (validation, test, ``pytrain evaluate``/``predict``): ``K`` evenly spaced,
  deterministic views whose class probabilities are averaged (multi-view testing). ``dense``:
  window starts ``round(k * max_start / (K - 1))`` (MMAction2's ``_get_test_clips``; one view: the
  centre window); ``uniform``: view ``k`` takes the point ``(k + 0.5) / K`` of each segment (one
  view: the centre, today's evaluation clip).

Short videos: ``uniform`` repeats frames (each shown ``~num_frames / length`` times); ``dense``
loops, i.e. index ``i`` becomes ``i mod length`` (MMAction2's default ``out_of_bound_opt='loop'``):
a window longer than the video starts at frame 0 and wraps around.

Difference from MMAction2: its test windows span ``(num_frames - 1) * frame_interval + 1`` frames
and its training windows ``num_frames * frame_interval``; here both use the latter, so an
evaluation window is always one a training clip could have drawn.

Sources: ``mmaction/datasets/transforms/loading.py`` (``SampleFrames``) in open-mmlab/mmaction2.

This module imports only numpy: the orchestrator (no torch) checks a row's sampling with
:func:`check_sampling`, and the client samples with :func:`clip_indices`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pytrain.errors import ConfigurationError
from pytrain.task_columns import SAMPLING_MODES, column
from pytrain.task_columns import default as column_default


def check_sampling(mode: str, frame_interval: int, *, num_clips: int = 1, test_clips: int = 1) -> None:
    """Refuse a sampling setting training cannot follow.

    Args:
        mode: ``uniform`` or ``dense`` (:data:`pytrain.task_columns.SAMPLING_MODES`).
        frame_interval: frames between two sampled frames (``dense``); must be 1 with ``uniform``.
        num_clips, test_clips: clips per training video per epoch, views per evaluated video.

    Raises:
        ConfigurationError: an unknown mode, a count outside its column's bounds, or
            ``frame_interval != 1`` with ``uniform`` (naming the value and the fix).
    """
    if mode not in SAMPLING_MODES:
        raise ConfigurationError(f"sampling {mode!r} is not a sampling mode", hint=f"use one of {SAMPLING_MODES}")
    for name, value in (("frame_interval", frame_interval), ("num_clips", num_clips), ("test_clips", test_clips)):
        bounds = column(name)
        if isinstance(value, bool) or not isinstance(value, int) or not bounds.low <= value <= bounds.high:
            raise ConfigurationError(f"{name}={value!r} is out of range", hint=f"use an integer from {bounds.low} to {bounds.high}")
    if mode == "uniform" and frame_interval != 1:
        raise ConfigurationError(
            f"frame_interval={frame_interval} needs sampling='dense' (uniform sampling spreads num_frames over the whole video)",
            hint="set sampling=dense for frames frame_interval apart, or frame_interval=1",
        )


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video (see the module docstring); checked on construction.

    Attributes:
        mode: ``uniform`` or ``dense``.
        frame_interval: frames between two sampled frames in ``dense`` mode (1 in ``uniform``).
        num_clips: clips per training video per epoch.
        test_clips: evenly spaced views averaged at evaluation and prediction.

    Raises:
        ConfigurationError: see :func:`check_sampling`.
    """

    mode: str = column_default("sampling")
    frame_interval: int = column_default("frame_interval")
    num_clips: int = column_default("num_clips")
    test_clips: int = column_default("test_clips")

    def __post_init__(self) -> None:
        check_sampling(self.mode, self.frame_interval, num_clips=self.num_clips, test_clips=self.test_clips)

    def window(self, num_frames: int) -> int:
        """Frames a ``dense`` clip's window spans (``num_frames * frame_interval``); the whole
        video in ``uniform`` mode, where it is not used."""
        return num_frames * self.frame_interval


def clip_indices(
    num_video_frames: int, num_frames: int, sampling: ClipSampling | None = None, *, rng: np.random.Generator | None = None,
    clip: int = 0,
) -> np.ndarray:
    """Frame indices of the clips of one video.

    Args:
        num_video_frames: frames in the video (>= 1).
        num_frames: frames per clip (T, >= 1).
        sampling: the mode and counts; default uniform, one clip.
        rng: ``None`` for evaluation (deterministic: ``sampling.test_clips`` views); a generator
            for training (one clip, randomly placed).
        clip: with ``rng``, which of the ``sampling.num_clips`` training clips of this video
            (``0 <= clip < num_clips``): in ``dense`` mode it picks the part of the video the
            window starts in.

    Returns:
        ``(V, T)`` int64 indices in ``[0, num_video_frames)``: ``V = test_clips`` views for
        evaluation, ``V = 1`` for training. Each row is non-decreasing except where a ``dense``
        window longer than the video wraps around.

    Raises:
        ValueError: ``num_video_frames < 1``, ``num_frames < 1``, or ``clip`` out of range.
    """
    sampling = sampling or ClipSampling()
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= clip < sampling.num_clips:
        raise ValueError(f"clip {clip} is not one of the {sampling.num_clips} clips per video")
    n = num_video_frames
    if sampling.mode == "uniform":
        segment = n / num_frames
        starts = np.arange(num_frames, dtype=np.float64) * segment
        if rng is None:
            points = (np.arange(sampling.test_clips, dtype=np.float64) + 0.5) / sampling.test_clips
            positions = starts[None, :] + segment * points[:, None]
        else:
            positions = (starts + rng.random(num_frames) * segment)[None, :]
        return np.clip(np.floor(positions).astype(np.int64), 0, n - 1)
    window = sampling.window(num_frames)
    if rng is None:
        max_start = max(n - window, 0)
        views = sampling.test_clips
        if views == 1:
            offsets = np.array([max_start // 2], dtype=np.int64)
        else:
            offsets = np.round(np.arange(views) * (max_start / (views - 1))).astype(np.int64)
    else:
        possible = n - window + 1  # starts that keep the window inside the video
        if possible >= 1:
            part = possible / sampling.num_clips
            offsets = np.array([min(possible - 1, int(np.floor((clip + rng.random()) * part)))], dtype=np.int64)
        else:
            offsets = np.zeros(1, dtype=np.int64)  # the window is longer than the video: loop from frame 0
    indices = offsets[:, None] + np.arange(num_frames, dtype=np.int64)[None, :] * sampling.frame_interval
    return np.mod(indices, n)


__all__ = ["ClipSampling", "check_sampling", "clip_indices"]
