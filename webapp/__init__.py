"""Beacon's Flask application factory."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

from config import Settings, load_settings
from webapp.extensions import db, migrate, socketio
from webapp.logging_setup import configure_logging

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _engine_options(database_url: str) -> dict:
    if database_url.startswith("sqlite"):
        # Web and worker processes write the same file: wait for the lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL never corrupts the database; it only skips the fsync per commit
        # (an OS crash or power loss can lose the last commits, a process crash loses none).
        # SQLite calls block the whole gevent web process, and an fsync per commit (0.6 ms
        # here, far more on a busy disk) stalled every connection on each connect and message.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _check_email(settings: Settings) -> None:
    """One warning when missed-message email cannot work, naming what is missing."""
    if settings.email_enabled:
        return
    missing = [
        name
        for name, value in (
            ("SMTP_HOST", settings.smtp_host),
            ("EMAIL_FROM", settings.email_from),
            ("EMAIL_LINK_SECRET", settings.email_link_secret),
        )
        if not value
    ]
    log.warning("missed-message email is off: %s not set (docs/EMAIL.md)", ", ".join(missing))


def _check_push_keys(settings: Settings) -> None:
    """One clear warning per push channel that cannot work; everything else runs regardless."""
    for name, on, needs in (
        ("FCM", settings.fcm_enabled, "FCM_SERVICE_ACCOUNT_FILE and FCM_PROJECT_ID"),
        ("APNs", settings.apns_enabled, "APNS_KEY_FILE, APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC"),
    ):
        if not on:
            log.warning("%s push is off: %s are not set (docs/MOBILE.md)", name, needs)
    for name, path in (
        ("FCM_SERVICE_ACCOUNT_FILE", settings.fcm_service_account_file),
        ("APNS_KEY_FILE", settings.apns_key_file),
    ):
        if path and not os.access(path, os.R_OK):
            log.error("%s=%s cannot be read: its pushes will fail", name, path)
    if not settings.webpush_enabled:
        log.warning(
            "Web Push is disabled: VAPID_PRIVATE_KEY / VAPID_PUBLIC_KEY are not set "
            "(create them with: python scripts/generate_secrets.py)"
        )
        return
    from webapp.delivery.channels.webpush.vapid import vapid_public_key_from_private

    try:
        derived = vapid_public_key_from_private(settings.vapid_private_key)
    except ValueError as exc:
        log.warning("VAPID_PRIVATE_KEY is malformed (%s): pushes will fail", exc)
        return
    if derived != settings.vapid_public_key:
        log.warning("VAPID_PUBLIC_KEY does not match VAPID_PRIVATE_KEY: pushes will be refused")


def create_app(settings: Settings | None = None, *, serve_sockets: bool = True) -> Flask:
    """Build the app. Workers pass ``serve_sockets=False``: they emit write-only instead."""
    settings = settings or load_settings()
    if serve_sockets:
        configure_logging(settings)  # workers keep Celery's logging (see workers/celery_app.py)
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_hex(32),  # no cookies are used; Flask wants one anyway
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings.database_url),
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # "/a//b" is not "/a/b": Werkzeug would answer 308 towards it, which clients follow with the
    # same method and body, so an id ending in an encoded "/" ("t%2F" is "t/" once decoded)
    # would reach the resource "t" instead of being refused.
    app.url_map.merge_slashes = False
    app.extensions["beacon_settings"] = settings
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True)

    from webapp import api, cli

    api.register(app)
    cli.register(app)

    if serve_sockets:
        import socketio as socketio_lib

        from webapp.realtime.audience import connected_only
        from webapp.redis_client import MESSAGE_QUEUE_OPTIONS
        from webapp.sockets import heartbeat
        from webapp.sockets.wire import WirePacket

        manager_class: type = socketio_lib.RedisManager
        if settings.fast_fanout:
            from webapp.realtime.fanout import FanoutRedisManager

            manager_class = FanoutRedisManager
        # Broadcasts skip sockets whose token is not checked yet (webapp/realtime/audience.py).
        # The same Redis channel as Flask-SocketIO's default manager (workers emit on it).
        options: dict = {
            "client_manager": connected_only(
                manager_class, lambda sid: heartbeat.CONNECTIONS.user_of(sid) is not None
            )(
                settings.redis_url,
                channel="flask-socketio",
                redis_options=dict(MESSAGE_QUEUE_OPTIONS),
            )
        }
        socketio.init_app(
            app,
            async_mode="gevent",
            message_queue=settings.redis_url,
            cors_allowed_origins=list(settings.cors_origins) or "*",
            max_http_buffer_size=64 * 1024,
            serializer=WirePacket,  # answers undecodable events instead of dropping them
            **options,
        )
        from webapp.realtime.fanout import install

        # TCP_NODELAY on websockets; the fast path's write lock; a client that stops reading
        # is disconnected once MAX_PENDING_BYTES wait for it.
        install(
            socketio.server,
            max_pending_bytes=settings.max_pending_bytes,
            user_of=heartbeat.CONNECTIONS.user_of,
        )
        import webapp.sockets  # noqa: F401  (registers the event handlers)
        from webapp.realtime import session_gate

        # Engine.IO sessions that do not authenticate are closed after AUTH_TIMEOUT or
        # MAX_CONNECT_ATTEMPTS refused connect packets; past MAX_PENDING_SESSIONS of them
        # the handshake is refused.
        session_gate.install(
            socketio.server,
            auth_timeout=settings.auth_timeout,
            max_attempts=settings.max_connect_attempts,
            max_pending=settings.max_pending_sessions,
        )

        if settings.trusted_proxies:
            # Outermost, so Socket.IO handlers see the client's address too (rate limits).
            from werkzeug.middleware.proxy_fix import ProxyFix

            app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

        if not settings.jwt_verify_key:
            log.warning("no JWT key configured: every connection and API call will be refused")
        _check_push_keys(settings)
        _check_email(settings)
    return app
