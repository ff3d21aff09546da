"""Whether a user is paying attention: each connection is active or idle.

A client says ``set_presence {state}``; sending a message or marking a topic read counts as
active too, unless the client said ``set_presence`` after sending it (events are ordered by
arrival, not by when their handlers finish). A connection that says nothing for
PRESENCE_IDLE_AFTER turns idle (the web process that holds it decides, on its heartbeat), so a
forgotten tab stops holding back pushes. Redis only hears of real changes: restarting an
active connection's timer is local.
"""

from __future__ import annotations

import logging

from webapp.presence.store import LocalConnections, presence
from webapp.presence.user_status import apply_transition

log = logging.getLogger(__name__)


def report(
    local: LocalConnections,
    user_id: str,
    sid: str,
    *,
    idle: bool,
    arrived: int | None = None,
    said: bool = False,
) -> None:
    """The connection's client is (or is not) paying attention; the user's status follows.
    ``arrived``/``said``: the event's arrival number, and whether it is a set_presence
    (``LocalConnections.attend``)."""
    was_idle = local.attend(sid, idle=idle, arrived=arrived, said=said)
    if was_idle is None or was_idle == idle:
        return
    try:
        changed = presence().set_state(user_id, sid, idle=idle)
    except Exception:
        local.attend(sid, idle=was_idle)  # tell Redis again on the next report
        raise
    if changed:
        apply_transition(user_id)


def idle_quiet_connections(local: LocalConnections, idle_after: float) -> int:
    """Turn idle the connections that said nothing for ``idle_after`` seconds; how many."""
    quiet = local.gone_quiet(idle_after)
    for sid, user_id in quiet:
        report(local, user_id, sid, idle=True)
    if quiet:
        log.info("%d quiet connections are idle now", len(quiet))
    return len(quiet)
