"""Clip sampling (pytrain.sampling): the frame indices of each mode, the dataset items built on them,
the checks at submit and claim, and tensor specs / INI configs written before sampling was recorded.

Budget: the index tests are pure numpy (milliseconds); the dataset test decodes a handful of real
mp4 clips (~2 s on 2 loaded cores); the whole file stays under 10 s.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from pytrain.client import ModelInfo
from pytrain.db.requests import TaskRequest
from pytrain.errors import ConfigurationError
from pytrain.orchestrator.prepare import prepare_task
from pytrain.publish.triton_config import pytrain_ini, read_pytrain_ini
from pytrain.sampling import ClipSampling, clip_indices
from pytrain.settings import Settings
from pytrain.spec import TensorSpec
from pytrain.task_columns import task_defaults
from pytrain.training.data import ClipCache, ClipDataset, Sample
from pytrain.video import clip_seconds, decode_views, read_clip, sample_indices, video_fps


def dense(interval: int, *, clips: int = 1, views: int = 1) -> ClipSampling:
    return ClipSampling("dense", interval, num_clips=clips, test_clips=views)


# --- frame indices --------------------------------------------------------------------------


def test_uniform_with_one_view_is_the_centre_of_each_segment_and_training_jitters_inside_it() -> None:
    # 30 frames, 8 segments of 3.75 frames: centres 1.875, 5.625, ...
    assert clip_indices(30, 8).tolist() == [[1, 5, 9, 13, 16, 20, 24, 28]]
    assert np.array_equal(sample_indices(30, 8), clip_indices(30, 8)[0])
    for seed in range(50):
        jittered = clip_indices(30, 8, rng=np.random.default_rng(seed))
        assert jittered.shape == (1, 8)
        assert np.all(jittered[0] >= np.floor(np.arange(8) * 3.75)) and np.all(jittered[0] < np.arange(1, 9) * 3.75)
        # the same draws as before sampling modes existed: one rng.random(T) for the jitter
        expected = np.floor(np.arange(8) * 3.75 + np.random.default_rng(seed).random(8) * 3.75).astype(int)
        assert jittered[0].tolist() == expected.tolist()


def test_uniform_views_split_every_segment_evenly() -> None:
    # 40 frames, 4 segments of 10; 2 views take the points 1/4 and 3/4 of each segment
    assert clip_indices(40, 4, ClipSampling(test_clips=2)).tolist() == [[2, 12, 22, 32], [7, 17, 27, 37]]


def test_dense_evaluation_views_are_evenly_spaced_windows_and_one_view_is_the_centre() -> None:
    # 100 frames, 4 frames 5 apart: a 20-frame window, starts 0..80
    assert clip_indices(100, 4, dense(5, views=3)).tolist() == [[0, 5, 10, 15], [40, 45, 50, 55], [80, 85, 90, 95]]
    assert clip_indices(100, 4, dense(5)).tolist() == [[40, 45, 50, 55]]
    assert np.array_equal(clip_indices(100, 4, dense(5, views=3)), clip_indices(100, 4, dense(5, views=3)))  # deterministic


def test_dense_training_windows_are_frame_interval_apart_and_clip_j_starts_in_part_j() -> None:
    sampling = dense(4, clips=3)
    starts: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for seed in range(300):
        for j in range(3):
            (row,) = clip_indices(70, 5, sampling, rng=np.random.default_rng((seed, j)), clip=j)
            assert np.all(np.diff(row) == 4)
            starts[j].add(int(row[0]))
    # window 20 frames: starts 0..50 (51 of them), cut in 3 parts of 17
    assert starts[0] == set(range(0, 17)) and starts[1] == set(range(17, 34)) and starts[2] == set(range(34, 51))
    with pytest.raises(ValueError, match="clip 3 is not one of the 3 clips"):
        clip_indices(70, 5, sampling, rng=np.random.default_rng(0), clip=3)


def test_short_videos_loop_in_dense_and_repeat_frames_in_uniform() -> None:
    # a 12-frame window (4 frames 3 apart) on a 6-frame video starts at 0 and wraps: MMAction2's 'loop'
    assert clip_indices(6, 4, dense(3, views=2)).tolist() == [[0, 3, 0, 3], [0, 3, 0, 3]]
    assert clip_indices(6, 4, dense(3, clips=2), rng=np.random.default_rng(0), clip=1).tolist() == [[0, 3, 0, 3]]
    short = clip_indices(3, 8, ClipSampling(test_clips=2))
    assert short.min() == 0 and short.max() == 2 and np.all(np.diff(short, axis=1) >= 0)


def test_sampling_that_training_cannot_follow_is_refused_naming_the_value() -> None:
    with pytest.raises(ConfigurationError, match="frame_interval=4 needs sampling='dense'"):
        ClipSampling("uniform", 4)
    with pytest.raises(ConfigurationError, match="sampling 'sparse' is not a sampling mode"):
        ClipSampling("sparse")
    with pytest.raises(ConfigurationError, match="test_clips=0 is out of range"):
        ClipSampling("dense", 2, test_clips=0)


def test_frame_interval_with_uniform_is_refused_at_submit_and_at_claim(tmp_path: Path) -> None:
    task = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "frame_interval": 4}
    with pytest.raises(ConfigurationError, match=r"frame_interval=4 needs sampling='dense'.*set sampling=dense"):
        TaskRequest.parse(task)
    assert TaskRequest.parse({**task, "sampling": "dense"}).columns()["frame_interval"] == 4

    row = {**task_defaults(), **task, "id": 1, "uid": str(uuid.uuid4())}  # a row inserted by hand, past pytrain submit
    settings = Settings(sources_dir=tmp_path / "sources", model_tasks_dir=tmp_path / "tasks", data_dir=tmp_path / "data")
    with pytest.raises(ConfigurationError, match="frame_interval=4 needs sampling='dense'"):
        prepare_task(row, settings, registered=None)
    assert not (tmp_path / "tasks").exists()  # refused before any folder is written


# --- the dataset ----------------------------------------------------------------------------


def test_dense_dataset_yields_num_clips_windows_per_video_and_evaluation_views(synthetic_sources: Path, tmp_path: Path, caplog) -> None:
    videos = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[:2]
    samples = [Sample(v, v.name, i, "train") for i, v in enumerate(videos)]
    sampling = dense(3, clips=2, views=3)
    with caplog.at_level(logging.INFO, logger="pytrain.training.data"):
        training = ClipDataset(samples, 4, 32, 32, train=True, seed=5, cache=ClipCache(tmp_path / "cache"), sampling=sampling)
    assert training.cache is None and "dense sampling reads windows frame_interval apart" in caplog.text
    assert len(training) == 4 and training.labels() == [0, 1, 0, 1]  # item i: clip i // 2 of video i % 2

    import decord

    for item in range(len(training)):
        clip, label, _ = training[(item, 3)]
        video = videos[item % 2]
        reader = decord.VideoReader(str(video), width=32, height=32, num_threads=1)
        expected = clip_indices(len(reader), 4, sampling, rng=np.random.default_rng((5, 3, item)), clip=item // 2)[0]
        assert np.all(np.diff(expected) == 3)
        assert np.array_equal(clip.numpy(), reader.get_batch(expected.tolist()).asnumpy())
        assert int(label) == item % 2

    evaluation = ClipDataset(samples, 4, 32, 32, sampling=sampling)
    views, _ = evaluation[0]
    assert views.shape == (3, 4, 32, 32, 3) and views.dtype == torch.uint8
    assert np.array_equal(views.numpy(), decode_views(videos[0], 4, 32, 32, sampling))
    # uniform with one view: the clip evaluation always read
    assert np.array_equal(ClipDataset(samples, 8, 32, 32)[1][0].numpy(), read_clip(videos[1], 8, 32, 32))


def test_a_dense_input_spans_its_window_at_the_training_videos_median_frame_rate(synthetic_sources: Path) -> None:
    videos = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[:5]
    fps = float(np.median([video_fps(v) for v in videos]))
    assert clip_seconds(videos, 4, dense(3)) == pytest.approx(12 / fps)
    # a stream decoded at num_frames / clip_seconds fps takes every frame_interval-th frame at that rate
    assert 4 / clip_seconds(videos, 4, dense(3)) == pytest.approx(fps / 3)


# --- specs written before sampling was recorded -----------------------------------------------


def test_old_tensor_spec_and_ini_without_sampling_keys_load_as_uniform_with_one_view(tmp_path: Path) -> None:
    old = {"class_list": ["a", "b"], "num_frames": 8, "height": 32, "width": 32, "input_name": "x", "output_name": "y",
           "input_dtype": "uint8", "output_dtype": "float32", "channels": 3, "architecture": "tiny", "clip_seconds": 2.0,
           "input_shape": [-1, 8, 32, 32, 3], "output_shape": [-1, 2]}
    (tmp_path / "tensor_spec.json").write_text(json.dumps(old))
    spec = TensorSpec.load(tmp_path)
    assert spec.clip_sampling == ClipSampling() and (spec.sampling, spec.frame_interval, spec.test_clips) == ("uniform", 1, 1)

    # a uniform one-view model still writes the historical INI bytes, and they read back as such
    text = pytrain_ini(spec, epochs=3, shuffle_size=300, batch_size=4)
    assert "sampling" not in text and "test_clips" not in text
    (tmp_path / "old.config").write_text(text)
    assert ModelInfo.from_pytrain_config(tmp_path / "old.config").spec.clip_sampling == ClipSampling()

    dense_spec = TensorSpec(["a", "b"], 4, 32, 32, clip_seconds=0.8, sampling="dense", frame_interval=3, test_clips=5)
    text = pytrain_ini(dense_spec, epochs=3, shuffle_size=300, batch_size=4)
    assert "\nclip_seconds = 0.8\nsampling = dense\nframe_interval = 3\ntest_clips = 5\n\n[TRAINING]\n" in text
    assert {k: read_pytrain_ini(text)[k] for k in ("sampling", "frame_interval", "test_clips")} == {
        "sampling": "dense", "frame_interval": 3, "test_clips": 5}
    (tmp_path / "dense.config").write_text(text)
    assert ModelInfo.from_pytrain_config(tmp_path / "dense.config").spec == dense_spec
