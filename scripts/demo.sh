#!/usr/bin/env bash
# The one-command demo: installs PyTrain into .venv, then runs `pytrain demo` -- synthetic mp4
# dataset, embedded PostgreSQL, a task row inserted with SQL, the orchestrator training a tiny
# model on the CPU, publishing to model_repo/, the embedded Triton, and predictions over gRPC.
# Extra arguments go to `pytrain demo` (e.g. --sources DIR, --epochs N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh demo
exec .venv/bin/pytrain demo "$@"
