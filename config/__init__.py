"""Beacon configuration: the one settings loader (see ``config.settings``)."""

from config.settings import RateLimit, Settings, load_settings

__all__ = ["RateLimit", "Settings", "load_settings"]
