"""Process-wide logging: plain lines by default, one JSON object per line with LOG_JSON=1."""

from __future__ import annotations

import json
import logging
import sys

from config import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("beacon_"):
                entry[key.removeprefix("beacon_")] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_configured = False


def use_json(handlers: list[logging.Handler]) -> None:
    """Switch existing handlers (e.g. Celery's) to JSON lines."""
    for handler in handlers:
        handler.setFormatter(JsonFormatter())


def configure_logging(settings: Settings) -> None:
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    _configured = True
