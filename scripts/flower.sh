#!/usr/bin/env bash
# Flower, the Celery admin UI, against the same broker the workers use (REDIS_URL).
# Basic auth is mandatory: FLOWER_BASIC_AUTH=user:password (several: comma-separated), from the
# environment or .env. Flower reads it from its environment (FLOWER_* variables), never from
# its command line, where `ps` would show it to every local user.
# FLOWER_ADDRESS (default 127.0.0.1) and FLOWER_PORT (default 5555) choose where it listens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

env_file="${BEACON_ENV_FILE-.env}" # as config/settings.py: BEACON_ENV_FILE="" reads no file
if [ -z "${FLOWER_BASIC_AUTH:-}" ] && [ -n "$env_file" ] && [ -f "$env_file" ]; then
    FLOWER_BASIC_AUTH="$(sed -n 's/^FLOWER_BASIC_AUTH=//p' "$env_file" | tail -n 1)"
fi
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
    echo "flower.sh: set FLOWER_BASIC_AUTH=user:password (environment or .env)" >&2
    exit 2
fi
export FLOWER_BASIC_AUTH
exec .venv/bin/celery -A workers flower \
    --address="${FLOWER_ADDRESS:-127.0.0.1}" \
    --port="${FLOWER_PORT:-5555}" \
    --persistent=False \
    "$@"
