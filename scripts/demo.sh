#!/usr/bin/env bash
# The main job on the embedded defaults: set up (idempotent), then `astra demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/astra demo "$@"
