"""The email channel: missed-message digests over SMTP (smtplib), one connection per batch.

A batch is usually a handful of digests, and SMTP servers count connections, so ``send``
opens one connection (STARTTLS and login when configured) and sends the items one after the
other on it. SMTP says what went wrong with a code: 5xx for a recipient at RCPT is a hard bounce
(``expired``: the address is gone), any 4xx is worth another try (``retry``), 5xx elsewhere is
our message or our account (``rejected``); a connection that fails or drops leaves every item
not yet sent to ``retry``. Each socket operation waits at most ``SMTP_TIMEOUT`` seconds. A
reason never holds the password.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from config import Settings
from webapp.delivery.channels.base import Item, Outcome
from webapp.platform.outbound.http import tls_context

__all__ = ["EmailChannel", "EmailSession", "build_message"]

REASON_MAX_CHARS = 300
# Headers the channel writes itself: a payload cannot set them.
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "sender", "reply-to", "mime-version"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_POLICY = email.policy.default.clone(max_line_length=998)  # RFC 5322's limit


def build_message(item: Item, *, sender: str) -> EmailMessage:
    """The message for one item (plain text and HTML alternatives, UTF-8, quoted-printable so
    that it is 7-bit clean for any server); ``ValueError`` for a payload that cannot be sent."""
    payload = item.notification.payload
    subject, text, html = payload.get("subject"), payload.get("text"), payload.get("html")
    headers: dict[str, Any] = payload.get("headers") or {}
    if not all(isinstance(v, str) for v in (item.address, subject, text, html)):
        raise ValueError("an email needs a recipient address, a subject, a text and an html")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = item.address
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message_id = next((v for n, v in headers.items() if n.lower() == "message-id"), None)
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = message_id or email.utils.make_msgid(domain=domain)
    for name, value in headers.items():
        if name.lower() == "message-id":
            continue
        if name.lower() in _OWN_HEADERS or name.lower().startswith("content-"):
            raise ValueError(f"the header {name} is set by the channel")
        message[name] = str(value)  # ValueError for a line break in it
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    # Headers are folded when the message is written out, by this policy: at 78 characters
    # (the default) a List-Unsubscribe URL, one long word, would become an RFC 2047 encoded
    # word, which mail clients do not read there. The parts were encoded above, at 78.
    message.policy = _HEADER_POLICY
    return message


class _ConnectionFailed(Exception):
    """Sending cannot go on over this connection: the outcome of the item at hand and of
    every item after it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class EmailChannel:
    """Sends a batch over one SMTP connection; holds no connection between batches, so one
    instance serves every thread or greenlet of the process."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if not (0 < timeout <= 600):
            raise ValueError("a timeout of 0 to 600 seconds is required")
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self._password = password
        self.starttls = starttls
        self.timeout = timeout

    @classmethod
    def from_settings(cls, s: Settings) -> EmailChannel:
        if not s.email_enabled:
            raise RuntimeError(
                "email is disabled: SMTP_HOST, EMAIL_FROM and EMAIL_LINK_SECRET are required"
            )
        assert s.smtp_host is not None and s.email_from is not None
        return cls(
            s.smtp_host,
            s.smtp_port,
            sender=s.email_from,
            username=s.smtp_username,
            password=s.smtp_password,
            starttls=s.smtp_starttls,
            timeout=s.smtp_timeout,
        )

    # -- public API ----------------------------------------------------------------------------
    def send(self, items: Sequence[Item]) -> list[Outcome]:
        """One outcome per item, in order, sent one after the other over one connection."""
        with self.session() as session:
            return [session.send(item) for item in items]

    def session(self) -> EmailSession:
        """One connection for items sent one at a time, so that a caller can book each outcome
        as soon as the server gave it (``with channel.session() as s: s.send(item)``)."""
        return EmailSession(self)

    # -- internals -----------------------------------------------------------------------------
    def _connect(self) -> smtplib.SMTP:
        """A connection ready for MAIL FROM: STARTTLS and login done when configured."""
        smtp: smtplib.SMTP | None = None
        stage = "connect"
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                stage = "STARTTLS"
                smtp.starttls(context=tls_context())
            if self.username:
                stage = "AUTH"
                smtp.login(self.username, self._password or "")
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            kind = "retry" if 400 <= exc.smtp_code < 500 else "rejected"
            detail = self._clean(_text(exc.smtp_error))
            reason = (
                f"the mail server refused our login ({exc.smtp_code} {detail}): "
                "check SMTP_USERNAME and SMTP_PASSWORD"
            )
            failure = Outcome(exc.smtp_code, kind, reason=self._clip(reason))
        except smtplib.SMTPResponseException as exc:  # e.g. 421 or 554 as the greeting
            failure = self._answer(exc.smtp_code, exc.smtp_error, stage)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            failure = _network_failure(exc)
        except smtplib.SMTPException as exc:  # STARTTLS or AUTH not offered, no AUTH method
            reason = f"the mail server cannot do {stage} as configured: {self._clean(str(exc))}"
            failure = Outcome(None, "rejected", reason=self._clip(reason))
        if smtp is not None:
            smtp.close()
        raise _ConnectionFailed(failure)

    def _send_one(self, smtp: smtplib.SMTP, item: Item) -> Outcome:
        try:
            message = build_message(item, sender=self.sender)
        except (ValueError, TypeError) as exc:
            return Outcome(None, "rejected", reason=self._clip(f"invalid email: {exc}"))
        try:
            smtp.send_message(message, to_addrs=[item.address])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            if code == 421:  # smtplib closed the connection
                raise _ConnectionFailed(self._answer(code, text, "RCPT")) from None
            if 500 <= code < 600:
                reason = f"the mail server refused the address: {code} {self._clean(_text(text))}"
                return Outcome(code, "expired", reason=self._clip(reason))
            return self._answer(code, text, "RCPT")
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            stage = "MAIL FROM" if isinstance(exc, smtplib.SMTPSenderRefused) else "DATA"
            return self._answer(exc.smtp_code, exc.smtp_error, stage)
        except smtplib.SMTPNotSupportedError:
            return Outcome(
                None, "rejected", reason="the mail server does not accept this address (SMTPUTF8)"
            )
        except smtplib.SMTPResponseException as exc:  # a refused HELO: nothing more goes
            raise _ConnectionFailed(self._answer(exc.smtp_code, exc.smtp_error, "HELO")) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise _ConnectionFailed(_network_failure(exc)) from None
        return Outcome(250, "delivered")

    def _answer(self, code: int, text: bytes | str, stage: str) -> Outcome:
        """A refusal of the server's: 4xx is temporary, anything else is not."""
        kind = "retry" if 400 <= code < 500 else "rejected"
        reason = f"the mail server answered {code} at {stage}: {self._clean(_text(text))}"
        return Outcome(code, kind, reason=self._clip(reason))

    def _clean(self, text: str) -> str:
        """Far-side text fit for a reason: no password, no control characters."""
        if self._password:
            text = text.replace(self._password, "…")
        return _CONTROL.sub(" ", text).strip()

    @staticmethod
    def _clip(reason: str) -> str:
        return reason[:REASON_MAX_CHARS]


class EmailSession:
    """Items sent one by one over one connection, opened at the first send and closed on
    exit; once it failed, every later item gets that failure (``retry`` for a network error)
    without another try."""

    def __init__(self, channel: EmailChannel) -> None:
        self._channel = channel
        self._smtp: smtplib.SMTP | None = None
        self._failed: Outcome | None = None

    def send(self, item: Item) -> Outcome:
        if self._failed is not None:
            return self._failed
        try:
            if self._smtp is None:
                self._smtp = self._channel._connect()
            return self._channel._send_one(self._smtp, item)
        except _ConnectionFailed as failed:
            self._failed = failed.outcome
            self.close()
            return failed.outcome

    def close(self) -> None:
        if self._smtp is not None:
            _quit(self._smtp)
            self._smtp = None

    def __enter__(self) -> EmailSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _network_failure(exc: BaseException) -> Outcome:
    """A connection that could not be made or did not last (refused, reset, a timeout, TLS
    failed): try again later. smtplib reports a timeout while it waits for an answer as
    ``SMTPServerDisconnected("Connection unexpectedly closed: timed out")``."""
    detail = _CONTROL.sub(" ", str(exc)).strip() or "no detail"
    reason = f"network error ({type(exc).__name__}): {detail}"
    return Outcome(None, "retry", reason=reason[:REASON_MAX_CHARS])


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()
