"""Delivery channels: one package per way of reaching a device, all behind ``base.Channel``.

``get(name)`` is the process's one instance of a channel, built from the settings on first use
(its connection pools and signed credentials are shared by every batch the process sends).
"""

from __future__ import annotations

import threading

from webapp.delivery.channels.base import Channel

_channels: dict[str, Channel] = {}
_lock = threading.Lock()


def get(name: str) -> Channel:
    channel = _channels.get(name)
    if channel is None:
        with _lock:
            channel = _channels.get(name)
            if channel is None:
                channel = _channels[name] = _build(name)
    return channel


def _build(name: str) -> Channel:
    from webapp.platform import context

    settings = context.settings()
    if name == "webpush":
        from webapp.delivery.channels.webpush import WebPushChannel

        return WebPushChannel.from_settings(settings)
    if name == "fcm":
        from webapp.delivery.channels.fcm import FcmChannel

        return FcmChannel.from_settings(settings)
    if name == "apns":
        from webapp.delivery.channels.apns import ApnsChannel

        return ApnsChannel.from_settings(settings)
    if name == "email":
        from webapp.delivery.channels.email import EmailChannel

        return EmailChannel.from_settings(settings)
    raise ValueError(f"unknown delivery channel {name!r}")
