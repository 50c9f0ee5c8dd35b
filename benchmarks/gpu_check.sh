#!/usr/bin/env bash
# Check a bare GPU host: install the carried wheels, show the GPU, run benchmarks/bench_gpu.py and
# tests/gpu. Everything lands in $OUT (default results/gpu_check): nvidia-smi.txt, bench_gpu.json,
# bench_gpu.log, pytest_gpu.log.
#
#   benchmarks/gpu_wheels.sh        # here, once: downloads the wheels the host lacks into .whl/
#   benchmarks/gpu_check.sh         # there, from the repository root (python3 with torch + CUDA)
#
# The host's python3 is expected to hold torch, torchvision, onnx, onnxruntime, numpy, rich and
# pytest (an NGC PyTorch image, or the GPU machine described in ../shared/ENVIRONMENT.md); the
# wheels in .whl/ add what the training path needs beyond them (decord, and PyAV to make H.264
# clips when there is no ffmpeg binary). Each step has its own time limit (together under ten
# minutes) and a failing step does not stop the next one; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

if compgen -G ".whl/*.whl" >/dev/null; then
  # --target: nothing of the host's own environment is touched; /tmp/site comes first on the path
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || status=$?
  else  # no pip: a wheel is a zip file
    python3 -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sys.argv[1:]]' .whl/*.whl || status=$?
  fi
fi
export PYTHONPATH="/tmp/site:$PWD/app${PYTHONPATH:+:$PYTHONPATH}"

(nvidia-smi || echo "nvidia-smi: not available") 2>&1 | tee "$OUT/nvidia-smi.txt"

timeout -k 10 400 python3 benchmarks/bench_gpu.py --output "$OUT/bench_gpu.json" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
rc=${PIPESTATUS[0]}; [ "$status" -eq 0 ] && status=$rc

# --confcutdir: tests/conftest.py's plugins import the database and Triton packages, which a GPU host may lack
timeout -k 10 170 python3 -m pytest tests/gpu -q -p no:cacheprovider --confcutdir tests/gpu -rs 2>&1 | tee "$OUT/pytest_gpu.log"
rc=${PIPESTATUS[0]}; [ "$status" -eq 0 ] && status=$rc

echo "gpu_check: exit status $status; files in $OUT"
exit "$status"
