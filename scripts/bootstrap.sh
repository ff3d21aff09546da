#!/usr/bin/env bash
# Idempotent set-up shared by scripts/test.sh and scripts/run.sh (and CI):
#   - .venv (python3 -m venv) when missing;
#   - pip install -r requirements.txt only when requirements.txt (or the venv's Python) changed
#     since the last successful install (hash kept in .venv/.requirements.sha256);
#   - redis-server from apt when missing and we are root (otherwise a clear message);
#   - secrets in the untracked .env when missing (scripts/generate_secrets.py).
# Run it (./scripts/bootstrap.sh) or source it; sourcing does not change your shell options.

_beacon_bootstrap() (
    set -euo pipefail
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$root"

    say() { printf 'bootstrap: %s\n' "$*" >&2; }
    is_root() { [ "$(id -u)" -eq 0 ]; }
    apt_updated=0
    apt_install() {
        if [ "$apt_updated" -eq 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    }
    can_apt() { is_root && command -v apt-get >/dev/null 2>&1; }

    # -- Python virtualenv ------------------------------------------------------------------
    python="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import venv, ensurepip' \
            >/dev/null 2>&1; then
            if can_apt; then
                say "installing python3 and python3-venv with apt-get"
                apt_install python3 python3-venv
                python=python3
            else
                say "ERROR: $python with the venv module is required (Debian: apt-get install python3 python3-venv)"
                exit 1
            fi
        fi
        say "creating .venv with $("$python" -V 2>&1)"
        rm -rf .venv
        "$python" -m venv .venv
    fi

    # -- Python packages --------------------------------------------------------------------
    if [ -f requirements.txt ]; then
        stamp=.venv/.requirements.sha256
        want="$( (cat requirements.txt; .venv/bin/python -VV) | sha256sum | cut -d' ' -f1)"
        have="$(cat "$stamp" 2>/dev/null || true)"
        if [ "$want" != "$have" ]; then
            say "installing requirements.txt into .venv"
            .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
            printf '%s\n' "$want" >"$stamp"
        fi
    else
        say "WARNING: requirements.txt not found; skipping package installation"
    fi

    # -- Redis --------------------------------------------------------------------------------
    if ! command -v redis-server >/dev/null 2>&1; then
        if can_apt; then
            say "installing redis-server with apt-get"
            apt_install redis-server
        else
            say "WARNING: redis-server is not installed and this is not a root Debian shell;"
            say "         install it (sudo apt-get install redis-server) before running tests or"
            say "         scripts/run.sh (which can also reuse a Redis already answering on REDIS_URL)"
        fi
    fi

    # -- Secrets (.env, untracked) ------------------------------------------------------------
    have_secret() {
        # set in the environment, or a non-empty NAME=... line in .env
        [ -n "${!1:-}" ] && return 0
        [ -f .env ] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*[^[:space:]#]" .env
    }
    if [ -f scripts/generate_secrets.py ]; then
        if ! have_secret JWT_SECRET || ! have_secret VAPID_PRIVATE_KEY \
            || ! have_secret VAPID_PUBLIC_KEY || ! have_secret EMAIL_LINK_SECRET; then
            say "generating missing secrets into .env"
            .venv/bin/python scripts/generate_secrets.py >/dev/null
        fi
    fi
)

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    _beacon_bootstrap
    return $?
fi
_beacon_bootstrap
