"""The single configuration loader.

Every process (web, worker, beat, CLI, scripts) reads its settings here, from environment
variables and an untracked ``.env`` file in the project root, so the same names mean the same
thing everywhere.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

from config.redis_urls import redis_url_from

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


def _rate(env: dict[str, str], name: str, default: RateLimit | None) -> RateLimit | None:
    return parse_rate_limit(name, env.get(name), default)


def _default_database_url() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'instance' / 'beacon.db'}"


DEFAULT_PROCESSED_EVENTS_DAYS = 7.0
MIN_PENDING_BYTES = 64 * 1024


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
    # Seconds before a connection's token expires when it is sent ``token_expiring`` (once);
    # the web process checks the open connections' tokens every TOKEN_SWEEP_INTERVAL seconds.
    token_expiring_notice: float = 60.0
    token_sweep_interval: float = 5.0

    vapid_private_key: str | None = None
    vapid_public_key: str | None = None
    vapid_subject: str = "mailto:admin@localhost"
    push_ttl: int = 86400
    push_max_retries: int = 5
    push_retry_base: float = 2.0
    push_retry_max: float = 300.0
    # One deadline for a whole push request: connect, TLS, request and the answer's last byte.
    push_request_timeout: float = 15.0
    # Deliveries per send task (grouped by push service), and requests one task has in flight.
    push_batch_size: int = 100
    push_send_concurrency: int = 16
    push_allowed_hosts: tuple[str, ...] = ()
    push_failure_limit: int = 10
    push_max_subscriptions: int = 20
    # Seconds during which further messages in one topic to one offline user are held and
    # then sent as one push with their count (the first goes at once); 0 sends every one.
    push_coalesce_window: float = 30.0
    # Days a push stays in the user's history (GET /api/notifications/history).
    push_history_days: float = 30.0
    app_base_url: str = "http://127.0.0.1:5000"
    # Firebase Cloud Messaging (HTTP v1): a Google service-account JSON and its project; the
    # endpoint is Google's unless a test points it at a local server.
    fcm_service_account_file: str | None = None
    fcm_project_id: str | None = None
    fcm_endpoint: str = "https://fcm.googleapis.com"
    # Apple Push Notification service, token-based: the .p8 key, its id, the team, the app's
    # bundle id; the sandbox host for development builds; APNS_HOST (host[:port]) for tests.
    apns_key_file: str | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_use_sandbox: bool = False
    apns_host: str | None = None

    max_message_length: int = 4000
    cors_origins: tuple[str, ...] = ()
    presence_heartbeat_interval: float = 10.0
    presence_heartbeat_ttl: int = 30
    presence_sweep_interval: float = 15.0
    # A connection that reports nothing (set_presence, a message, a read) for this many
    # seconds counts as idle; a user whose connections are all idle is pushed to as if offline
    # (unless PUSH_WHEN_IDLE is off, or their push_when_idle preference is).
    presence_idle_after: float = 300.0
    push_when_idle: bool = True

    # Missed-message email (off without SMTP_HOST and EMAIL_FROM). EMAIL_DELAY: seconds a
    # missed message waits for its digest, for users who did not choose (their email_delay);
    # beat looks for due digests every EMAIL_SWEEP_INTERVAL s; an address refused (5xx at
    # RCPT) EMAIL_BOUNCE_LIMIT times in a row is marked failing and not written to again.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout: float = 30.0
    email_from: str | None = None
    # The key that signs the one-click unsubscribe links (scripts/generate_secrets.py writes
    # one to .env); without it email stays off.
    email_link_secret: str | None = None
    email_delay: int = 600
    # Links in digests: to a topic ({topic_id}, {room_id}, {topic_external_id} are filled in)
    # and to the user's settings; default: the demo page at APP_BASE_URL.
    email_topic_url: str | None = None
    email_preferences_url: str | None = None
    email_sweep_interval: float = 10.0
    email_bounce_limit: int = 3
    # Development only (with DEV_LOGIN): the Maildir a local SMTP sink writes (run.sh), read by
    # the demo page's "Emails" panel.
    dev_mailbox: str | None = None

    # Per-user (and per-IP for connection attempts) rate limits; None disables one.
    rate_limit_send_message: RateLimit | None = RateLimit(30, 10.0)
    rate_limit_subscribe: RateLimit | None = RateLimit(10, 60.0)
    rate_limit_connect_user: RateLimit | None = RateLimit(30, 60.0)
    # Topic events, per user, every call counted. The browser demo marks a topic read at most
    # once per 150 ms per visible tab (a debounce), and joins/leaves on each topic switch.
    rate_limit_join_topic: RateLimit | None = RateLimit(60, 10.0)
    rate_limit_leave_topic: RateLimit | None = RateLimit(60, 10.0)
    rate_limit_mark_as_read: RateLimit | None = RateLimit(60, 10.0)
    # set_presence: a page reports on changes (hidden, shown, quiet) and refreshes once a minute.
    rate_limit_set_presence: RateLimit | None = RateLimit(30, 10.0)
    # Catch-up snapshots (sync, GET /api/sync): a client syncs after each reconnect.
    rate_limit_sync: RateLimit | None = RateLimit(20, 60.0)
    rate_limit_mark_as_unread: RateLimit | None = RateLimit(30, 10.0)
    # Read receipts (other members' read markers); false hides them from everyone.
    read_receipts: bool = True
    # Notification decisions (why a message did or did not push a user): kept for the last
    # 200 messages per user and at most this many days (0: not recorded).
    decisions_days: float = 7.0
    # "Send a test notification": per user; the request waits this long for the outcomes
    # before answering 202 (the result then comes as the test_push_result event).
    rate_limit_test_push: RateLimit | None = RateLimit(3, 60.0)
    test_push_wait: float = 5.0
    # Open connections per user, counted in Redis across web processes (0: no cap).
    max_connections_per_user: int = 20
    # Web process, per Engine.IO session with no authenticated Socket.IO connection: seconds
    # before it is closed, and refused connect packets after which it is closed; and how many
    # such sessions it holds before refusing new ones at the handshake. 0 disables each.
    auth_timeout: float = 10.0
    max_connect_attempts: int = 3
    max_pending_sessions: int = 1000
    # Integration API (/api/admin): requests per service key.
    rate_limit_admin: RateLimit | None = RateLimit(3000, 60.0)
    # Outgoing webhooks: hosts allowed although private (like PUSH_ALLOWED_HOSTS), one
    # deadline per delivery request, and the deliveries that may fail in a row (each after
    # the push retries: PUSH_MAX_RETRIES, PUSH_RETRY_BASE, PUSH_RETRY_MAX) before the hook
    # is disabled.
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_timeout: float = 10.0
    webhook_disable_after: int = 10
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
    # Days a processed-event marker (``processed_events``) is kept before beat deletes it.
    # None: the longer of 7 days and the minimum (``processed_events_minimum``); a value below
    # that minimum is refused, since a task could still run again after its marker is gone.
    processed_events_days: float | None = None

    log_json: bool = False
    log_level: str = "INFO"

    # Development only: GET /api/dev/users and POST /api/dev/token hand out tokens to anyone;
    # refused at load unless HOST is a loopback address (_check_dev_login).
    dev_login: bool = False
    # Write broadcast frames straight to idle websocket connections (webapp/realtime/fanout.py);
    # off: python-socketio's per-connection queue for every frame (for comparison).
    fast_fanout: bool = True
    # Web process: bytes that may wait to be written to one connection (queued events, a
    # partly written frame); a client that falls further behind (it stopped reading) is
    # disconnected instead of growing the process. 0: unbounded.
    max_pending_bytes: int = 1 << 20
    # Web process: freeze the objects start-up built and collect the young generation less
    # often (webapp/gc_tuning.py); off: CPython's defaults (for comparison).
    gc_tuning: bool = True
    # Who gets user_status_change: "everyone" connected (the protocol's default), or "topics":
    # the connections that joined one of the user's topics, plus the user's own devices. Every
    # transition reaches every client with "everyone", so a storm of N users costs N^2 frames.
    presence_events: str = "everyone"
    # Who gets global_message_alert (topic name, sender, preview): "members" of the topic, on
    # every device (their user:<id> rooms), or "everyone" connected, for workspaces where
    # every topic is public (the previews of private topics would reach non-members).
    alert_audience: str = "members"

    @property
    def processed_events_minimum(self) -> float:
        """Seconds a marker must outlive its message: the longest after which the message's
        work can still run again, or be looked for. A send retried ``PUSH_MAX_RETRIES`` times,
        each after at most ``PUSH_RETRY_MAX`` s plus one request, behind a coalescing window; a
        task redelivered after the visibility timeout or waiting out a database backoff; and
        reconciliation, which redoes the work of any message younger than ``RECONCILE_WINDOW``
        that has no marker. Summed, so that any chain of them is covered."""
        return (
            self.reconcile_window
            + self.broker_visibility_timeout
            + self.db_retry_backoff_max
            + self.push_coalesce_window
            + (self.push_max_retries + 1) * (self.push_retry_max + self.push_request_timeout)
        )

    @property
    def processed_events_retention(self) -> float:
        """Seconds after which beat deletes a processed-event marker."""
        if self.processed_events_days is not None:
            return self.processed_events_days * 86400
        return max(DEFAULT_PROCESSED_EVENTS_DAYS * 86400, self.processed_events_minimum)

    @property
    def email_enabled(self) -> bool:
        return bool(self.smtp_host and self.email_from and self.email_link_secret)

    @property
    def webpush_enabled(self) -> bool:
        return bool(self.vapid_private_key and self.vapid_public_key)

    @property
    def fcm_enabled(self) -> bool:
        return bool(self.fcm_service_account_file and self.fcm_project_id)

    @property
    def apns_enabled(self) -> bool:
        return bool(
            self.apns_key_file and self.apns_key_id and self.apns_team_id and self.apns_topic
        )

    @property
    def push_channels(self) -> tuple[str, ...]:
        """The delivery channels this deployment has credentials for."""
        enabled = (
            ("webpush", self.webpush_enabled),
            ("fcm", self.fcm_enabled),
            ("apns", self.apns_enabled),
        )
        return tuple(name for name, on in enabled if on)

    @property
    def push_enabled(self) -> bool:
        """Some channel can push: the pipeline (fan-out, coalescing, history) runs."""
        return bool(self.push_channels)

    @property
    def fanout_enabled(self) -> bool:
        """Some channel (a push channel, or email) can reach away members: messages are
        planned (``beacon.push.fan_out``)."""
        return self.push_enabled or self.email_enabled

    @property
    def apns_origin(self) -> str:
        if self.apns_host:
            return f"https://{self.apns_host}"
        if self.apns_use_sandbox:
            return "https://api.sandbox.push.apple.com"
        return "https://api.push.apple.com"

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
        redis_url=redis_url_from(env, defaults.redis_url),
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
        token_expiring_notice=_float(env, "TOKEN_EXPIRING_NOTICE", defaults.token_expiring_notice),
        token_sweep_interval=_float(env, "TOKEN_SWEEP_INTERVAL", defaults.token_sweep_interval),
        vapid_private_key=env.get("VAPID_PRIVATE_KEY") or None,
        vapid_public_key=env.get("VAPID_PUBLIC_KEY") or None,
        vapid_subject=env.get("VAPID_SUBJECT") or defaults.vapid_subject,
        push_ttl=_int(env, "PUSH_TTL", defaults.push_ttl),
        push_max_retries=_int(env, "PUSH_MAX_RETRIES", defaults.push_max_retries),
        push_retry_base=_float(env, "PUSH_RETRY_BASE", defaults.push_retry_base),
        push_retry_max=_float(env, "PUSH_RETRY_MAX", defaults.push_retry_max),
        push_request_timeout=_float(env, "PUSH_REQUEST_TIMEOUT", defaults.push_request_timeout),
        push_batch_size=_int(env, "PUSH_BATCH_SIZE", defaults.push_batch_size),
        push_send_concurrency=_int(env, "PUSH_SEND_CONCURRENCY", defaults.push_send_concurrency),
        push_allowed_hosts=_list(env.get("PUSH_ALLOWED_HOSTS")),
        push_failure_limit=_int(env, "PUSH_FAILURE_LIMIT", defaults.push_failure_limit),
        push_max_subscriptions=_int(env, "PUSH_MAX_SUBSCRIPTIONS", defaults.push_max_subscriptions),
        push_coalesce_window=_float(env, "PUSH_COALESCE_WINDOW", defaults.push_coalesce_window),
        push_history_days=_float(env, "PUSH_HISTORY_DAYS", defaults.push_history_days),
        app_base_url=env.get("APP_BASE_URL") or f"http://{host}:{port}",
        fcm_service_account_file=env.get("FCM_SERVICE_ACCOUNT_FILE") or None,
        fcm_project_id=env.get("FCM_PROJECT_ID") or None,
        fcm_endpoint=(env.get("FCM_ENDPOINT") or defaults.fcm_endpoint).rstrip("/"),
        apns_key_file=env.get("APNS_KEY_FILE") or None,
        apns_key_id=env.get("APNS_KEY_ID") or None,
        apns_team_id=env.get("APNS_TEAM_ID") or None,
        apns_topic=env.get("APNS_TOPIC") or None,
        apns_use_sandbox=_bool(env.get("APNS_USE_SANDBOX"), defaults.apns_use_sandbox),
        apns_host=env.get("APNS_HOST") or None,
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
        presence_idle_after=_float(env, "PRESENCE_IDLE_AFTER", defaults.presence_idle_after),
        push_when_idle=_bool(env.get("PUSH_WHEN_IDLE"), defaults.push_when_idle),
        smtp_host=env.get("SMTP_HOST") or None,
        smtp_port=_int(env, "SMTP_PORT", defaults.smtp_port),
        smtp_username=env.get("SMTP_USERNAME") or None,
        smtp_password=env.get("SMTP_PASSWORD") or None,
        smtp_starttls=_bool(env.get("SMTP_STARTTLS"), defaults.smtp_starttls),
        smtp_timeout=_float(env, "SMTP_TIMEOUT", defaults.smtp_timeout),
        email_from=env.get("EMAIL_FROM") or None,
        email_link_secret=env.get("EMAIL_LINK_SECRET") or None,
        email_delay=_int(env, "EMAIL_DELAY", defaults.email_delay),
        email_topic_url=env.get("EMAIL_TOPIC_URL") or None,
        email_preferences_url=env.get("EMAIL_PREFERENCES_URL") or None,
        email_sweep_interval=_float(env, "EMAIL_SWEEP_INTERVAL", defaults.email_sweep_interval),
        email_bounce_limit=_int(env, "EMAIL_BOUNCE_LIMIT", defaults.email_bounce_limit),
        dev_mailbox=env.get("DEV_MAILBOX") or None,
        rate_limit_send_message=_rate(
            env, "RATE_LIMIT_SEND_MESSAGE", defaults.rate_limit_send_message
        ),
        rate_limit_subscribe=_rate(env, "RATE_LIMIT_SUBSCRIBE", defaults.rate_limit_subscribe),
        rate_limit_connect_user=_rate(
            env, "RATE_LIMIT_CONNECT_USER", defaults.rate_limit_connect_user
        ),
        rate_limit_connect_ip=_rate(env, "RATE_LIMIT_CONNECT_IP", defaults.rate_limit_connect_ip),
        rate_limit_join_topic=_rate(env, "RATE_LIMIT_JOIN_TOPIC", defaults.rate_limit_join_topic),
        rate_limit_leave_topic=_rate(
            env, "RATE_LIMIT_LEAVE_TOPIC", defaults.rate_limit_leave_topic
        ),
        rate_limit_mark_as_read=_rate(
            env, "RATE_LIMIT_MARK_AS_READ", defaults.rate_limit_mark_as_read
        ),
        rate_limit_set_presence=_rate(
            env, "RATE_LIMIT_SET_PRESENCE", defaults.rate_limit_set_presence
        ),
        rate_limit_sync=_rate(env, "RATE_LIMIT_SYNC", defaults.rate_limit_sync),
        rate_limit_mark_as_unread=_rate(
            env, "RATE_LIMIT_MARK_AS_UNREAD", defaults.rate_limit_mark_as_unread
        ),
        read_receipts=_bool(env.get("READ_RECEIPTS"), defaults.read_receipts),
        decisions_days=_float(env, "DECISIONS_DAYS", defaults.decisions_days),
        rate_limit_test_push=_rate(env, "RATE_LIMIT_TEST_PUSH", defaults.rate_limit_test_push),
        test_push_wait=_float(env, "TEST_PUSH_WAIT", defaults.test_push_wait),
        rate_limit_admin=_rate(env, "RATE_LIMIT_ADMIN", defaults.rate_limit_admin),
        webhook_allowed_hosts=_list(env.get("WEBHOOK_ALLOWED_HOSTS")),
        webhook_timeout=_float(env, "WEBHOOK_TIMEOUT", defaults.webhook_timeout),
        webhook_disable_after=_int(env, "WEBHOOK_DISABLE_AFTER", defaults.webhook_disable_after),
        max_connections_per_user=_int(
            env, "MAX_CONNECTIONS_PER_USER", defaults.max_connections_per_user
        ),
        auth_timeout=_float(env, "AUTH_TIMEOUT", defaults.auth_timeout),
        max_connect_attempts=_int(env, "MAX_CONNECT_ATTEMPTS", defaults.max_connect_attempts),
        max_pending_sessions=_int(env, "MAX_PENDING_SESSIONS", defaults.max_pending_sessions),
        trusted_proxies=_int(env, "TRUSTED_PROXIES", defaults.trusted_proxies),
        broker_visibility_timeout=_int(
            env, "BROKER_VISIBILITY_TIMEOUT", defaults.broker_visibility_timeout
        ),
        db_retry_backoff_max=_int(env, "DB_RETRY_BACKOFF_MAX", defaults.db_retry_backoff_max),
        reconcile_interval=_float(env, "RECONCILE_INTERVAL", defaults.reconcile_interval),
        reconcile_grace=_float(env, "RECONCILE_GRACE", defaults.reconcile_grace),
        reconcile_window=_float(env, "RECONCILE_WINDOW", defaults.reconcile_window),
        processed_events_days=(
            _float(env, "PROCESSED_EVENTS_DAYS", 0.0) if env.get("PROCESSED_EVENTS_DAYS") else None
        ),
        log_json=_bool(env.get("LOG_JSON"), defaults.log_json),
        log_level=(env.get("LOG_LEVEL") or defaults.log_level).upper(),
        dev_login=_bool(env.get("DEV_LOGIN"), defaults.dev_login),
        fast_fanout=_bool(env.get("FAST_FANOUT"), defaults.fast_fanout),
        max_pending_bytes=_int(env, "MAX_PENDING_BYTES", defaults.max_pending_bytes),
        gc_tuning=_bool(env.get("GC_TUNING"), defaults.gc_tuning),
        presence_events=_presence_events(env.get("PRESENCE_EVENTS"), defaults.presence_events),
        alert_audience=_alert_audience(env.get("ALERT_AUDIENCE"), defaults.alert_audience),
    )
    _check_task_timing(settings)
    _check_dev_login(settings)
    return settings


def _presence_events(raw: str | None, default: str) -> str:
    value = (raw or default).strip().lower()
    if value not in {"everyone", "topics"}:
        raise ValueError(f"PRESENCE_EVENTS must be 'everyone' or 'topics', got {raw!r}")
    return value


def _alert_audience(raw: str | None, default: str) -> str:
    value = (raw or default).strip().lower()
    if value not in {"members", "everyone"}:
        raise ValueError(f"ALERT_AUDIENCE must be 'members' or 'everyone', got {raw!r}")
    return value


def is_loopback_host(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1 (brackets and IPv4-mapped too)."""
    name = host.strip().strip("[]").lower()
    if name in {"localhost", "localhost."}:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _check_dev_login(s: Settings) -> None:
    """DEV_LOGIN gives anyone a token for any user: only ever on the machine's own loopback,
    and not behind a reverse proxy (which listens on loopback too, and serves the world)."""
    if s.dev_login and not is_loopback_host(s.host):
        raise ValueError(
            f"DEV_LOGIN is on (anyone can get a token for any user) and HOST={s.host!r} is not "
            "a loopback address: set HOST to 127.0.0.1, ::1 or localhost, or turn DEV_LOGIN off"
        )
    if s.dev_login and s.trusted_proxies:
        raise ValueError(
            "DEV_LOGIN is on (anyone can get a token for any user) and TRUSTED_PROXIES says a "
            "reverse proxy serves this process: turn DEV_LOGIN off"
        )


def _check_task_timing(s: Settings) -> None:
    """A visibility timeout shorter than a deliberate hold would run tasks twice."""
    if s.presence_idle_after <= 0:
        raise ValueError("PRESENCE_IDLE_AFTER must be a positive number of seconds")
    if not (0 <= s.email_delay <= 7 * 86400) or s.email_bounce_limit < 1:
        raise ValueError("EMAIL_DELAY must be 0 to 604800 seconds, EMAIL_BOUNCE_LIMIT at least 1")
    if not (0 < s.smtp_timeout <= 600) or s.email_sweep_interval <= 0:
        raise ValueError("SMTP_TIMEOUT must be 0 to 600 seconds, EMAIL_SWEEP_INTERVAL positive")
    if not (0 < s.push_request_timeout <= 600):
        raise ValueError("PUSH_REQUEST_TIMEOUT must be between 0 and 600 seconds")
    if not (1 <= s.push_batch_size <= 1000) or not (1 <= s.push_send_concurrency <= 1000):
        raise ValueError("PUSH_BATCH_SIZE and PUSH_SEND_CONCURRENCY must be between 1 and 1000")
    if not (0 < s.webhook_timeout <= 600) or s.webhook_disable_after < 1:
        raise ValueError(
            "WEBHOOK_TIMEOUT must be between 0 and 600 seconds and WEBHOOK_DISABLE_AFTER >= 1"
        )
    longest_hold = max(
        s.push_retry_max + max(s.push_request_timeout, s.webhook_timeout),
        s.db_retry_backoff_max,
        s.push_coalesce_window,
    )
    if s.broker_visibility_timeout <= longest_hold:
        raise ValueError(
            f"BROKER_VISIBILITY_TIMEOUT ({s.broker_visibility_timeout}s) must exceed the longest "
            f"retry delay plus one attempt ({longest_hold:g}s: PUSH_RETRY_MAX + "
            "PUSH_REQUEST_TIMEOUT or WEBHOOK_TIMEOUT, DB_RETRY_BACKOFF_MAX, "
            "PUSH_COALESCE_WINDOW), or workers "
            "redeliver held tasks early"
        )
    if s.push_coalesce_window < 0 or s.push_history_days <= 0:
        raise ValueError("PUSH_COALESCE_WINDOW must be >= 0 and PUSH_HISTORY_DAYS > 0")
    if s.token_expiring_notice < 0 or not (0 < s.token_sweep_interval <= 3600):
        raise ValueError(
            "TOKEN_EXPIRING_NOTICE must be >= 0 and TOKEN_SWEEP_INTERVAL between 0 and 3600 s"
        )
    if s.max_pending_bytes != 0 and s.max_pending_bytes < MIN_PENDING_BYTES:
        raise ValueError(
            f"MAX_PENDING_BYTES must be 0 (unbounded) or at least {MIN_PENDING_BYTES} (a few of "
            f"the largest events), got {s.max_pending_bytes}"
        )
    if min(s.auth_timeout, s.max_connect_attempts, s.max_pending_sessions) < 0:
        raise ValueError(
            "AUTH_TIMEOUT, MAX_CONNECT_ATTEMPTS and MAX_PENDING_SESSIONS must be >= 0 (0: off)"
        )
    if s.max_connections_per_user < 0:
        raise ValueError("MAX_CONNECTIONS_PER_USER must be >= 0 (0: no cap)")
    if s.reconcile_grace >= s.reconcile_window:
        raise ValueError("RECONCILE_GRACE must be shorter than RECONCILE_WINDOW")
    if s.processed_events_days is not None:
        minimum = s.processed_events_minimum
        if s.processed_events_days * 86400 < minimum:
            raise ValueError(
                f"PROCESSED_EVENTS_DAYS ({s.processed_events_days:g}) must be at least "
                f"{minimum / 86400:.4g} days ({minimum:g}s: RECONCILE_WINDOW + "
                "BROKER_VISIBILITY_TIMEOUT + DB_RETRY_BACKOFF_MAX + PUSH_COALESCE_WINDOW + "
                "(PUSH_MAX_RETRIES + 1) x (PUSH_RETRY_MAX + PUSH_REQUEST_TIMEOUT)), or a task "
                "that runs again after its marker is deleted repeats its effect"
            )
