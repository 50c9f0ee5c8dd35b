"""``pytrain evaluate`` and :mod:`pytrain.client.evaluate` against the session's real Triton."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.clips import make_bad_files
from fixtures.triton import make_task_folder, task_record
from pytrain.client import TritonClient
from pytrain.client.evaluate import clips_from_paths, evaluate
from pytrain.publish import publish_task
from pytrain.settings import Settings
from pytrain.sources.synthetic import make_dataset
from pytrain.spec import ManifestRow, write_manifest

pytestmark = pytest.mark.triton


def publish(settings: Settings, tmp_path: Path, model: str, classes: list[str]) -> None:
    task_dir = make_task_folder(tmp_path / f"task-{model}", model_name=model, class_list=classes)
    assert publish_task(task_dir, settings=settings, task_record=task_record(model)).load_requested is True


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    return subprocess.run([sys.executable, "-m", "pytrain.cli.main", *args], capture_output=True, text=True, env={**base, **env}, timeout=180)


def test_evaluate_on_a_task_test_split_prints_the_accuracy_predict_gives(
    triton_settings: Settings, synthetic_sources: Path, tmp_path: Path
) -> None:
    model = "eval_kitchen"
    publish(triton_settings, tmp_path, model, ["cooking", "drinking", "eating", "walking"])
    clips = sorted((synthetic_sources / "dataset1").glob("*/clip_00[01].mp4"))
    # Eating clips labelled walking: the model is right on 10 of 12, so the accuracy is not trivially 1.
    rows = [ManifestRow(str(c.relative_to(synthetic_sources)), "walking" if "eating" in c.parent.name else c.parent.name.split("_")[0], "test")
            for c in clips]
    task_dir = tmp_path / "model_tasks" / f"task-9-{model}"
    task_dir.mkdir(parents=True)
    write_manifest(rows + [ManifestRow(rows[0].path, rows[0].label, "train")], task_dir)
    with TritonClient(triton_settings.triton_grpc_url) as client:  # what the demo does: predict, top-1
        top = client.predict(model, [synthetic_sources / r.path for r in rows], top_k=1)
    demo_accuracy = sum(t[0].label == r.label for t, r in zip(top, rows)) / len(rows)

    result = cli("evaluate", "--model", model, "--task", "9", "--url", triton_settings.triton_grpc_url,
                 PYTRAIN_MODEL_TASKS_DIR=str(tmp_path / "model_tasks"), PYTRAIN_SOURCES_DIR=str(synthetic_sources),
                 PYTRAIN_RESULTS_DIR=str(tmp_path / "results"))

    assert result.returncode == 0, result.stderr[-2000:]
    assert demo_accuracy == pytest.approx(10 / 12)
    assert f"accuracy {demo_accuracy:.3f}" in result.stdout
    [folder] = (tmp_path / "results" / model / "1" / "evaluations").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert (report["version"], report["metrics"]["count"], report["metrics"]["accuracy"]) == ("1", 12, pytest.approx(demo_accuracy))
    assert report["metrics"]["per_class"]["walking"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 4}
    assert (folder / "confusion.png").read_bytes().startswith(b"\x89PNG")


def test_unknown_classes_count_as_other_or_are_listed_and_undecodable_clips_fail_unless_skipped(
    triton_settings: Settings, synthetic_sources: Path, tmp_path: Path
) -> None:
    publish(triton_settings, tmp_path, "eval_other", ["Other", "cooking", "drinking"])
    publish(triton_settings, tmp_path, "eval_three", ["cooking", "drinking", "eating"])
    holdout = tmp_path / "holdout"
    for folder in ("cooking_cuttingbread", "walking_dog"):
        shutil.copytree(synthetic_sources / "dataset1" / folder, holdout / folder)
    clips = clips_from_paths([holdout])
    assert len(clips) == 16 and {c.label for c in clips} == {"cooking", "walking"}

    with TritonClient(triton_settings.triton_grpc_url) as client:
        with_other = evaluate(client, "eval_other", clips, batch_size=5)
        without = evaluate(client, "eval_three", clips)
    assert with_other.metrics["per_class"]["Other"]["support"] == 8 and with_other.unknown == []
    assert without.metrics["count"] == 8 and sorted(u["label"] for u in without.unknown) == ["walking"] * 8

    make_bad_files(holdout / "cooking_bad")
    args = ("evaluate", "--model", "eval_three", "--url", triton_settings.triton_grpc_url, str(holdout))
    failed = cli(*args, PYTRAIN_RESULTS_DIR=str(tmp_path / "results"))
    skipped = cli(*args, "--skip-bad", PYTRAIN_RESULTS_DIR=str(tmp_path / "results"))
    assert failed.returncode == 1 and failed.stderr.count("could not decode") == 3, failed.stderr[-2000:]
    assert skipped.returncode == 0 and "accuracy 1.000" in skipped.stdout, skipped.stderr[-2000:]


def test_evaluate_names_the_address_when_triton_is_unreachable(tmp_path: Path) -> None:
    make_dataset(tmp_path / "d", folders=("cooking_x",), clips_per_folder=1, height=32, width=32)
    result = cli("evaluate", "--model", "m", "--url", "127.0.0.1:9", "--ready-timeout", "1", str(tmp_path / "d"))
    assert result.returncode == 1 and "unreachable at 127.0.0.1:9" in result.stderr
