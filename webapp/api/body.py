"""Request bodies: parsed once, with the same refusals on every route."""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.errors import InvalidInput
from webapp.platform.validation import MAX_BIGINT, parse_json_body, parse_query_int


def json_body() -> Any:
    """The JSON body (None when empty). Too large is 413, declared or streamed; bad UTF-8, bad
    or too deep JSON, NUL characters and lone surrogates are 400 with a reason."""
    data = request.get_data(cache=True)
    _refuse_streamed_past_limit(data)
    return parse_json_body(data)


def _refuse_streamed_past_limit(data: bytes) -> None:
    """A body without ``Content-Length`` (chunked) is cut by Werkzeug at MAX_CONTENT_LENGTH,
    not refused: its first 64 KiB would be parsed as if they were all of it. One more byte in
    the input means it was over the limit."""
    limit = request.max_content_length
    if limit is None or request.content_length is not None or len(data) < limit:
        return
    if request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def page_args() -> tuple[int | None, int]:
    """A paged list's query: ``before`` (an id cursor, optional) and ``limit`` (1..200,
    default 50), refused with a reason when out of range."""
    before = request.args.get("before")
    return (
        parse_query_int(before, "before", 0, 1, MAX_BIGINT) if before else None,
        parse_query_int(request.args.get("limit"), "limit", 50, 1, 200),
    )


def _refuse_nul_in_query() -> None:
    """NUL cannot be stored or compared in PostgreSQL text: refuse it in any query string,
    instead of meeting it as a database error deep in some route."""
    if any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise InvalidInput("invalid_text", "the query string must not contain NUL characters")


def register(app: Flask) -> None:
    app.before_request(_refuse_nul_in_query)
