"""Hypothesis strategies for hostile input: wrong types, missing and extra fields, huge and
strange strings, deep structures, foreign, negative and nonexistent ids."""

from __future__ import annotations

import uuid
from typing import Any

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
