#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the whole test suite.
# Arguments go to pytest, e.g. ./scripts/test.sh -k presence -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --durations=20 "$@"
