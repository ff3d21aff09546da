"""What every delivery channel (Web Push, FCM, APNs; email next) promises the pipeline.

A channel takes a batch of items and returns one ``Outcome`` per item, in order, and never
raises for a failure of the far side. The pipeline (``webapp.delivery.batch``) turns outcomes
into bookkeeping; the worker decides on retries: a channel only says ``retry`` and, when the
far side asked for one, how long to wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

OutcomeKind = Literal["delivered", "expired", "retry", "rejected"]


@dataclass(frozen=True)
class Outcome:
    """How one send ended.

    ``delivered``: accepted by the far side. ``expired``: the device is gone (delete it).
    ``retry``: a transient failure (429, 5xx, network); ``retry_after`` is the far side's
    floor in seconds, if it gave one. ``rejected``: it will not work as it is; ``reason``
    says why (never a credential: no endpoint, token or key).
    """

    status: int | None
    kind: OutcomeKind
    retry_after: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Notification:
    """What one device is told: the payload, its urgency (``high`` for mentions, else
    ``normal``) and a collapse key (a newer notification with the same key replaces it).

    ``silent``: a background update with no alert (a read on another device: the payload is
    ``{type: "read", topic_id, badge}``); only mobile channels send those.
    """

    payload: dict[str, Any]
    urgency: str
    collapse_key: str
    silent: bool = False


@dataclass(frozen=True)
class DeviceToken:
    """A mobile app's address: the token FCM or APNs gave it, and the app it belongs to
    (an Android package or iOS bundle id; None: the deployment's default app)."""

    token: str
    app_id: str | None = None


@dataclass(frozen=True)
class Item:
    """One device (its channel-specific address: Web Push keys, or a ``DeviceToken``) and
    what to send it. ``badge``: the user's unread count across topics at send time, shown
    on the app icon by the mobile channels (None: leave the icon as it is)."""

    address: Any
    notification: Notification
    badge: int | None = None


class Channel(Protocol):
    name: str

    def send(self, items: Sequence[Item]) -> list[Outcome]:
        """One outcome per item, in order; sends concurrently where the channel can."""
        ...
