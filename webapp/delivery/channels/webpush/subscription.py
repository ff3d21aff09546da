"""A browser's ``PushSubscription``: its keys, their validation, and the endpoint address guard.

A push endpoint is a URL a user handed us; the push worker will POST to it. Without checks the
worker becomes an SSRF proxy into our own network (Redis, the metadata service, admin ports), so
endpoints must be https URLs on public addresses. Two stages:

* ``validate_subscription`` (on subscribe): syntax, https, keys, and a host check *without* DNS
  (IP literals in every spelling a resolver accepts, and internal-looking hostnames);
* ``check_endpoint_target`` (in the worker, right before sending): resolves the hostname and
  refuses if any address is not public, so a name that later re-points at 127.0.0.1 (DNS
  rebinding) is caught at send time. The HTTP client resolves the name once more when it
  connects; ``PushSender(allowed_hosts=...)`` checks the address it actually connected to,
  which closes that last window.

Hosts listed in ``PUSH_ALLOWED_HOSTS`` skip the https and address checks: that is how a local
test push service on 127.0.0.1 is reached.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from webapp.delivery.channels.webpush import dns

__all__ = [
    "MAX_ENDPOINT_LENGTH",
    "SubscriptionError",
    "SubscriptionKeys",
    "check_endpoint_target",
    "host_is_allowlisted",
    "is_public_address",
    "validate_subscription",
]

MAX_ENDPOINT_LENGTH = 2048
LOOKUP_TIMEOUT = 10.0  # seconds a send-time lookup of an endpoint's host may take
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}\Z")
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+\Z")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# Names that only mean something inside a network (RFC 6761, 6762, 8375 and common practice).
_INTERNAL_SUFFIXES = (
    "localhost",
    "local",
    "internal",
    "localdomain",
    "home.arpa",
    "lan",
    "intranet",
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class SubscriptionKeys:
    """What the browser's ``PushSubscription`` gives us (keys as base64url strings)."""

    endpoint: str
    p256dh: str
    auth: str

    def __repr__(self) -> str:
        # The endpoint and the auth secret together are a credential: keep them out of logs.
        return "SubscriptionKeys(endpoint=<redacted>, p256dh=<redacted>, auth=<redacted>)"


class SubscriptionError(ValueError):
    """A subscription (or endpoint) we refuse; ``code`` is stable, ``message`` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SubscriptionError({self.code!r}, {self.message!r})"


# -- addresses -------------------------------------------------------------------------------
def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses (also looking inside IPv6 wrappers)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]  # the client's (obfuscated-back) address
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.scope_id:
            return False
    return (
        not (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or getattr(ip, "is_site_local", False)  # fec0::/10, IPv6 only
        )
        and ip.is_global
    )


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if ``host`` is an IP in any form a resolver accepts (``127.1``, ``0x7f.1``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_refusal(host: str) -> str | None:
    """Why ``host`` (a hostname or IP literal from a URL) is not acceptable, without DNS."""
    ip = _ip_literal(host)
    if ip is not None:
        return None if is_public_address(ip) else "endpoint address is not a public address"
    name = host.rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return "endpoint host is not a valid hostname"
    labels = name.split(".")
    if len(labels) < 2:
        return "endpoint host must be a fully qualified public name"
    if labels[-1].isdigit():
        return "endpoint host is not a valid hostname"
    for suffix in _INTERNAL_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return f"endpoint host under .{suffix} is not public"
    return None


# -- endpoints -------------------------------------------------------------------------------
def _parse_endpoint(endpoint: object) -> tuple[SplitResult, str, int]:
    if not isinstance(endpoint, str) or not endpoint:
        raise SubscriptionError("invalid_endpoint", "endpoint must be a non-empty string")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise SubscriptionError(
            "invalid_endpoint", f"endpoint is longer than {MAX_ENDPOINT_LENGTH} characters"
        )
    if not endpoint.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in endpoint):
        raise SubscriptionError(
            "invalid_endpoint", "endpoint must be an ASCII URL without spaces or control chars"
        )
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise SubscriptionError("invalid_endpoint", "endpoint is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise SubscriptionError("invalid_endpoint", "endpoint must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise SubscriptionError("invalid_endpoint", "endpoint must not contain credentials")
    if port is None:
        port = 443 if scheme == "https" else 80
    return parts, parts.hostname.lower(), port


def host_is_allowlisted(host: str, port: int, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``host`` (a hostname or IP, any case) on ``port`` matches a ``host[:port]`` entry."""
    if not allowed_hosts:
        return False
    host = host.lower().strip("[]")
    names = {host, host.rstrip(".")}
    if ":" in host:
        names.add(f"[{host}]")
    candidates = names | {f"{name}:{port}" for name in names}
    return not candidates.isdisjoint(a.strip().lower() for a in allowed_hosts)


def _check_endpoint(endpoint: object, allowed_hosts: tuple[str, ...]) -> tuple[str, int, bool]:
    """Static checks; returns ``(host, port, allowlisted)``."""
    parts, host, port = _parse_endpoint(endpoint)
    if host_is_allowlisted(host, port, allowed_hosts):
        return host, port, True
    if parts.scheme.lower() != "https":
        raise SubscriptionError("insecure_endpoint", "endpoint must use https")
    refusal = _host_refusal(host)
    if refusal is not None:
        raise SubscriptionError("forbidden_host", refusal)
    return host, port, False


def check_endpoint_target(
    url: str, allowed_hosts: tuple[str, ...], *, timeout: float = LOOKUP_TIMEOUT
) -> None:
    """Call right before sending: resolve the host and refuse any non-public address.

    Raises ``SubscriptionError`` with code ``forbidden_host`` (do not send; drop or flag the
    subscription) or ``dns_error`` (the name does not resolve now; worth a retry later).
    A remaining window: the HTTP client resolves the name again when it connects; a sender
    built with ``PushSender(..., allowed_hosts=...)`` closes it by checking the peer address.
    """
    host, port, allowlisted = _check_endpoint(url, allowed_hosts)
    if allowlisted or _ip_literal(host) is not None:
        return  # IP literals were fully checked above
    try:
        infos = dns.getaddrinfo(host, port, timeout=timeout)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise SubscriptionError("dns_error", f"endpoint host does not resolve ({exc})") from None
    if not infos:
        raise SubscriptionError("dns_error", "endpoint host does not resolve")
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise SubscriptionError(
                "forbidden_host", "endpoint host resolves to a non-IP"
            ) from None
        if not is_public_address(ip):
            raise SubscriptionError(
                "forbidden_host", f"endpoint host resolves to a non-public address ({ip})"
            )


# -- keys ------------------------------------------------------------------------------------
def _decode_key(value: object, name: str, length: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} must be a non-empty string")
    if not _B64URL.match(value):
        raise SubscriptionError(
            f"invalid_{name}", f"keys.{name} must be base64url (A-Z a-z 0-9 - _, padding optional)"
        )
    bare = value.rstrip("=")
    if len(bare) % 4 == 1:
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError):
        raise SubscriptionError(f"invalid_{name}", f"keys.{name} is not valid base64url") from None
    if len(raw) != length:
        raise SubscriptionError(
            f"invalid_{name}", f"keys.{name} must decode to {length} bytes, got {len(raw)}"
        )
    return raw


def validate_subscription(data: object, allowed_hosts: tuple[str, ...]) -> SubscriptionKeys:
    """Check a ``PushSubscription.toJSON()`` object; return its keys or raise ``SubscriptionError``.

    The returned keys have their base64 padding removed, so the same subscription always
    compares (and deduplicates) equal; the endpoint is kept exactly as the browser gave it.
    """
    if not isinstance(data, dict):
        raise SubscriptionError("invalid_subscription", "subscription must be a JSON object")
    endpoint = data.get("endpoint")
    _check_endpoint(endpoint, allowed_hosts)
    assert isinstance(endpoint, str)

    expiration = data.get("expirationTime")
    if expiration is not None and (
        isinstance(expiration, bool)
        or not isinstance(expiration, (int, float))
        or not math.isfinite(expiration)
    ):
        raise SubscriptionError("invalid_subscription", "expirationTime must be null or a number")

    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise SubscriptionError("invalid_keys", "keys must be an object with p256dh and auth")
    p256dh = keys.get("p256dh")
    auth = keys.get("auth")
    point = _decode_key(p256dh, "p256dh", 65)
    if point[0] != 0x04:
        raise SubscriptionError("invalid_p256dh", "keys.p256dh must be an uncompressed P-256 point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise SubscriptionError(
            "invalid_p256dh", "keys.p256dh is not a point on the P-256 curve"
        ) from None
    _decode_key(auth, "auth", 16)
    assert isinstance(p256dh, str) and isinstance(auth, str)
    return SubscriptionKeys(endpoint=endpoint, p256dh=p256dh.rstrip("="), auth=auth.rstrip("="))
