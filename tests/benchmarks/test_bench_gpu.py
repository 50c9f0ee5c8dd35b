"""``benchmarks/bench_gpu.py --device cpu --quick``: CI runs every section of the GPU check on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_quick_on_cpu_writes_every_section_with_sane_numbers(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick", "--output", str(out)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    env_ = report["environment"]
    assert env_["status"] == "ok" and env_["device"] == "cpu" and env_["torch"]
    assert {d["module"] for d in env_["dependencies"]} >= {"decord", "pydantic", "onnx", "onnxruntime", "torchcodec"}
    assert all(d["install"].endswith(f"pip install '{d['package']}'") for d in env_["missing"])

    cases = report["training"]["cases"]
    assert report["training"]["status"] == "ok"
    assert {(c["architecture"], c["compiled"]) for c in cases} == {("tiny", False), ("tiny", True), ("frames_resnet18", False), ("frames_resnet18", True)}
    for case in cases:
        assert case["status"] == "ok", case
        assert case["clips_per_second"] > 0 and case["tflops"] > 0 and case["flops_per_step"] > 0
        assert case["mfu"] is None and case["peak_memory_gib"] is None  # no peak known, no CUDA memory on a CPU
    # forward + backward of the same shapes: the compiled case reuses the eager count
    assert len({c["flops_per_step"] for c in cases if c["architecture"] == "tiny"}) == 1

    data = report["data"]
    assert data["status"] == "ok" and data["codec"] == "h264" and data["clips"] == 6
    assert data["decord_baseline"] > 0 and data["first_epoch"][0]["workers"] == 1 and data["first_epoch"][0]["clips_per_second"] > 0
    assert data["cached"]["clips_per_second"] > 0
    assert {v["architecture"] for v in report["data_verdict"]} == {"tiny", "frames_resnet18"}
    assert all(v["workers_needed"] >= 1 for v in report["data_verdict"])

    e2e = report["end_to_end"]
    assert e2e["status"] == "ok" and e2e["exit_code"] == 0 and e2e["device"] == "cpu"
    assert 0 <= e2e["test_accuracy"] <= 1 and e2e["exporter"]
    assert e2e["parity"]["providers"] == ["CPUExecutionProvider"]
    assert e2e["parity"]["fp32"]["max_abs_diff"] < 1e-4 and e2e["parity"]["fp32"]["top1_agreement"] == 1.0
    assert e2e["parity"]["bf16_autocast"] is None
    assert report["total_seconds"] < 180  # the issue asks < 2 min; slack for CPUs shared with other test runs
