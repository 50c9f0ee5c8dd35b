#!/usr/bin/env bash
# Download into .whl/ the wheels a bare GPU host (python 3.12, x86-64, no package index) needs
# beyond its own torch stack, for benchmarks/gpu_check.sh. Run here, from anywhere in the repo.
#
#   decord 0.6.0  13 MiB  the training path's decoder (pytrain.video)
#   av 19.0.2     33 MiB  PyAV: H.264 clips for the benchmark and tests/gpu when there is no ffmpeg binary
#
# pydantic, pydantic-settings, sqlalchemy, psycopg and tritonclient are left out on purpose: the
# training entrypoint imports none of them (bench_gpu.py reports them as missing, which is the
# truth for such a host). Without av the data section and the CUDA resume test skip with the
# reason, unless the host has ffmpeg.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux2010_x86_64 -d .whl decord==0.6.0 av==19.0.2
du -ch .whl/*.whl | tail -1
