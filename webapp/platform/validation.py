"""Parsing of untrusted client input into typed values, with clear refusals."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from webapp.errors import InvalidInput

MAX_IDS = 1000
MAX_BIGINT = 2**63 - 1
MAX_DEPTH = 16


class Undecodable:
    """Stands for a payload the transport could not decode (too deep, a number too long,
    malformed JSON): refused as ``invalid_payload`` like any other bad payload."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _bad_text(value: str) -> bool:
    """NUL (PostgreSQL text cannot hold it) or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_payload(payload: Any) -> Any:
    """Refuse input no handler could store: nesting deeper than ``MAX_DEPTH``, NUL characters
    or lone surrogates in any string or key. Returns ``payload`` unchanged."""
    if isinstance(payload, Undecodable):
        raise InvalidInput("invalid_payload", f"the payload could not be decoded: {payload.reason}")
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _bad_text(value):
                raise InvalidInput(
                    "invalid_text", "text must be valid Unicode without NUL characters"
                )
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidInput(
                    "invalid_payload", f"the payload nests deeper than {MAX_DEPTH} levels"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
    return payload


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON (None when empty), refusing bad UTF-8, bad or too deep JSON."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("invalid_payload", "the body is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidInput(
            "invalid_payload", f"the body nests deeper than {MAX_DEPTH} levels"
        ) from None
    except ValueError:
        raise InvalidInput("invalid_payload", "the body is not valid JSON") from None
    return check_payload(data)


def require_object(payload: Any, *, allowed: set[str] | None = None) -> dict[str, Any]:
    """A JSON object payload; unknown keys are refused when ``allowed`` is given."""
    if not isinstance(payload, dict):
        raise InvalidInput("invalid_payload", "the payload must be a JSON object")
    if allowed is not None:
        extra = set(payload) - allowed
        if extra:
            names = ", ".join(sorted(str(k)[:40] for k in extra)[:5])
            raise InvalidInput("unknown_field", f"unknown field(s): {names}")
    return payload


def parse_uuid(value: Any, field: str, *, required: bool = True) -> uuid.UUID | None:
    if value is None:
        if required:
            raise InvalidInput("missing_field", f"{field} is required")
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"invalid_{field}", f"{field} must be an id string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(f"invalid_{field}", f"{field} is not a valid id") from None


def parse_message_body(value: Any, max_length: int) -> str:
    if value is None:
        raise InvalidInput("missing_field", "message is required")
    if not isinstance(value, str):
        raise InvalidInput("invalid_message", "message must be a string")
    if not value.strip():
        raise InvalidInput("empty_message", "message must not be empty")
    if len(value) > max_length:
        raise InvalidInput(
            "message_too_long",
            f"message is {len(value)} characters; the limit is {max_length}",
            max_length=max_length,
        )
    if _bad_text(value):
        raise InvalidInput(
            "invalid_message", "message must be valid unicode text without NUL characters"
        )
    return value


def parse_positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_BIGINT:
        raise InvalidInput(f"invalid_{field}", f"{field} must be a positive integer")
    return value


def parse_since(value: Any) -> int:
    """A sync's ``since``: a message id already seen, 0 for none."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BIGINT:
        raise InvalidInput("invalid_since", "since must be a message id (an integer >= 0)")
    return value


def parse_message_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_IDS:
        raise InvalidInput(
            "invalid_message_ids", f"message_ids must be a list of at most {MAX_IDS} ids"
        )
    return sorted({parse_positive_int(v, "message_ids") for v in value})


def parse_query_int(raw: str | None, field: str, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"invalid_{field}", f"{field} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"invalid_{field}", f"{field} must be between {lo} and {hi}")
    return value


# An integrating product's own id for a user, room or topic: URL-safe, at most 128 characters
# (its UUIDs, numbers, slugs, "team:42", e-mail-like ids). Not "." or "..": in a URL path they
# are dot segments, which clients and proxies resolve ("/rooms/r/topics/.." is "/rooms/r").
_EXTERNAL_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._:@+\-]{1,128}\Z")
# An address that goes into a To header as it is: the local part's "atext" and dots (no
# quoting, commas or angle brackets, which would name other recipients), an ASCII domain.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+\Z"
)


def parse_external_id(value: Any, field: str) -> str:
    if value is None:
        raise InvalidInput("missing_field", f"{field} is required")
    if not isinstance(value, str) or not _EXTERNAL_ID.match(value):
        raise InvalidInput(
            f"invalid_{field}",
            f"{field} must be 1-128 characters among letters, digits and . _ : @ + - (not . or ..)",
        )
    return value


def parse_name(value: Any, field: str, max_length: int, *, required: bool = True) -> str | None:
    """A display text of one line: stripped, 1..``max_length`` characters."""
    if value is None:
        if required:
            raise InvalidInput("missing_field", f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"invalid_{field}", f"{field} must be a string")
    text = value.strip()
    if not 1 <= len(text) <= max_length or not text.isprintable():
        raise InvalidInput(
            f"invalid_{field}", f"{field} must be 1-{max_length} printable characters"
        )
    return text


def parse_username(value: Any) -> str:
    if value is None:
        raise InvalidInput("missing_field", "username is required")
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise InvalidInput("invalid_username", "username must be 1-64 characters without spaces")
    return value


def parse_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value):
        raise InvalidInput("invalid_email", "email must be an address like name@example.com")
    return value


def parse_bounded_int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"invalid_{field}", f"{field} must be an integer from {lo} to {hi}")
    return value


def parse_idempotency_key(value: Any) -> str:
    """Taken as sent (no trimming): 1-255 printable characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidInput(
            "invalid_idempotency_key", "idempotency_key must be 1-255 printable characters"
        )
    return value
