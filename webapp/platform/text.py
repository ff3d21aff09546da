"""Text as people see it: grapheme clusters (``regex``'s ``\\X``), so that an emoji sequence
or a letter with its combining marks is never cut in two by a preview or a byte budget."""

from __future__ import annotations

import regex

_GRAPHEME = regex.compile(r"\X")


def graphemes(text: str) -> list[str]:
    return _GRAPHEME.findall(text)
