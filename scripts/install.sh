#!/usr/bin/env bash
# Create .venv and install PyTrain with the given extras (default: dev). Idempotent: a stamp file
# records what was installed, so a second run with unchanged pyproject.toml/constraints.txt
# takes seconds.
#
#   scripts/install.sh            # everything (tests, training, serving, docker, embedded PostgreSQL)
#   scripts/install.sh demo       # what `pytrain demo` needs
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
case "$profile" in
  dev) extras="dev" ;;
  demo) extras="demo" ;;
  *) echo "usage: scripts/install.sh [dev|demo]" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "error: PyTrain needs Python >= 3.10; $python is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.pytrain-install-$extras"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
up_to_date() { [ -f "$1" ] && [ "$(cat "$1")" = "$want" ]; }
if up_to_date "$stamp" || up_to_date ".venv/.pytrain-install-dev"; then
  echo "==> .venv is up to date ($extras)"
  exit 0
fi
echo "==> installing PyTrain[$extras] into .venv (torch is large: this takes a few minutes the first time)"
.venv/bin/python -m pip install --quiet --upgrade pip wheel
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$extras]"
echo "$want" > "$stamp"
echo "==> installed"
