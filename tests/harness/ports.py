"""Free loopback ports for servers started by tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    The OS picks the port (bind to 0), so parallel test runs do not collide on fixed numbers.
    There is an unavoidable window between closing the probe socket and the server binding it;
    servers in this harness bind immediately after, which keeps that window tiny.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
