"""Access to the settings and shared clients of the current Flask app."""

from __future__ import annotations

from flask import current_app

from config import Settings
from webapp.services.presence import Presence, presence_for


def settings() -> Settings:
    return current_app.extensions["beacon_settings"]


def presence() -> Presence:
    s = settings()
    return presence_for(s.redis_url, s.presence_heartbeat_ttl)
