"""Broadcasts reach connected sockets only, never one whose connect handler is still running.

python-socketio registers a socket in its namespace (``Manager.pre_connect``) before it runs
the connect handler, and an emit to everyone (``to=None``) goes to every socket registered
there, so a socket whose token is still being checked (and then refused) received
``user_status_change`` and, with ``ALERT_AUDIENCE=everyone``, ``global_message_alert``
whenever the handler yielded (a Redis or database round trip): an unauthenticated client could
read them by sending bad connect packets over and over
(``tests/security/test_connect_window.py``).

Only the everyone-audience is filtered, and only until the handler has checked the token
(``authenticated``: the connection is then counted for its user, and may see the broadcast of
its own user coming online); until its handler returns a pending socket is in no room but its
own and, once authenticated, its user's (whose events it may have).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class ConnectedOnly:
    """Manager mixin (put it first in the bases): broadcasts skip pending connections."""

    pending_connect: dict[str, list[str]]
    authenticated: Callable[[str], bool]

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        participants = super().get_participants(namespace, room)  # type: ignore[misc]
        pending = self.pending_connect.get(namespace) if room is None else None
        if not pending:
            yield from participants
            return
        skip = {sid for sid in pending if not self.authenticated(sid)}
        for sid, eio_sid in participants:
            if sid not in skip:
                yield sid, eio_sid


def connected_only(manager_class: type, authenticated: Callable[[str], bool]) -> type:
    """``manager_class`` whose broadcasts skip connections whose token is not checked yet
    (``authenticated(sid)``: the connect handler accepted the token)."""
    return type(
        f"ConnectedOnly{manager_class.__name__}",
        (ConnectedOnly, manager_class),
        {"authenticated": staticmethod(authenticated)},
    )
