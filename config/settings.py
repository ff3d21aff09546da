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
    app_base_url: str = "http://127.0.0.1:5000"

    max_message_length: int = 4000
    cors_origins: tuple[str, ...] = ()
    presence_heartbeat_interval: float = 10.0
    presence_heartbeat_ttl: int = 30
    presence_sweep_interval: float = 15.0

    log_json: bool = False
    log_level: str = "INFO"

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
    return Settings(
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
        push_max_subscriptions=_int(
            env, "PUSH_MAX_SUBSCRIPTIONS", defaults.push_max_subscriptions
        ),
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
        log_json=_bool(env.get("LOG_JSON"), defaults.log_json),
        log_level=(env.get("LOG_LEVEL") or defaults.log_level).upper(),
    )
