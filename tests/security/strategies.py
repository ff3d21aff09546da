"""Hypothesis strategies for hostile input: wrong types, missing and extra fields, huge and
strange strings, deep structures, foreign, negative and nonexistent ids."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

# Strings that broke something somewhere once: NUL, lone surrogates, BOM, bidi override,
# combining marks, zero-width joiners, full-width letters, SQL/HTML/path injection, escapes.
EDGE_STRINGS = [
    "",
    " ",
    "\t\n\r",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ufeff",
    "\u202etxet",
    "\u0301" * 40,
    "\u200d" * 10,
    "👩‍👩‍👧‍👦" * 5,
    "ｔｏｐｉｃ",
    "null",
    "undefined",
    "NaN",
    "'; DROP TABLE messages; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "%00%0a",
    "\\u0000",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "\U0010ffff",
    "\x7f\x1b[31m",
]

any_char = st.characters(exclude_categories=())  # surrogates and controls included
texts = st.one_of(
    st.text(max_size=60),
    st.text(any_char, max_size=60),
    st.sampled_from(EDGE_STRINGS),
)
# ASCII so that a huge string stays under the 64 KiB Socket.IO/HTTP buffer.
huge_texts = st.integers(2_001, 40_000).map(lambda n: "x" * n)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=20,
)


def nested(depth: int, kind: str = "list") -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


deep_values = st.tuples(st.integers(17, 200), st.sampled_from(["list", "dict"])).map(
    lambda t: nested(*t)
)


def uuid_variants(value: str) -> list[str]:
    """Spellings ``uuid.UUID`` also accepts, to reach the membership check another way."""
    u = uuid.UUID(value)
    return [value, value.upper(), u.hex, f"{{{value}}}", f"urn:uuid:{value}"]


def ids(*known: str) -> st.SearchStrategy[Any]:
    """Ids of things the attacker does not own, random ids, and non-ids."""
    variants = [v for k in known for v in uuid_variants(k)]
    return st.one_of(
        st.sampled_from(variants) if variants else st.nothing(),
        st.uuids().map(str),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.sampled_from(["", " ", "0", "-1", "00000000-0000-0000-0000-000000000000"]),
        texts,
        st.lists(scalars, max_size=3),
        st.dictionaries(texts, scalars, max_size=2),
        huge_texts.map(lambda s: s[:5000]),
    )


def message_ids(*known: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(
            st.one_of(
                st.sampled_from(list(known) or [1]),
                st.integers(min_value=-(2**70), max_value=2**70),
                scalars,
            ),
            max_size=8,
        ),
        st.just(list(range(1, 1002))),  # more than the 1000 allowed
        json_values,
    )


def payloads(
    fields: dict[str, st.SearchStrategy[Any]], *, binary: bool = True
) -> st.SearchStrategy[Any]:
    """Anything at all, or an object with some of ``fields`` (wrong or right types) and maybe
    extra ones, or a too-deep object; ``binary`` adds raw bytes (Socket.IO attachments)."""
    shaped = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(texts.filter(lambda k: k not in fields), json_values, max_size=2)
    return st.one_of(
        json_values,
        shaped,
        st.tuples(shaped, extra).map(lambda t: {**t[0], **t[1]}),
        deep_values,
        st.tuples(shaped, deep_values).map(lambda t: {**t[0], "topic_id": t[1]}),
        st.binary(max_size=64) if binary else st.nothing(),
    )


# -- HTTP ----------------------------------------------------------------------------------
# URLs a server must never fetch (push endpoints, webhooks), and bodies' declared types.
HOSTILE_ENDPOINTS = [
    "http://push.example.com/send/abc",  # not https
    "https://127.0.0.1/push/x",
    "https://localhost/push/x",
    "https://[::1]/push/x",
    "https://10.0.0.1/push/x",
    "https://192.168.1.1/push/x",
    "https://169.254.169.254/latest/meta-data",
    "https://0.0.0.0/x",
    "https://[fe80::1]/x",
    "https://2130706433/x",  # 127.0.0.1 as a decimal
    "https://0x7f000001/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "https://push.example.com/" + "x" * 3000,
    "https://",
    "//push.example.com/x",
    "https://push.example.com\x00.evil/x",
    "https://push.exa mple.com/x",
    "",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
]


def raw(text: str) -> bytes:
    """UTF-8, lone surrogates included: an invalid byte sequence is hostile input too."""
    return text.encode("utf-8", "surrogatepass")


def segment(text: str) -> str:
    """``text`` as one percent-encoded path segment ("" as a space). A segment of dots only is
    sent as ``%2E``s: spelled plainly, the HTTP client would resolve it (``/a/..`` is ``/``)
    and the server would never see it."""
    if text and set(text) == {"."}:
        return "%2E" * len(text)
    return quote(raw(text), safe="") or "%20"


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Request bodies that are not JSON objects, or not JSON, or not UTF-8, or too deep, or
    over the 64 KiB limit."""
    deep = st.integers(20, 20_000).map(lambda d: ("[" * d + "]" * d).encode())
    return st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [b"\xff\xfe\xfd", b'{"endpoint": "\xc3\x28"}', b"\xed\xa0\x80", b"\x00" * 10, b"{}"]
        ),
        deep,
        json_values.map(lambda v: repr(v).encode("utf-8", "surrogatepass")),
        st.just(b'{"endpoint": "' + b"x" * 70_000 + b'"}'),  # over the 64 KiB limit
    )


# -- the integration API's external ids ----------------------------------------------------
EXTERNAL_ID = re.compile(r"[A-Za-z0-9._:@+\-]{1,128}")
# Path segments that are not ids, or ids only in some reading: dot segments, a separator,
# percent signs (sent encoded: the server sees them literally), NUL, spaces, one too long.
PATH_TRAPS = [
    ".",
    "..",
    "...",
    "%",
    "%00",
    "%2e%2e",
    "%2F",
    "a/b",
    "a\\b",
    "a b",
    " ",
    "\x00",
    "a\x00",
    "\t",
    "é",
    "💥",
    "x" * 129,
    "x" * 128,  # the longest id
    "CON",
    "NUL",
    "-",
    "@",
]


def external_ids(*known: str) -> st.SearchStrategy[str]:
    """Ids that are spelled like ``known`` ones but are not them (case, a character more or
    less, a separator, a dot segment around them), well-formed ids nobody created, and
    non-ids: unicode, controls, surrogates, long strings."""
    variants = [
        v
        for k in known
        for v in (
            k.upper(),
            k + ".",
            k[:-1],
            k + "\x00",
            k + " ",
            " " + k,
            k + "/",
            "../" + k,
            k + "/..",
            k + "%00",
            k.replace("-", "_"),
            k + "\u0301",
            k.replace("a", "\u0430"),  # Cyrillic a
        )
        if v != k
    ]
    return st.one_of(
        st.sampled_from(variants) if variants else st.nothing(),
        st.from_regex(EXTERNAL_ID, fullmatch=True),
        st.uuids().map(str),
        st.sampled_from(PATH_TRAPS),
        st.sampled_from(EDGE_STRINGS),
        texts.filter(bool),
        st.integers(129, 3000).map(lambda n: "x" * n),  # the request line stays under 8 KiB
    )
