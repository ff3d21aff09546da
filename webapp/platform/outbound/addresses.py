"""The SSRF guard's checks of a URL someone else chose, before anything is sent to it.

A push endpoint or a webhook URL is handed to us by a user or an integrator, and a worker will
POST to it. Without checks the worker becomes a proxy into our own network (Redis, the metadata
service, admin ports), so such URLs must be https URLs on public addresses. Two stages:

* ``check_url`` (when the URL is stored, and again before sending): syntax, https, and a host
  check *without* DNS (IP literals in every spelling a resolver accepts, and internal-looking
  hostnames);
* ``check_target`` (right before sending): resolves the hostname and refuses if any address is
  not public, so a name that later re-points at 127.0.0.1 (DNS rebinding) is caught at send
  time. The HTTP client resolves the name once more when it connects; ``http.peer_check``
  checks the address it actually connected to, which closes that last window.

Hosts on an allow-list (``PUSH_ALLOWED_HOSTS``, ``WEBHOOK_ALLOWED_HOSTS``) skip the https and
address checks: that is how a local test service on 127.0.0.1 is reached.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import SplitResult, urlsplit

from webapp.platform.outbound import dns

__all__ = [
    "LOOKUP_TIMEOUT",
    "MAX_URL_LENGTH",
    "TargetError",
    "check_target",
    "check_url",
    "host_is_allowlisted",
    "is_public_address",
]

MAX_URL_LENGTH = 2048
LOOKUP_TIMEOUT = 10.0  # seconds a send-time lookup of a URL's host may take
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


class TargetError(ValueError):
    """A URL (or its host) we refuse; ``code`` is stable, ``message`` is for humans.

    Codes: ``invalid_<name>``, ``insecure_<name>`` (``name`` as given to the check, e.g.
    ``endpoint``), ``forbidden_host``, ``dns_error`` (the name does not resolve now).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"TargetError({self.code!r}, {self.message!r})"


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


def _host_refusal(host: str, name: str) -> str | None:
    """Why ``host`` (a hostname or IP literal from a URL) is not acceptable, without DNS."""
    ip = _ip_literal(host)
    if ip is not None:
        return None if is_public_address(ip) else f"{name} address is not a public address"
    fqdn = host.rstrip(".")
    if not fqdn or len(fqdn) > 253 or not all(_LABEL.match(label) for label in fqdn.split(".")):
        return f"{name} host is not a valid hostname"
    labels = fqdn.split(".")
    if len(labels) < 2:
        return f"{name} host must be a fully qualified public name"
    if labels[-1].isdigit():
        return f"{name} host is not a valid hostname"
    for suffix in _INTERNAL_SUFFIXES:
        if fqdn == suffix or fqdn.endswith("." + suffix):
            return f"{name} host under .{suffix} is not public"
    return None


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


# -- URLs ------------------------------------------------------------------------------------
def _parse_url(url: object, name: str) -> tuple[SplitResult, str, int]:
    invalid = f"invalid_{name}"
    if not isinstance(url, str) or not url:
        raise TargetError(invalid, f"{name} must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise TargetError(invalid, f"{name} is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        raise TargetError(invalid, f"{name} must be an ASCII URL without spaces or control chars")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetError(invalid, f"{name} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise TargetError(invalid, f"{name} must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise TargetError(invalid, f"{name} must not contain credentials")
    if port is None:
        port = 443 if scheme == "https" else 80
    return parts, parts.hostname.lower(), port


def check_url(
    url: object, allowed_hosts: tuple[str, ...], *, name: str = "endpoint"
) -> tuple[str, int, bool]:
    """The checks without DNS; returns ``(host, port, allowlisted)`` or raises ``TargetError``.

    ``name`` is what the messages and codes call the URL (``endpoint``, ``url``).
    """
    parts, host, port = _parse_url(url, name)
    if host_is_allowlisted(host, port, allowed_hosts):
        return host, port, True
    if parts.scheme.lower() != "https":
        raise TargetError(f"insecure_{name}", f"{name} must use https")
    refusal = _host_refusal(host, name)
    if refusal is not None:
        raise TargetError("forbidden_host", refusal)
    return host, port, False


def check_target(
    url: str,
    allowed_hosts: tuple[str, ...],
    *,
    timeout: float = LOOKUP_TIMEOUT,
    name: str = "endpoint",
) -> None:
    """Call right before sending: ``check_url``, then resolve the host and refuse any
    non-public address.

    Raises ``TargetError`` with code ``forbidden_host`` (do not send) or ``dns_error`` (the name
    does not resolve now; worth a retry later). A remaining window: the HTTP client resolves
    the name again when it connects; ``http.Pools(allowed_hosts=...)`` closes it by checking
    the peer address.
    """
    host, port, allowlisted = check_url(url, allowed_hosts, name=name)
    if allowlisted or _ip_literal(host) is not None:
        return  # IP literals were fully checked above
    try:
        infos = dns.getaddrinfo(host, port, timeout=timeout)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise TargetError("dns_error", f"{name} host does not resolve ({exc})") from None
    if not infos:
        raise TargetError("dns_error", f"{name} host does not resolve")
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise TargetError("forbidden_host", f"{name} host resolves to a non-IP") from None
        if not is_public_address(ip):
            raise TargetError(
                "forbidden_host", f"{name} host resolves to a non-public address ({ip})"
            )
