"""Celery tasks. Each is thin: it calls one service function."""
