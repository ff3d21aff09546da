"""Business logic. Socket.IO handlers, REST routes and Celery tasks only call into here."""
