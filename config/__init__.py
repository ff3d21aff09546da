"""Beacon configuration: the one settings loader (see ``config.settings``)."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
