"""REST blueprints."""

from flask import Flask

from webapp.api import (
    admin,
    admin_webhooks,
    body,
    demo,
    email,
    errors,
    health,
    metrics,
    notifications,
    openapi,
    sync,
    topics,
    users,
)


def register(app: Flask) -> None:
    errors.register(app)
    body.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(topics.bp)
    app.register_blueprint(sync.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(notifications.bp)
    app.register_blueprint(demo.bp)
    app.register_blueprint(email.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(admin_webhooks.bp)
    app.register_blueprint(openapi.bp)
