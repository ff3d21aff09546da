"""kombu internals Beacon relies on (webapp/platform/queue.py), checked against the pinned
version so that an upgrade that changes them fails here, loudly."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import redis
from kombu.transport import redis as transport

import webapp.platform.queue  # noqa: F401  (installs the patch)


@pytest.mark.parametrize("closed", ["channel", "connection"])
def test_a_closed_channel_fails_as_a_lost_connection(closed: str) -> None:
    """What a channel looks like once kombu closed it (``connection`` None), or closed its
    connection (the connection's ``client`` None)."""
    channel = object.__new__(transport.Channel)
    channel.connection = None if closed == "channel" else SimpleNamespace(client=None)
    with pytest.raises(redis.ConnectionError):
        channel._get_pool()


def test_kombu_still_reads_the_connection_where_the_patch_expects() -> None:
    """The patched method is the one every pool and client is built from, and the original
    still dereferences ``self.connection`` first (the AttributeError the patch replaces)."""
    patched = transport.Channel._connparams
    assert getattr(patched, "beacon_patched", False)
    original = inspect.getclosurevars(patched).nonlocals["original"]
    assert "conninfo = self.connection.client" in inspect.getsource(original)
    assert "self._connparams(" in inspect.getsource(transport.Channel._get_pool)
