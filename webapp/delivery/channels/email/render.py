"""The missed-message digest as an email: subject, plain text and HTML from typed input.

The digest logic decides what goes in (``DigestView``); this only words it. The text and HTML
bodies are Jinja2 templates next to this module (``templates/``), HTML autoescaped, since
message bodies and names are user input. Undefined names fail loudly (``StrictUndefined``)
instead of rendering as empty text. The HTML is plain inline-styled markup that loads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

__all__ = ["DigestMessage", "DigestTopic", "DigestView", "render_digest"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
BODY_MAX_CHARS = 300
SUBJECT_MAX_CHARS = 200


@dataclass(frozen=True)
class DigestMessage:
    sender_name: str
    body: str
    created_at: datetime  # naive: UTC
    mentioned: bool


@dataclass(frozen=True)
class DigestTopic:
    """One topic's missed messages, oldest first; ``more``: missed ones not shown."""

    room_name: str
    topic_name: str
    url: str
    messages: list[DigestMessage]
    more: int


@dataclass(frozen=True)
class DigestView:
    """A whole digest: ``total`` missed messages, of which ``shown`` are in ``topics``."""

    recipient_name: str
    topics: list[DigestTopic]
    total: int
    shown: int
    unsubscribe_url: str
    preferences_url: str


def _clip(body: str) -> str:
    """A message body on one line (whitespace collapsed), cut at ``BODY_MAX_CHARS``."""
    text = " ".join(body.split())
    return text if len(text) <= BODY_MAX_CHARS else text[: BODY_MAX_CHARS - 1].rstrip() + "…"


def _utc(when: datetime) -> str:
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


_env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_env.filters["clip"] = _clip
_env.filters["utc"] = _utc


def subject(view: DigestView) -> str:
    """ "3 new messages in general/random", "5 new messages in 3 topics"; "You were
    mentioned: " first when a shown message mentions the recipient."""
    noun = "message" if view.total == 1 else "messages"
    if len(view.topics) == 1:
        where = f"{view.topics[0].room_name}/{view.topics[0].topic_name}"
    else:
        where = f"{len(view.topics)} topics"
    mentioned = any(m.mentioned for topic in view.topics for m in topic.messages)
    text = ("You were mentioned: " if mentioned else "") + f"{view.total} new {noun} in {where}"
    return " ".join(text.split())[:SUBJECT_MAX_CHARS]  # names are user input: one line


def render_digest(view: DigestView) -> dict[str, str]:
    """The email payload without headers: ``{"subject", "text", "html"}``."""
    title = subject(view)
    return {
        "subject": title,
        "text": _env.get_template("digest.txt").render(view=view),
        "html": _env.get_template("digest.html").render(view=view, subject=title),
    }
