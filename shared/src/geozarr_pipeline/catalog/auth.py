"""Authentication for the STAC API: a static bearer token or OIDC client credentials.

Tokens are kept in memory only and never logged; an OIDC token is refreshed before it
expires (at 80 % of its lifetime, and at least 30 s early). A token fetch runs under the token
retry policy (`retries`): network errors, 408, 429 and 5xx are retried, a refusal is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from geozarr_pipeline.errors import UpstreamRejected
from geozarr_pipeline.faults import TRANSIENT_STATUSES, http_answer_fault, http_request_fault
from geozarr_pipeline.redaction import register_secrets
from geozarr_pipeline.retries import RetryPolicy, default_policies

Clock = Callable[[], float]


class Auth(Protocol):
    def headers(self, *, item_id: str | None = None) -> dict[str, str]:
        """Authorization headers for the next request (for `item_id`, in the retry log)."""

    def invalidate(self) -> bool:
        """Forget a cached token the API refused; True if the next request gets a new one."""


class NoAuth:
    def headers(self, *, item_id: str | None = None) -> dict[str, str]:
        return {}

    def invalidate(self) -> bool:
        return False


@dataclass
class BearerToken:
    token: str = field(repr=False)

    def headers(self, *, item_id: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def invalidate(self) -> bool:
        return False


@dataclass
class OidcClientCredentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    client: httpx.Client = field(repr=False)
    scope: str | None = None
    clock: Clock = time.monotonic
    retry: RetryPolicy = field(default_factory=lambda: default_policies().token, repr=False)
    _token: str | None = field(default=None, repr=False)
    _previous: str | None = field(default=None, repr=False)
    _retired: str | None = field(default=None, repr=False)
    _refresh_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def headers(self, *, item_id: str | None = None) -> dict[str, str]:
        with self._lock:
            if self._token is None or self.clock() >= self._refresh_at:
                self._fetch(item_id)
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def _request_token(self) -> httpx.Response:
        """One attempt: the endpoint's answer, or the error `faults` makes of it."""
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        try:
            response = self.client.post(
                self.token_url, data=data, auth=(self.client_id, self.client_secret)
            )
        except httpx.HTTPError as exc:
            raise http_request_fault("the token endpoint", exc, doing="calling") from exc
        fault = (
            http_answer_fault(response, "the token endpoint")
            if response.status_code in TRANSIENT_STATUSES
            else None
        )
        if fault is not None:
            raise fault
        if response.status_code >= 400:
            raise UpstreamRejected(
                f"token endpoint refused the client credentials ({response.status_code})"
            )
        return response

    def _fetch(self, item_id: str | None) -> None:
        response = self.retry.call(self._request_token, item_id=item_id)
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamRejected("token endpoint answered without an access_token")
        lifetime = float(body.get("expires_in") or 300)
        # A fetched token is a secret like the configured ones: an API that echoes it back
        # in an error body must not get it into a reply, a log line or a failure record.
        # The one it replaces may still be valid (and in flight): only the one before that
        # is forgotten, so that a long-running function does not pile tokens up.
        register_secrets([token], replacing=self._retired)
        self._retired = self._previous
        self._previous = token
        self._token = token
        self._refresh_at = self.clock() + min(lifetime * 0.8, max(lifetime - 30, 0))
