"""Socket.IO event handlers: authenticate, validate, call a service, answer through the ack."""

from webapp.sockets import connection, events  # noqa: F401  (registers the handlers)
