"""The unsubscribe link of missed-message emails: ``/api/email/unsubscribe?token=...``.

No sign-in: the signed token is the credential (``webapp.delivery.unsubscribe``). ``GET`` only
shows a page with a button, because mail scanners and link previews fetch links: a ``GET``
that unsubscribed would unsubscribe people who never clicked. ``POST`` turns the emails off:
the page's button, or the mail client's one-click unsubscribe (RFC 8058: ``List-Unsubscribe=
One-Click`` form-encoded; any body is taken, none is read). An unknown or deleted user gets
the same answer as anyone else, so a link reveals nothing. The pages run no script.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from webapp.delivery import preferences
from webapp.delivery.unsubscribe import user_from_token
from webapp.errors import InvalidInput

bp = Blueprint("email", __name__)

# Nothing to load, not even a style; the form posts back here.
PAGE_CSP = "default-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

CONFIRM = _PAGE.format(
    title="Stop missed-message emails from Beacon?",
    body="<p>You will get no more emails about messages you missed.</p>\n"
    '<form method="post"><button type="submit" name="List-Unsubscribe" value="One-Click">'
    "Unsubscribe</button></form>",
)
DONE = _PAGE.format(
    title="You are unsubscribed",
    body="<p>You will get no more of these emails. You can turn them back on in your "
    "notification preferences.</p>",
)
INVALID = _PAGE.format(
    title="This link is not valid",
    body="<p>This unsubscribe link is not valid: it may have been cut short. Open it again "
    "from the email, or change your emails in your notification preferences.</p>",
)


def _page(html: str, status: int = 200) -> Response:
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the token
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/email/unsubscribe")
def confirm_unsubscribe() -> Response:
    """A page asking to confirm; changes nothing."""
    try:
        user_from_token(request.args.get("token"))
    except InvalidInput:
        return _page(INVALID, 400)
    return _page(CONFIRM)


@bp.post("/api/email/unsubscribe")
def unsubscribe() -> Response:
    """Turn the token's user's missed-message emails off (one click, or the page's button)."""
    try:
        user_id = user_from_token(request.args.get("token"))
    except InvalidInput:
        return _page(INVALID, 400)
    preferences.stop_emails(user_id)  # False for a user that is gone: the same answer
    return _page(DONE)
