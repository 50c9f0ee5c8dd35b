#!/usr/bin/env bash
# The documentation's screenshots of the console (docs/images/console-*.png), taken by the tests'
# own browser: the console's browser tests save a PNG of each main page when
# PYTRAIN_CONSOLE_SCREENSHOTS names a folder (needs chromium and chromium-driver: scripts/test.sh).
#
#   scripts/console_screenshots.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTRAIN_CONSOLE_SCREENSHOTS="$ROOT/docs/images" .venv/bin/python -m pytest -p no:cacheprovider -q tests/console/test_console_browser.py
ls -l docs/images/console-*.png
