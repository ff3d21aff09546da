"""Presence: live connections counted in Redis across web processes (``store``), and the
online/offline transitions mirrored into ``users`` and announced (``user_status``)."""
