"""A notification's JSON as UTF-8 within a channel's byte budget (Web Push: 3,993 bytes).

UTF-8, not ASCII escapes: an emoji costs 4 bytes instead of 12. When the payload is still too
big, the body (the message preview) is shortened first, then the title (the names), each on
grapheme cluster boundaries (an emoji sequence or a letter with its combining marks is never
cut), ending in an ellipsis, so the push is always sent.
"""

from __future__ import annotations

import json
from typing import Any

from webapp.platform.text import graphemes

ELLIPSIS = "\u2026"
_SHORTENED_FIRST = ("body", "title")


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string (escapes included), without the quotes."""
    return len(dumps({"": text})) - len(b'{"":""}')


def shorten(text: str, drop_bytes: int) -> str:
    """``text`` shortened by at least ``drop_bytes`` of JSON, whole graphemes only, with an
    ellipsis (or empty when nothing of it can stay)."""
    clusters = graphemes(text)
    budget = _json_size(text) - drop_bytes - _json_size(ELLIPSIS)
    kept: list[str] = []
    used = 0
    for cluster in clusters:
        size = _json_size(cluster)
        if used + size > budget:
            break
        kept.append(cluster)
        used += size
    return "".join(kept).rstrip() + ELLIPSIS if kept else ""


def fit(payload: dict[str, Any], limit: int) -> bytes:
    """``payload`` as UTF-8 JSON of at most ``limit`` bytes, shortening ``body`` then
    ``title``; ``ValueError`` if even without them it does not fit."""
    encoded = dumps(payload)
    if len(encoded) <= limit:
        return encoded
    payload = dict(payload)
    for field in _SHORTENED_FIRST:
        text = payload.get(field)
        if not isinstance(text, str) or not text:
            continue
        payload[field] = shorten(text, len(encoded) - limit)
        encoded = dumps(payload)
        if len(encoded) <= limit:
            return encoded
    raise ValueError(f"notification larger than {limit} bytes even without its text")
