"""Every REST error is JSON: ``{"error": code, "message": text}``."""

from __future__ import annotations

import logging
import math

import redis
from flask import Flask, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from webapp.errors import BeaconError
from webapp.extensions import db

log = logging.getLogger(__name__)


def register(app: Flask) -> None:
    @app.errorhandler(BeaconError)
    def beacon_error(exc: BeaconError):
        db.session.rollback()
        response = jsonify(exc.to_dict())
        retry_after = exc.extra.get("retry_after")
        if isinstance(retry_after, int | float):
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response, exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify({"error": code, "message": exc.description}), exc.code

    @app.errorhandler(SQLAlchemyError)
    def database_error(exc: SQLAlchemyError):
        db.session.rollback()
        log.exception("database error")
        return jsonify({"error": "unavailable", "message": "the database is unavailable"}), 503

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError):
        db.session.rollback()
        log.exception("redis error")
        return jsonify({"error": "unavailable", "message": "Redis is unavailable"}), 503

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        db.session.rollback()
        log.exception("unhandled error")
        return jsonify({"error": "internal_error", "message": "unexpected server error"}), 500
