"""REST blueprints."""

from flask import Flask

from webapp.api import errors, health, notifications, topics, users


def register(app: Flask) -> None:
    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(topics.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(notifications.bp)
