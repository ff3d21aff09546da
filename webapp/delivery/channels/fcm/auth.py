"""FCM's OAuth2 access token: the service account's signed assertion traded for a bearer token.

google-auth signs the RS256 assertion and posts it to the account's ``token_uri``; its
credentials object keeps the token and its expiry. One ``AccessTokens`` per process (the
channel's) serves every send: the token is refreshed only when google-auth no longer calls it
valid (3 min 45 s before it expires), under a lock so that concurrent sends refresh once,
and after FCM refused it (401) unless another send refreshed it meanwhile.

The token request goes through ``requests`` verified against the same CA bundle as every
outbound https request (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else certifi), directly (no
proxy variables, like the Web Push sender), within the push request timeout.
"""

from __future__ import annotations

import threading
from typing import Any

import google.auth.transport
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from webapp.platform.outbound.http import ca_bundle

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class _TimedRequest(google.auth.transport.Request):
    """google-auth's requests transport with our timeout (its own default is 120 s)."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        self._inner = google.auth.transport.requests.Request(session)
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        return self._inner(
            url,
            method=method,
            body=body,
            headers=headers,
            timeout=min(timeout or self._timeout, self._timeout),
            **kwargs,
        )


class AccessTokens:
    """The process's FCM access token, fetched once and shared until it is due for refresh.

    ``get`` and ``refresh_if_current`` raise google-auth's errors: ``TransportError`` (the
    token endpoint could not be reached) or ``RefreshError`` (it answered with an error;
    ``retryable`` when it was a 5xx or a temporary failure).
    """

    def __init__(self, credentials: service_account.Credentials, *, timeout: float) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies, no .netrc; the bundle is set below
        self._session.verify = ca_bundle() or True
        self._request = _TimedRequest(self._session, timeout)

    @classmethod
    def from_file(cls, path: str, *, timeout: float) -> AccessTokens:
        credentials = service_account.Credentials.from_service_account_file(
            path, scopes=[FCM_SCOPE]
        )
        return cls(credentials, timeout=timeout)

    @property
    def project_id(self) -> str | None:
        """The project the service account belongs to (its JSON's ``project_id``)."""
        return self._credentials.project_id

    @property
    def valid(self) -> bool:
        """Whether the cached token is still good to use (not due for refresh)."""
        return bool(self._credentials.valid)

    def get(self) -> str:
        """The current token, fetching a new one first if there is none or it is due."""
        credentials = self._credentials
        token = credentials.token
        if token is not None and credentials.valid:
            return str(token)
        with self._lock:
            if not credentials.valid:
                credentials.refresh(self._request)
            return str(credentials.token)

    def refresh_if_current(self, refused: str) -> None:
        """FCM refused ``refused`` (401): fetch a new token, unless another send already
        replaced it since (then that one is used)."""
        with self._lock:
            if self._credentials.token == refused:
                self._credentials.refresh(self._request)

    def close(self) -> None:
        self._session.close()
