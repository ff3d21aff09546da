"""Decoding of incoming Socket.IO packets that can answer hostile ones.

python-socketio drops (and logs) an event packet whose JSON it cannot read: nested deeper than
Python's recursion limit, an integer longer than 4300 digits, malformed text, or an event name
that is not a string. The client then waits for an ack that never comes. This packet class
decodes such an event as far as it can: when the event name can be read, the handler runs with
an ``Undecodable`` payload and refuses it in its ack (``invalid_payload``); when it cannot,
the event goes to the catch-all handler under an empty name (``unknown_event``).

It also keeps clients from invoking the server's own handlers: python-socketio dispatches an
*event* named ``connect`` or ``disconnect`` to the connection handlers (a client could sign
itself off while staying connected, or re-run the connect handler), and an event named ``*``
reaches the catch-all handler without its name. Such events are renamed ``reserved:<name>`` and
answered ``unknown_event``.
"""

from __future__ import annotations

import json
from typing import Any

from socketio import packet

from webapp.platform.validation import Undecodable

_decoder = json.JSONDecoder()
RESERVED = frozenset({"connect", "disconnect", "connect_error", "*"})


def _event_name(encoded: str) -> str | None:
    """The event name at the start of an event packet's JSON array, if it is readable."""
    start = encoded.find("[")
    if start < 0:
        return None
    index = start + 1
    while index < len(encoded) and encoded[index] in " \t\r\n":
        index += 1
    try:
        name, _end = _decoder.raw_decode(encoded, index)
    except (ValueError, RecursionError):
        return None
    return name if isinstance(name, str) else None


class WirePacket(packet.Packet):
    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments = super().decode(encoded_packet)
        except (ValueError, RecursionError) as exc:
            if self.packet_type != packet.EVENT or not isinstance(encoded_packet, str):
                raise
            reason = "nested too deep" if isinstance(exc, RecursionError) else "not valid JSON"
            name = _event_name(encoded_packet) or ""
            self.data = [f"reserved:{name}" if name in RESERVED else name, Undecodable(reason)]
            return 0
        if self.packet_type in (packet.EVENT, packet.BINARY_EVENT):
            if (
                not isinstance(self.data, list)
                or not self.data
                or not isinstance(self.data[0], str)
            ):
                self.data = ["", Undecodable("not an event: [name, payload] expected")]
            elif self.data[0] in RESERVED:
                self.data = [f"reserved:{self.data[0]}", *self.data[1:]]
        return attachments
