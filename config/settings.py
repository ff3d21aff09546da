"""The single configuration loader.

Every process (web, worker, beat, CLI, scripts) reads its settings here, from environment
variables and an untracked ``.env`` file in the project root, so the same names mean the same
thing everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = PROJECT_ROOT / ".env"


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(item.strip().lower() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class RateLimit:
    """``limit`` actions per ``period`` seconds (a burst of ``limit``, then a steady rate)."""

    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


_PERIOD_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limit(name: str, raw: str | None, default: RateLimit | None) -> RateLimit | None:
    """``"30/10s"`` (also ``30/10``, ``100/1m``, ``1000/1h``); ``off`` or ``0`` disables."""
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    if text in {"off", "0", "none", "false"}:
        return None
    count, sep, period = text.partition("/")
    try:
        if not sep:
            raise ValueError
        unit = _PERIOD_UNITS.get(period[-1:], None)
        seconds = float(period[:-1]) * unit if unit else float(period)
        limit = int(count)
        if limit <= 0 or seconds <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name} must look like 30/10s (count/period with s, m or h), or off; got {raw!r}"
        ) from None
    return RateLimit(limit, seconds)


def _default_database_url() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'instance' / 'beacon.db'}"


@dataclass(frozen=True)
class Settings:
    """Typed, immutable view of the environment."""

    database_url: str = field(default_factory=_default_database_url)
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 5000

    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_default_ttl: int = 3600
    jwt_leeway: int = 10

    vapid_private_key: str | None = None
    vapid_public_key: str | None = None
    vapid_subject: str = "mailto:admin@localhost"
    push_ttl: int = 86400
    push_max_retries: int = 5
    push_retry_base: float = 2.0
    push_retry_max: float = 300.0
    push_request_timeout: float = 10.0
    push_allowed_hosts: tuple[str, ...] = ()
    push_failure_limit: int = 10
    push_max_subscriptions: int = 20
    # Seconds during which further messages in one topic to one offline user are held and
    # then sent as one push with their count (the first goes at once); 0 sends every one.
    push_coalesce_window: float = 30.0
    # Days a push stays in the user's history (GET /api/notifications/history).
    push_history_days: float = 30.0
    app_base_url: str = "http://127.0.0.1:5000"

    max_message_length: int = 4000
    cors_origins: tuple[str, ...] = ()
    presence_heartbeat_interval: float = 10.0
    presence_heartbeat_ttl: int = 30
    presence_sweep_interval: float = 15.0

    # Per-user (and per-IP for connection attempts) rate limits; None disables one.
    rate_limit_send_message: RateLimit | None = RateLimit(30, 10.0)
    rate_limit_subscribe: RateLimit | None = RateLimit(10, 60.0)
    rate_limit_connect_user: RateLimit | None = RateLimit(30, 60.0)
    # Off by default: behind a load balancer every client has the balancer's address unless
    # TRUSTED_PROXIES says how many proxies to look through.
    rate_limit_connect_ip: RateLimit | None = None
    # Proxies in front of the web tier whose X-Forwarded-For is trusted (0: none).
    trusted_proxies: int = 0

    # Celery: seconds before a task a worker took but never acknowledged (the worker died) is
    # handed to another worker. Must exceed the longest a worker holds a task on purpose: a
    # retry countdown plus one attempt (checked below).
    broker_visibility_timeout: int = 3600
    db_retry_backoff_max: int = 60
    # Beat re-enqueues the work of messages whose tasks were lost (Redis lost its data, or
    # it failed between the commit and the enqueue): messages older than the grace and
    # younger than the window that have no unread/fan-out marker.
    reconcile_interval: float = 30.0
    reconcile_grace: float = 60.0
    reconcile_window: float = 3600.0

    log_json: bool = False
    log_level: str = "INFO"

    # Development only: GET /api/dev/users and POST /api/dev/token hand out tokens to anyone.
    dev_login: bool = False
    # Write broadcast frames straight to idle websocket connections (webapp/broadcast.py);
    # off: python-socketio's per-connection queue for every frame (for comparison).
    fast_fanout: bool = True
    # Web process: freeze the objects start-up built and collect the young generation less
    # often (webapp/gc_tuning.py); off: CPython's defaults (for comparison).
    gc_tuning: bool = True
    # Who gets user_status_change: "everyone" connected (the protocol's default), or "topics":
    # the connections that joined one of the user's topics, plus the user's own devices. Every
    # transition reaches every client with "everyone", so a storm of N users costs N^2 frames.
    presence_events: str = "everyone"

    @property
    def push_enabled(self) -> bool:
        return bool(self.vapid_private_key and self.vapid_public_key)

    @property
    def jwt_verify_key(self) -> str | None:
        """HS* verify with the shared secret, RS*/ES* with the public key."""
        if self.jwt_algorithm.startswith("HS"):
            return self.jwt_secret
        return self.jwt_public_key

    @property
    def jwt_signing_key(self) -> str | None:
        if self.jwt_algorithm.startswith("HS"):
            return self.jwt_secret
        return self.jwt_private_key


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: the process environment plus ``.env``)."""
    if env is None:
        # BEACON_ENV_FILE picks another file; set it empty to read the environment only.
        env_file = os.environ.get("BEACON_ENV_FILE", str(ENV_FILE))
        if env_file:
            load_dotenv(env_file, override=False)
        env = dict(os.environ)
    defaults = Settings()
    algorithm = env.get("JWT_ALGORITHM", defaults.jwt_algorithm).upper()
    if algorithm not in {"HS256", "HS384", "HS512", "RS256", "ES256"}:
        raise ValueError(f"JWT_ALGORITHM {algorithm!r} is not supported")
    port = _int(env, "PORT", defaults.port)
    host = env.get("HOST") or defaults.host
    settings = Settings(
        database_url=env.get("DATABASE_URL") or defaults.database_url,
        redis_url=env.get("REDIS_URL") or defaults.redis_url,
        host=host,
        port=port,
        jwt_algorithm=algorithm,
        jwt_secret=env.get("JWT_SECRET") or None,
        jwt_public_key=env.get("JWT_PUBLIC_KEY") or None,
        jwt_private_key=env.get("JWT_PRIVATE_KEY") or None,
        jwt_issuer=env.get("JWT_ISSUER") or None,
        jwt_audience=env.get("JWT_AUDIENCE") or None,
        jwt_default_ttl=_int(env, "JWT_DEFAULT_TTL", defaults.jwt_default_ttl),
        jwt_leeway=_int(env, "JWT_LEEWAY", defaults.jwt_leeway),
        vapid_private_key=env.get("VAPID_PRIVATE_KEY") or None,
        vapid_public_key=env.get("VAPID_PUBLIC_KEY") or None,
        vapid_subject=env.get("VAPID_SUBJECT") or defaults.vapid_subject,
        push_ttl=_int(env, "PUSH_TTL", defaults.push_ttl),
        push_max_retries=_int(env, "PUSH_MAX_RETRIES", defaults.push_max_retries),
        push_retry_base=_float(env, "PUSH_RETRY_BASE", defaults.push_retry_base),
        push_retry_max=_float(env, "PUSH_RETRY_MAX", defaults.push_retry_max),
        push_request_timeout=_float(env, "PUSH_REQUEST_TIMEOUT", defaults.push_request_timeout),
        push_allowed_hosts=_list(env.get("PUSH_ALLOWED_HOSTS")),
        push_failure_limit=_int(env, "PUSH_FAILURE_LIMIT", defaults.push_failure_limit),
        push_max_subscriptions=_int(env, "PUSH_MAX_SUBSCRIPTIONS", defaults.push_max_subscriptions),
        push_coalesce_window=_float(env, "PUSH_COALESCE_WINDOW", defaults.push_coalesce_window),
        push_history_days=_float(env, "PUSH_HISTORY_DAYS", defaults.push_history_days),
        app_base_url=env.get("APP_BASE_URL") or f"http://{host}:{port}",
        max_message_length=_int(env, "MAX_MESSAGE_LENGTH", defaults.max_message_length),
        cors_origins=tuple(
            o.strip() for o in (env.get("CORS_ORIGINS") or "").split(",") if o.strip()
        ),
        presence_heartbeat_interval=_float(
            env, "PRESENCE_HEARTBEAT_INTERVAL", defaults.presence_heartbeat_interval
        ),
        presence_heartbeat_ttl=_int(env, "PRESENCE_HEARTBEAT_TTL", defaults.presence_heartbeat_ttl),
        presence_sweep_interval=_float(
            env, "PRESENCE_SWEEP_INTERVAL", defaults.presence_sweep_interval
        ),
        rate_limit_send_message=parse_rate_limit(
            "RATE_LIMIT_SEND_MESSAGE",
            env.get("RATE_LIMIT_SEND_MESSAGE"),
            defaults.rate_limit_send_message,
        ),
        rate_limit_subscribe=parse_rate_limit(
            "RATE_LIMIT_SUBSCRIBE", env.get("RATE_LIMIT_SUBSCRIBE"), defaults.rate_limit_subscribe
        ),
        rate_limit_connect_user=parse_rate_limit(
            "RATE_LIMIT_CONNECT_USER",
            env.get("RATE_LIMIT_CONNECT_USER"),
            defaults.rate_limit_connect_user,
        ),
        rate_limit_connect_ip=parse_rate_limit(
            "RATE_LIMIT_CONNECT_IP",
            env.get("RATE_LIMIT_CONNECT_IP"),
            defaults.rate_limit_connect_ip,
        ),
        trusted_proxies=_int(env, "TRUSTED_PROXIES", defaults.trusted_proxies),
        broker_visibility_timeout=_int(
            env, "BROKER_VISIBILITY_TIMEOUT", defaults.broker_visibility_timeout
        ),
        db_retry_backoff_max=_int(env, "DB_RETRY_BACKOFF_MAX", defaults.db_retry_backoff_max),
        reconcile_interval=_float(env, "RECONCILE_INTERVAL", defaults.reconcile_interval),
        reconcile_grace=_float(env, "RECONCILE_GRACE", defaults.reconcile_grace),
        reconcile_window=_float(env, "RECONCILE_WINDOW", defaults.reconcile_window),
        log_json=_bool(env.get("LOG_JSON"), defaults.log_json),
        log_level=(env.get("LOG_LEVEL") or defaults.log_level).upper(),
        dev_login=_bool(env.get("DEV_LOGIN"), defaults.dev_login),
        fast_fanout=_bool(env.get("FAST_FANOUT"), defaults.fast_fanout),
        gc_tuning=_bool(env.get("GC_TUNING"), defaults.gc_tuning),
        presence_events=_presence_events(env.get("PRESENCE_EVENTS"), defaults.presence_events),
    )
    _check_task_timing(settings)
    return settings


def _presence_events(raw: str | None, default: str) -> str:
    value = (raw or default).strip().lower()
    if value not in {"everyone", "topics"}:
        raise ValueError(f"PRESENCE_EVENTS must be 'everyone' or 'topics', got {raw!r}")
    return value


def _check_task_timing(s: Settings) -> None:
    """A visibility timeout shorter than a deliberate hold would run tasks twice."""
    longest_hold = max(
        s.push_retry_max + s.push_request_timeout,
        s.db_retry_backoff_max,
        s.push_coalesce_window,
    )
    if s.broker_visibility_timeout <= longest_hold:
        raise ValueError(
            f"BROKER_VISIBILITY_TIMEOUT ({s.broker_visibility_timeout}s) must exceed the longest "
            f"retry delay plus one attempt ({longest_hold:g}s: PUSH_RETRY_MAX + "
            "PUSH_REQUEST_TIMEOUT, DB_RETRY_BACKOFF_MAX, PUSH_COALESCE_WINDOW), or workers "
            "redeliver held tasks early"
        )
    if s.push_coalesce_window < 0 or s.push_history_days <= 0:
        raise ValueError("PUSH_COALESCE_WINDOW must be >= 0 and PUSH_HISTORY_DAYS > 0")
    if s.reconcile_grace >= s.reconcile_window:
        raise ValueError("RECONCILE_GRACE must be shorter than RECONCILE_WINDOW")
