#!/usr/bin/env bash
# Serve the documentation site (docs/, mkdocs.yml) on http://127.0.0.1:8000 while you edit it;
# pages reload on save. The reference pages are generated from the code (scripts/mkdocs_hooks.py).
#   scripts/docs.sh                      # serve
#   scripts/docs.sh -a 0.0.0.0:8000      # extra arguments go to `mkdocs serve`
# Build once, as the tests do: .venv/bin/mkdocs build --strict -d /tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
export NO_MKDOCS_2_WARNING=1   # Material's end-of-life notice (docs/adr/0012-documentation-site.md)
exec .venv/bin/mkdocs serve "$@"
