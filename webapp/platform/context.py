"""The settings of the current Flask app: one object, reached one way."""

from __future__ import annotations

from flask import current_app

from config import Settings


def settings() -> Settings:
    return current_app.extensions["beacon_settings"]
