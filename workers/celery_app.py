"""The one place that builds the Celery app, and the task base that gives tasks a Flask app."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask

_flask_app: Flask | None = None


def flask_app() -> Flask:
    """The worker's Flask app (database, settings); it serves no sockets, it emits write-only."""
    global _flask_app
    if _flask_app is None:
        from webapp import create_app

        _flask_app = create_app(serve_sockets=False)
    return _flask_app


class AppContextTask(Task):
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with flask_app().app_context():
            return super().__call__(*args, **kwargs)


celery = Celery("beacon", task_cls=AppContextTask)
celery.config_from_object("celeryconfig")
