#!/usr/bin/env bash
# container_up.sh -- debug one training run in its container, without the database or the orchestrator.
#
# Usage:
#   app/container_up.sh [options] TASK_DIR
#   app/container_up.sh [options] --spec '{"model_name": "m", "sources": ["dataset1"], "classes": ["a", "b"]}'
#   app/container_up.sh [options] --spec task.json --manifest manifest.csv
#
# Rebuilds the training image (content-hash tag: nothing is rebuilt when nothing changed), then
# runs `python -m pytrain.training --task-dir /task --sources-root /sources` in one container,
# exactly as the docker runner does (same mounts, limits, no network), streaming its output here
# and into TASK_DIR/train.log. The container is removed when it ends or on Ctrl-C.
#
# Options:
#   --no-build            reuse the last built image (app/docker_components/cache/train-image.json)
#   --image TAG           run this image instead (no build)
#   --base-image IMAGE    base of the build            (env PYTRAIN_BASE_IMAGE)
#   --sources-root DIR    the datasets' root            (env PYTRAIN_SOURCES_DIR, default sources/)
#   --gpus all|0|0,1      GPUs (several -> torchrun)    (env PYTRAIN_GPUS; default: CPU)
#   --memory 16g          container memory limit        (env PYTRAIN_CONTAINER_MEMORY)
#   --timeout SECONDS     stop the container after this (env PYTRAIN_TASK_TIMEOUT_SECONDS)
#   --entrypoint 'CMD'    run CMD instead of the training (e.g. --entrypoint 'python -c "import torch"')
#   --spec ROW|FILE       make the task folder under model_tasks/ from a training_tasks row (JSON:
#                         model_name, sources, classes, optional columns; resolved and split as the
#                         orchestrator does), or from task.json fields plus --manifest manifest.csv
#   -h, --help            this help
#
# Needs a Docker engine (as root: scripts/start_dockerd.sh) and the NGC API key in ~/api.key when
# the base image must be pulled (PYTRAIN_NGC_API_KEY_FILE). Exit status: the container's.
# Python: $PYTRAIN_PYTHON, else the checkout's .venv, else `pytrain` on PATH.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

if [ $# -eq 0 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    [ $# -eq 0 ] && exit 2 || exit 0
fi
for arg in "$@"; do
    if [ "$arg" = "-h" ] || [ "$arg" = "--help" ]; then
        usage
        exit 0
    fi
done

if [ -n "${PYTRAIN_PYTHON:-}" ]; then
    PYTRAIN=("$PYTRAIN_PYTHON" -m pytrain.cli.main)
elif [ -x "$ROOT_DIR/.venv/bin/python" ]; then
    PYTRAIN=("$ROOT_DIR/.venv/bin/python" -m pytrain.cli.main)
elif command -v pytrain >/dev/null 2>&1; then
    PYTRAIN=(pytrain)
else
    echo "container_up.sh: no Python with PyTrain found (set PYTRAIN_PYTHON or create .venv)" >&2
    exit 1
fi

exec "${PYTRAIN[@]}" image run "$@"
