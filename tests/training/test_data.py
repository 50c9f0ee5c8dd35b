"""Sampling, clip shapes, determinism, the cache, the shuffle buffer and the bad-file pre-scan."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.clips import make_bad_files, make_lavfi_clip

from pytrain.errors import TrainingError
from pytrain.training import data as data_mod
from pytrain.training.data import ClipCache, ClipDataset, Sample, ShuffleBufferSampler, load_samples
from pytrain.training.probe import scan_videos
from pytrain.training.transforms import TrainPreset, apply_boxes
from pytrain.video import read_clip, sample_indices
from training.conftest import write_task


def test_sample_indices_eval_takes_segment_centres():
    assert sample_indices(40, 4).tolist() == [5, 15, 25, 35]
    assert sample_indices(7, 1).tolist() == [3]


def test_sample_indices_train_jitter_stays_inside_segments():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_indices(40, 4, rng=rng)
        assert idx.dtype == np.int64
        assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(idx))


def test_sample_indices_short_video_repeats_frames():
    idx = sample_indices(3, 8)
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError):
        sample_indices(0, 8)


@pytest.mark.parametrize(("size", "rate", "source"), [("96x64", 15, "testsrc2"), ("160x120", 25, "mandelbrot"), ("64x48", 30, "smptebars")])
def test_clip_dataset_returns_uint8_clips_of_the_task_size(tmp_path, size, rate, source):
    clip = make_lavfi_clip(tmp_path / f"{source}.mp4", source=source, size=size, rate=rate, seconds=1.0)
    samples = [Sample(clip, clip.name, 1, "train")]
    for train in (False, True):
        ds = ClipDataset(samples, 8, 40, 56, train=train, augment=TrainPreset() if train else None)
        frames, label, *box = ds[(0, 3)] if train else ds[0]
        assert frames.shape == (8, 40, 56, 3) and frames.dtype == torch.uint8
        assert label.item() == 1 and label.dtype == torch.int64
        assert len(box) == int(train)
        if train:
            assert box[0].shape == (5,) and box[0].dtype == torch.int64
            assert apply_boxes(frames[None], box[0][None]).shape == (1, 8, 40, 56, 3)


def test_clip_shorter_than_num_frames_is_padded_by_repetition(tmp_path):
    clip = make_lavfi_clip(tmp_path / "short.mp4", size="64x48", rate=10, seconds=0.3)  # 3 frames
    frames = ClipDataset([Sample(clip, "short.mp4", 0, "test")], 8, 32, 32)[0][0].numpy()
    assert frames.shape == (8, 32, 32, 3)
    assert np.array_equal(frames[0], frames[1])  # index 0 repeated


def test_eval_clips_are_deterministic_and_equal_to_read_clip(synthetic_sources):
    clip = next((synthetic_sources / "dataset1").glob("*/*.mp4"))
    ds = ClipDataset([Sample(clip, "x", 0, "val")], 8, 32, 32)
    a, b = ds[0][0], ds[0][0]
    assert torch.equal(a, b)
    assert np.array_equal(a.numpy(), read_clip(clip, 8, 32, 32))


def test_train_clips_depend_only_on_seed_epoch_and_index(synthetic_sources):
    clip = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[0]
    ds = ClipDataset([Sample(clip, "x", 0, "train")], 8, 32, 32, train=True, seed=3, augment=TrainPreset())
    assert all(torch.equal(a, b) for a, b in zip(ds[(0, 1)], ds[(0, 1)]))
    assert any(not torch.equal(ds[(0, 1)][0], ds[(0, e)][0]) for e in range(2, 6))
    assert any(not torch.equal(ds[(0, 1)][2], ds[(0, e)][2]) for e in range(2, 6))


def test_train_items_augmented_in_the_step_equal_the_per_clip_transform(synthetic_sources):
    # the crop + flip moved from the workers to the training step: same boxes, same pixels
    clip = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[0]
    preset = TrainPreset(hflip=0.5)
    ds = ClipDataset([Sample(clip, "x", 0, "train")], 8, 32, 32, train=True, seed=3, augment=preset)
    for epoch in range(6):
        frames, _, box = ds[(0, epoch)]
        rng = np.random.default_rng((3, epoch, 0))
        indices = sample_indices(16, 8, rng=rng)  # the jitter draws first (from the pool of 2 x 8 frames), then the box
        assert np.array_equal(frames.numpy(), read_clip(clip, 16, 32, 32)[indices])
        expected = preset(frames.numpy(), rng)
        assert np.array_equal(apply_boxes(frames[None], box[None])[0].numpy(), expected)


def test_train_items_without_augment_carry_the_identity_box(synthetic_sources):
    clip = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[0]
    frames, _, box = ClipDataset([Sample(clip, "x", 0, "train")], 8, 32, 40, train=True)[(0, 2)]
    assert box.tolist() == [0, 0, 32, 40, 0]
    assert torch.equal(apply_boxes(frames[None], box[None])[0], frames)


def test_apply_boxes_crops_resizes_and_flips_each_clip_by_its_own_box():
    clips = torch.zeros((3, 2, 16, 16, 3), dtype=torch.uint8)
    clips[:, :, 4:12, 2:10] = 77  # an 8x8 patch: cropped and resized it fills the frame
    clips[:, :, :, 0] = torch.tensor([1, 2, 3], dtype=torch.uint8)  # the left column, to see flips
    boxes = torch.tensor([[0, 0, 16, 16, 0], [4, 2, 8, 8, 0], [0, 0, 16, 16, 1]])
    out = apply_boxes(clips, boxes)
    assert out.shape == clips.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], clips[0])
    assert bool((out[1] == 77).all())
    assert torch.equal(out[2], clips[2].flip(2)) and out[2][0, 0, -1].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="2 boxes for 3 clips"):
        apply_boxes(clips, boxes[:2])


def test_apply_boxes_batched_gpu_path_agrees_with_the_cpu_uint8_kernel():
    # the GPU path (one float grid_sample per batch) runs here on the CPU: within 1 of the CPU path
    from pytrain.training.transforms import _sample_boxes

    rng = np.random.default_rng(0)
    preset = TrainPreset(scale=(0.2, 1.0), hflip=0.5)
    for h, w in ((112, 112), (37, 29), (32, 48)):
        clips = torch.from_numpy(rng.integers(0, 256, (6, 3, h, w, 3), dtype=np.uint8))
        boxes = torch.from_numpy(np.stack([preset.draw(h, w, rng) for _ in range(6)]))
        boxes[0] = torch.tensor([0, 0, h, w, 1])  # a flip alone
        cpu = apply_boxes(clips, boxes).to(torch.int16)
        gpu = _sample_boxes(clips, boxes.tolist()).to(torch.int16)
        assert gpu.shape == (6, 3, h, w, 3)
        assert int((cpu - gpu).abs().max()) <= 1
        assert torch.equal(cpu[0], gpu[0])


def test_cache_serves_clips_without_decoding_again(synthetic_sources, tmp_path, monkeypatch):
    clip = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[0]
    cache = ClipCache(tmp_path / "cache")
    evaluation = ClipDataset([Sample(clip, "x", 0, "val")], 8, 32, 32, cache=cache)
    training = ClipDataset([Sample(clip, "x", 0, "train")], 8, 32, 32, train=True, cache=cache)
    first_eval, first_train = evaluation[0][0], training[(0, 1)][0]
    assert len(list((tmp_path / "cache").rglob("*.clip"))) == 2  # eval clip + training pool

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the clip is cached")

    monkeypatch.setattr(data_mod, "read_clip", no_decoding)
    monkeypatch.setattr(data_mod, "decode_views", no_decoding)
    monkeypatch.setattr(data_mod, "decode_picked", no_decoding)
    assert torch.equal(evaluation[0][0], first_eval)
    assert np.array_equal(first_eval.numpy(), read_clip(clip, 8, 32, 32))
    assert torch.equal(training[(0, 1)][0], first_train)
    monkeypatch.undo()
    # the cache changes no frame: without it the same pool frames are decoded from the video
    streaming = ClipDataset([Sample(clip, "x", 0, "train")], 8, 32, 32, train=True, cache=None)
    assert torch.equal(streaming[(0, 1)][0], first_train)


def test_cache_decodes_again_when_an_entry_is_damaged(synthetic_sources, tmp_path):
    clip = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[0]
    cache = ClipCache(tmp_path / "cache")
    dataset = ClipDataset([Sample(clip, "x", 0, "val")], 8, 32, 32, cache=cache)
    first = dataset[0][0]
    (entry,) = (tmp_path / "cache").rglob("*.clip")
    entry.write_bytes(entry.read_bytes()[:-100])  # truncated: the last frame is short
    assert torch.equal(dataset[0][0], first) and cache.damaged == 1 and cache.decoded == 2
    assert torch.equal(dataset[0][0], first) and cache.damaged == 1 and cache.decoded == 2  # written whole again


def test_shuffle_buffer_of_one_keeps_manifest_order():
    assert [i for i, _ in ShuffleBufferSampler(10, 1)] == list(range(10))


def test_shuffle_buffer_emits_only_clips_that_entered_the_buffer():
    n, k = 200, 8
    order = [i for i, _ in ShuffleBufferSampler(n, k, seed=1)]
    assert sorted(order) == list(range(n))
    # tf.data semantics: position p holds a clip among the first p + k of the manifest
    assert all(index < position + k for position, index in enumerate(order))
    assert order != list(range(n))


def test_shuffle_buffer_order_depends_on_seed_and_epoch_only():
    a, b = ShuffleBufferSampler(50, 300, seed=2), ShuffleBufferSampler(50, 300, seed=2)
    assert list(a) == list(b)
    first = [i for i, _ in a]
    a.set_epoch(1)
    assert [i for i, _ in a] != first
    assert {e for _, e in a} == {1}


def test_shuffle_buffer_splits_the_order_between_ranks():
    shares = [[i for i, _ in ShuffleBufferSampler(11, 4, seed=0, rank=r, world_size=3)] for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set().union(*map(set, shares)) == set(range(11))


def test_prescan_skips_bad_files_with_reasons(tmp_path, synthetic_sources):
    bad = make_bad_files(tmp_path / "bad")
    good = sorted((synthetic_sources / "dataset1").glob("*/*.mp4"))[:2]
    paths = [good[0], bad["empty"], bad["text"], bad["truncated"], good[1]]
    found = scan_videos(paths, 8, 32, 32, timeout=30, processes=2)
    assert sorted(found) == [1, 2, 3]
    assert found[1] == "the file is empty"
    assert all(isinstance(found[i], str) and found[i] for i in (2, 3))


def test_prescan_survives_a_hanging_and_a_crashing_decoder(tmp_path):
    from training.probe_targets import misbehaving_child

    paths = [tmp_path / name for name in ("a.mp4", "hang.mp4", "b.mp4", "crash.mp4", "c.mp4")]
    found = scan_videos(paths, 8, 32, 32, timeout=1.5, processes=1, _target=misbehaving_child)
    assert found == {1: "the decoder hung for more than 1.5 s", 3: "the decoder crashed (killed by signal 11)"}


def test_prescan_raises_naming_the_file_when_the_probe_child_cannot_start(tmp_path, monkeypatch):
    import multiprocessing.context

    def no_more_processes(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", no_more_processes)
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    with pytest.raises(TrainingError) as info:
        scan_videos(paths, 8, 32, 32, timeout=5, processes=1)
    assert info.value.message == (
        f"cannot pre-scan {paths[0]}: the decoder probe process could not start: OSError: [Errno 24] Too many open files"
    )
    assert isinstance(info.value.__cause__.__cause__, OSError)


def test_prescan_raises_when_the_probe_child_dies_before_it_is_ready(tmp_path):
    from training.probe_targets import dies_at_start

    paths = [tmp_path / "a.mp4"]
    with pytest.raises(TrainingError) as info:
        scan_videos(paths, 8, 32, 32, timeout=5, processes=1, _target=dies_at_start)
    assert info.value.message == f"cannot pre-scan {paths[0]}: the decoder probe process died before it was ready (exit code 3)"


def test_manifest_rows_with_unknown_labels_or_missing_files_are_skipped(tmp_path, synthetic_sources):
    rel = sorted((synthetic_sources / "dataset1").glob("cooking_*/*.mp4"))[0].relative_to(synthetic_sources).as_posix()
    rows = [(rel, "cooking", "train"), (rel, "dancing", "train"), ("dataset1/nope/x.mp4", "cooking", "test"), (rel, "eating", "test")]
    spec = write_task(tmp_path / "task", synthetic_sources, rows=rows, class_list=["cooking", "eating"])
    samples, skipped = load_samples(tmp_path / "task", synthetic_sources, spec.class_list)
    assert [(s.rel_path, s.label, s.split) for s in samples] == [(rel, 0, "train"), (rel, 1, "test")]
    assert skipped == [
        {"path": rel, "reason": "label 'dancing' is not in the class list"},
        {"path": "dataset1/nope/x.mp4", "reason": "no such file"},
    ]


def test_manifest_path_leaving_the_sources_root_is_refused(tmp_path, synthetic_sources):
    from pytrain.errors import ConfigurationError

    write_task(tmp_path / "task", synthetic_sources, rows=[("../../etc/passwd", "a", "train")], class_list=["a", "b"])
    with pytest.raises(ConfigurationError, match="leaves the sources root"):
        load_samples(tmp_path / "task", synthetic_sources, ["a", "b"])


@pytest.mark.parametrize(("text", "error"), [
    ("path,label,split\na/x.mp4,a,train\na/y.mp4,a,holdout\n", "manifest.csv:3: split 'holdout' is not one of"),
    ("path,label\na/x.mp4,a\n", "manifest.csv: columns ['path', 'label'], expected ['path', 'label', 'split']"),
    ("path,label,split\n/etc/passwd,a,train\n", "manifest.csv:2: path '/etc/passwd' leaves the sources root"),
])
def test_a_malformed_manifest_is_refused_naming_file_and_line(tmp_path, text, error):
    from pytrain.errors import ConfigurationError
    from pytrain.spec import read_manifest

    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ConfigurationError, match=re.escape(error)):
        read_manifest(tmp_path)
