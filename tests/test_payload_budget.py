"""Push payloads fit the 4 KiB record, in UTF-8, cut only between grapheme clusters."""

from __future__ import annotations

import json

from webapp.delivery.channels.encoding import ELLIPSIS, fit
from webapp.delivery.channels.webpush.ece import MAX_PAYLOAD_BYTES
from webapp.messaging.messages import preview
from webapp.platform.text import graphemes

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 25 bytes
FLAG = "\U0001f1eb\U0001f1f7"  # two regional indicators, one grapheme
E_ACUTE = "e\u0301"  # a letter and its combining mark
MIXED = [FAMILY, FLAG, E_ACUTE, "\U0001f600", "x"]


def _payload(title: str, body: str) -> dict:
    return {
        "type": "mention",
        "title": title,
        "body": body,
        "count": 1,
        "topic_id": "6f1c2a9e-7d7b-4a53-9a59-1f4a8c1e2b3d",
        "room_id": "0b7e1c55-2f5c-4c1e-8c2b-9d7a3e6f1a20",
        "message_id": 123456789,
        "url": "https://chat.example.com/?room=0b7e1c55&topic=6f1c2a9e",
    }


def _whole_clusters(cut: str, original: str) -> bool:
    """``cut`` (without its ellipsis) is a prefix of ``original`` in whole graphemes."""
    kept = graphemes(cut.removesuffix(ELLIPSIS))
    return kept == graphemes(original)[: len(kept)]


def test_preview_never_cuts_a_grapheme_cluster() -> None:
    for grapheme in MIXED:
        text = grapheme * 150
        shown = preview(text)
        assert shown.endswith(ELLIPSIS) and len(graphemes(shown)) == 100
        assert _whole_clusters(shown, text)
    assert preview(FAMILY * 100) == FAMILY * 100  # 700 code points, 100 graphemes: not cut


def test_utf8_payload_is_a_third_of_the_escaped_one() -> None:
    payload = _payload("\U0001f600" * 256, preview(FAMILY * 100))
    ascii_escaped = json.dumps(payload, separators=(",", ":")).encode()
    encoded = fit(payload, MAX_PAYLOAD_BYTES)
    assert len(ascii_escaped) > MAX_PAYLOAD_BYTES  # what used to be refused (4 KiB record)
    assert json.loads(encoded) == payload  # fits whole in UTF-8: nothing shortened


def test_oversized_payload_shortens_the_body_first_on_grapheme_boundaries() -> None:
    for grapheme in MIXED:
        body = grapheme * 5000
        payload = _payload("Ada in #general", body)
        encoded = fit(payload, MAX_PAYLOAD_BYTES)
        decoded = json.loads(encoded)
        assert MAX_PAYLOAD_BYTES - 40 <= len(encoded) <= MAX_PAYLOAD_BYTES
        assert decoded["title"] == "Ada in #general"
        assert decoded["body"].endswith(ELLIPSIS) and _whole_clusters(decoded["body"], body)


def test_then_the_title() -> None:
    title = FAMILY * 200
    encoded = fit(_payload(title, FAMILY * 200), MAX_PAYLOAD_BYTES)
    decoded = json.loads(encoded)
    assert len(encoded) <= MAX_PAYLOAD_BYTES
    assert decoded["body"] == ""
    assert decoded["title"].endswith(ELLIPSIS) and _whole_clusters(decoded["title"], title)


def test_escapes_are_counted() -> None:
    body = '"\\\n' * 2000  # each character escapes to two bytes of JSON
    encoded = fit(_payload("t", body), MAX_PAYLOAD_BYTES)
    assert len(encoded) <= MAX_PAYLOAD_BYTES and json.loads(encoded)["body"].endswith(ELLIPSIS)
