"""``@username`` mentions: what makes a push urgent and an email level of ``mentions`` apply."""

from __future__ import annotations

import re

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.\-]{1,64})")


def mentioned_usernames(body: str) -> set[str]:
    return {m.lower().rstrip(".") for m in MENTION.findall(body)}
