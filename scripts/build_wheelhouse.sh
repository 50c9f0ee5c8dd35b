#!/usr/bin/env bash
# Download the training image's Python dependencies as wheels into docker/wheelhouse/ (part of the
# build context), so that docker/train.Dockerfile installs them with `pip --no-index` when the
# build cannot reach a package index (CI; air-gapped GPU servers).
#
# Usage: scripts/build_wheelhouse.sh [--python-version 3.10] [--dest DIR]
#        scripts/build_wheelhouse.sh --orchestrator [--dest DIR]
#   --python-version  the base image's Python (NGC PyTorch 24.x: 3.10; 25.x: 3.12; the test base
#                     image: 3.11, the default). Wheels are downloaded for manylinux x86_64.
#   --orchestrator    instead: the orchestrator image's wheels (PyTrain's extras "orchestrator", "tracking", "sweep" and
#                     "console", for the console service, and its build backend) for docker/orchestrator.Dockerfile, into
#                     docker/orchestrator-wheels; for this host's platform and Python (3.11, as
#                     the image's).
#   --dest            default docker/wheelhouse (docker/orchestrator-wheels with --orchestrator)
# Env: PYTHON (host Python with pip; default .venv/bin/python, else python3).
# Idempotent: pip skips wheels already in the folder. numpy stays < 2 (see requirements-train.txt).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
PYVER="3.11"
DEST=""
ORCHESTRATOR=0
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYVER="$2"; shift 2 ;;
        --orchestrator) ORCHESTRATOR=1; shift ;;
        --dest) DEST="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build_wheelhouse: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT_DIR/.venv/bin/python" ]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
if [ "$ORCHESTRATOR" = 1 ]; then
    DEST="${DEST:-$ROOT_DIR/docker/orchestrator-wheels}"
    mkdir -p "$DEST"
    # pip builds the checkout's metadata to resolve the extra, and saves no file for the checkout
    # itself; the build backend (pyproject's build-system) is needed by `pip install -e` offline.
    BACKEND="$("$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$ROOT_DIR/pyproject.toml")"
    # shellcheck disable=SC2086 # one requirement per line, none with spaces
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$DEST" $BACKEND "$ROOT_DIR[orchestrator,tracking,sweep,console]"
    echo "build_wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST (orchestrator)"
    exit 0
fi
DEST="${DEST:-$ROOT_DIR/docker/wheelhouse}"
mkdir -p "$DEST"
CONSTRAINTS="$(mktemp)"
REQUIREMENTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS" "$REQUIREMENTS"' EXIT
echo "numpy<2" >"$CONSTRAINTS"
# pip download evaluates environment markers for the host's Python, not --python-version: resolve
# them for the target here (e.g. onnxruntime==1.23.2; python_version < "3.11" for NGC 24.x).
"$PYTHON" - "$PYVER" "$ROOT_DIR/docker/requirements-train.txt" >"$REQUIREMENTS" <<'PY'
import sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
version = sys.argv[1]
for line in open(sys.argv[2], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"python_version": version, "python_full_version": version + ".0"}):
        req.marker = None
        print(req)
PY

"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 \
    --dest "$DEST" -r "$REQUIREMENTS" -c "$CONSTRAINTS"
echo "build_wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST (python $PYVER)"
