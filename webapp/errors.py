"""The one error type that services raise and every transport turns into a clear answer."""

from __future__ import annotations


class BeaconError(Exception):
    """A refusal with a stable machine-readable ``code`` and a human ``message``.

    REST answers it as ``{"error": code, "message": message}`` with ``status``; Socket.IO as an
    ack ``{"ok": false, "error": code, "message": message}``.
    """

    status = 400

    def __init__(self, code: str, message: str, *, status: int | None = None, **extra: object):
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidInput(BeaconError):
    status = 400


class Unauthorized(BeaconError):
    status = 401


class NotFound(BeaconError):
    status = 404


class Forbidden(BeaconError):
    status = 403


class Unavailable(BeaconError):
    status = 503


class RateLimited(BeaconError):
    """Too many attempts: ``retry_after`` (seconds) says when to try again."""

    status = 429
