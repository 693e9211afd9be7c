#!/usr/bin/env bash
# The test command of the README: set up (idempotent), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint (ruff, whole repository, < 1 s) and strict type check (pyright on astra/, ~35 s of CPU) before the tests.
.venv/bin/ruff check .
.venv/bin/pyright --level error
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
