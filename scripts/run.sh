#!/usr/bin/env bash
# The README's "run the whole service" command, for a laptop or a single box:
#   Redis (private, unless one already answers on REDIS_URL), database migrations, then
#   web (Flask-SocketIO on gevent), the `unread` worker, the `push`, `webhooks` and `email`
#   workers (gevent pools), exactly one beat, and a local SMTP sink for the demo's emails
#   unless SMTP_HOST is set — each line of output prefixed with the process name.
# Ctrl-C (SIGINT) or SIGTERM stops everything cleanly; if any process dies, the others are
# stopped and the script exits non-zero. Runtime files (logs, Redis dir, beat schedule) go
# under run/ (gitignored). Settings come from the environment and .env via config/ (the one
# loader); DATABASE_URL unset means its SQLite default.
#
# Environment: DEV_SMTP_PORT (the demo's SMTP sink, default 8025), REDIS_PORT (port for the
# private Redis; default: the port in REDIS_URL, else 6379), STOP_TIMEOUT (seconds to wait for a graceful stop, default 30), READY_TIMEOUT
# (seconds to wait for the web tier, default 90), DEV_LOGIN (default 1 here: the demo page at
# / lets you pick a user; set DEV_LOGIN=0 for anything but a local demo), SEED_DEMO (default 1:
# create demo users alice, bob, carol, dave and three topics when they are absent), and
# everything config/settings.py reads.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/bootstrap.sh

RUN_DIR="$ROOT/run"
LOG_DIR="$RUN_DIR/logs"
mkdir -p "$LOG_DIR" "$RUN_DIR/redis"
PY="$ROOT/.venv/bin/python"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
export PYTHONUNBUFFERED=1
SEED_DEMO="${SEED_DEMO:-1}"

say() { printf 'run.sh | %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

# -- settings, read by the same loader the services use ------------------------------------
settings="$(
    "$PY" - <<'PYEOF'
import os
import shlex
from urllib.parse import urlsplit, urlunsplit

from config import load_settings

s = load_settings()  # also loads .env into os.environ (without overriding the environment)
explicit = bool(os.environ.get("REDIS_URL"))
redis_port_env = os.environ.get("REDIS_PORT", "")
if explicit:
    url = s.redis_url
else:
    url = f"redis://127.0.0.1:{redis_port_env or 6379}/0"
u = urlsplit(url)
db = (u.path or "/0").lstrip("/") or "0"
display_host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
if ":" in display_host:
    display_host = f"[{display_host}]"
dbu = urlsplit(s.database_url)
if dbu.password:
    netloc = dbu.netloc.replace(f":{dbu.password}@", ":***@")
    db_display = urlunsplit(dbu._replace(netloc=netloc))
else:
    db_display = s.database_url
values = {
    "CFG_REDIS_URL": url,
    "CFG_REDIS_HOST": u.hostname or "",
    "CFG_REDIS_PORT": str(u.port or 6379),
    "CFG_REDIS_DB": db,
    "CFG_REDIS_HAS_AUTH": "1" if (u.username or u.password) else "",
    "CFG_WEB_URL": f"http://{display_host}:{s.port}",
    "CFG_DB_DISPLAY": db_display,
    # The local demo page needs a development login; the environment or .env can turn it off.
    "CFG_DEV_LOGIN": os.environ.get("DEV_LOGIN") or "1",
    "CFG_SMTP_HOST": s.smtp_host or "",
    "CFG_EMAIL_FROM": s.email_from or "Beacon demo <beacon@localhost>",
    "CFG_EMAIL_DELAY": os.environ.get("EMAIL_DELAY") or "30",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
PYEOF
)" || die "could not read the settings (config/settings.py); see the error above"
eval "$settings"
export DEV_LOGIN="$CFG_DEV_LOGIN"

# -- process bookkeeping ----------------------------------------------------------------------
SVC_NAMES=()
SVC_PIDS=()
STOPPED=0

if [ -t 1 ]; then
    COLORS=(36 33 32 35 34 31)
else
    COLORS=()
fi

prefix_tag() {
    local name=$1 idx=$2 tag
    tag="$(printf '%-7s|' "$name")"
    if [ "${#COLORS[@]}" -gt 0 ]; then
        tag=$'\e['"${COLORS[$((idx % ${#COLORS[@]}))]}m${tag}"$'\e[0m'
    fi
    printf '%s ' "$tag"
}

# Copy a service's output to run/logs/<name>.log and to the terminal with a prefix. Ignores
# INT/TERM so the service's own shutdown messages still get through after Ctrl-C.
prefix_output() {
    local name=$1 tag
    tag="$(prefix_tag "$name" "${#SVC_PIDS[@]}")"
    trap '' INT TERM HUP
    tee -a "$LOG_DIR/$name.log" | sed -u "s/^/${tag//\//\\/}/"
}

# start_service NAME CMD...: own session and process group (pgid == pid), so the terminal's
# Ctrl-C reaches only this script, which then stops every group in order.
start_service() {
    local name=$1
    shift
    printf '=== %s: %s\n' "$(date -Is)" "$*" >>"$LOG_DIR/$name.log"
    setsid "$@" </dev/null > >(prefix_output "$name") 2>&1 &
    SVC_PIDS+=("$!")
    SVC_NAMES+=("$name")
    say "started $name (pid $!, log run/logs/$name.log)"
}

# stop_groups PID...: SIGTERM each process group, wait up to STOP_TIMEOUT, then SIGKILL.
stop_groups() {
    local pid deadline=$((SECONDS + STOP_TIMEOUT))
    [ "$#" -gt 0 ] || return 0
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
    done
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid did not stop within ${STOP_TIMEOUT}s; killing it"
        fi
        kill -KILL -- "-$pid" 2>/dev/null || true # also stray children left in the group
    done
}

# Stop the application processes first (web stops accepting, workers finish or requeue their
# tasks), Redis last so they can still talk to it while shutting down.
stop_all() {
    [ "$STOPPED" -eq 0 ] || return 0
    STOPPED=1
    trap '' INT TERM HUP
    local i app=() redis=()
    for i in "${!SVC_PIDS[@]}"; do
        if [ "${SVC_NAMES[$i]}" = redis ]; then
            redis+=("${SVC_PIDS[$i]}")
        else
            app+=("${SVC_PIDS[$i]}")
        fi
    done
    [ "${#app[@]}" -eq 0 ] || stop_groups "${app[@]}"
    [ "${#redis[@]}" -eq 0 ] || stop_groups "${redis[@]}"
    wait 2>/dev/null || true # reap everything, let the output prefixers drain
    say "all processes stopped"
}

on_signal() {
    say "received SIG$1: stopping all processes"
    stop_all
    exit 0
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP
on_exit() {
    local status=$?
    stop_all
    exit "$status"
}
trap on_exit EXIT

# Exit as soon as any started service has died (with its log tail), else return.
check_alive() {
    local i
    for i in "${!SVC_PIDS[@]}"; do
        if ! kill -0 "${SVC_PIDS[$i]}" 2>/dev/null; then
            local code=0
            wait "${SVC_PIDS[$i]}" 2>/dev/null || code=$?
            say "${SVC_NAMES[$i]} exited (status $code); stopping the others"
            stop_all
            exit "$((code == 0 ? 1 : code))"
        fi
    done
}

redis_ping() {
    "$PY" -c 'import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()' \
        "$1" >/dev/null 2>&1
}

# -- Redis ------------------------------------------------------------------------------------
if redis_ping "$CFG_REDIS_URL"; then
    say "reusing the Redis that answers at $CFG_REDIS_URL"
    export REDIS_URL="$CFG_REDIS_URL"
else
    case "$CFG_REDIS_HOST" in
    127.0.0.1 | localhost | ::1) ;;
    *) die "REDIS_URL ($CFG_REDIS_URL) does not answer PING and is not a local address" ;;
    esac
    [ -z "$CFG_REDIS_HAS_AUTH" ] ||
        die "REDIS_URL has credentials but does not answer; start that Redis yourself"
    command -v redis-server >/dev/null 2>&1 ||
        die "redis-server is not installed (Debian: apt-get install redis-server)"
    redis_port="${REDIS_PORT:-$CFG_REDIS_PORT}"
    export REDIS_URL="redis://127.0.0.1:${redis_port}/${CFG_REDIS_DB}"
    start_service redis redis-server --bind 127.0.0.1 --port "$redis_port" \
        --dir "$RUN_DIR/redis" --save "" --appendonly no \
        --maxmemory-policy noeviction --protected-mode yes --daemonize no
    deadline=$((SECONDS + 20))
    until redis_ping "$REDIS_URL"; do
        check_alive
        [ "$SECONDS" -lt "$deadline" ] || die "redis-server did not answer PING on $REDIS_URL"
        sleep 0.1
    done
    say "Redis is up at $REDIS_URL"
fi

# -- email: a local SMTP sink for the demo when no SMTP server is configured -------------------
if [ -z "$CFG_SMTP_HOST" ]; then
    sink_port="${DEV_SMTP_PORT:-8025}"
    mkdir -p "$RUN_DIR/mail/tmp" "$RUN_DIR/mail/new" "$RUN_DIR/mail/cur" # a Maildir
    start_service mail .venv/bin/python -m aiosmtpd -n -l "127.0.0.1:$sink_port" \
        -c aiosmtpd.handlers.Mailbox "$RUN_DIR/mail"
    export SMTP_HOST=127.0.0.1 SMTP_PORT="$sink_port" DEV_MAILBOX="$RUN_DIR/mail"
    export EMAIL_FROM="$CFG_EMAIL_FROM" EMAIL_DELAY="$CFG_EMAIL_DELAY"
    say "email: no SMTP_HOST, so a local sink on 127.0.0.1:$sink_port keeps what Beacon sends" \
        "in run/mail (the page's Emails button); digests ${EMAIL_DELAY}s after a missed message"
fi

# -- database ---------------------------------------------------------------------------------
say "database: $CFG_DB_DISPLAY"
say "applying migrations (flask db upgrade)"
(
    trap '' INT # never interrupt a migration half-way; we stop right after it
    .venv/bin/flask --app wsgi db upgrade 2>&1 | tee -a "$LOG_DIR/migrate.log" |
        sed -u "s/^/$(prefix_tag migrate 5)/"
) || die "flask db upgrade failed (see above, run/logs/migrate.log)"

# -- demo data (users and topics for the page at /; the CLI is idempotent enough) -------------
beacon_cli() { .venv/bin/flask --app wsgi beacon "$@"; }
if [ "$SEED_DEMO" = 1 ]; then
    if beacon_cli token dave --ttl 1 >/dev/null 2>&1; then
        say "demo users already exist (SEED_DEMO=0 skips this check)"
    else
        say "seeding demo users and topics (SEED_DEMO=0 skips this)"
        for spec in "alice:Alice Martin" "bob:Bob Chen" "carol:Carol Diaz" "dave:Dave Okafor"; do
            # create-user exits 1 when the user exists: that is fine here.
            beacon_cli create-user "${spec%%:*}" --display-name "${spec#*:}" \
                --email "${spec%%:*}@example.test" >/dev/null 2>&1 || true
        done
        everyone=(--member alice --member bob --member carol --member dave)
        beacon_cli create-topic general announcements "${everyone[@]}" >/dev/null ||
            die "could not create the demo topics"
        beacon_cli create-topic general random "${everyone[@]}" >/dev/null
        beacon_cli create-topic design launch-plan --member alice --member bob \
            --member carol >/dev/null
    fi
fi

# -- services ---------------------------------------------------------------------------------
start_service web .venv/bin/python wsgi.py
start_service unread .venv/bin/celery -A workers worker -Q unread -c 2 -n "unread@%h" \
    --loglevel INFO
start_service push .venv/bin/celery -A workers worker -Q push -P gevent -c 100 -n "push@%h" \
    --loglevel INFO
start_service webhooks .venv/bin/celery -A workers worker -Q webhooks -P gevent -c 50 \
    -n "webhooks@%h" --loglevel INFO
start_service email .venv/bin/celery -A workers worker -Q email -P gevent -c 20 -n "email@%h" \
    --loglevel INFO
start_service beat .venv/bin/celery -A workers beat --loglevel INFO \
    --schedule "$RUN_DIR/celerybeat-schedule"
if [ -n "${FLOWER_BASIC_AUTH:-}" ] || grep -q '^FLOWER_BASIC_AUTH=.' .env 2>/dev/null; then
    start_service flower ./scripts/flower.sh
else
    say "Flower not started (set FLOWER_BASIC_AUTH=user:password to start it on :5555)"
fi

# -- wait for the web tier --------------------------------------------------------------------
deadline=$((SECONDS + READY_TIMEOUT))
until "$PY" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)' "$CFG_WEB_URL/healthz" >/dev/null 2>&1; do
    check_alive
    [ "$SECONDS" -lt "$deadline" ] ||
        die "the web tier did not answer $CFG_WEB_URL/healthz within ${READY_TIMEOUT}s"
    sleep 0.2
done
say "Beacon is ready: open $CFG_WEB_URL/  (Ctrl-C stops everything)"
case "${DEV_LOGIN,,}" in
1 | true | yes | on) say "DEV_LOGIN is on: the page lets anyone pick a user (local demo only)" ;;
esac

# -- supervise ----------------------------------------------------------------------------------
while :; do
    wait -n "${SVC_PIDS[@]}" 2>/dev/null || true
    check_alive
done
