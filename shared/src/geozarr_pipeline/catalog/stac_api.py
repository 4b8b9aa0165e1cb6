"""A STAC API with the Transactions extension (e.g. stac-fastapi-pgstac) as the catalog.

Retries with exponential backoff only on transient failures (connection errors, timeouts,
429, 5xx); any other 4xx is a permanent UpstreamRejected carrying the API's own message.
Updates are one atomic PUT; a create that races another create (409) turns into a PUT, so
there is never a window in which the item is missing. A delete is one
`DELETE /collections/{c}/items/{id}` (Transactions); a 404 means there was nothing to delete.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from geozarr_pipeline.catalog import RegisterMode, StacItem
from geozarr_pipeline.catalog.auth import Auth, BearerToken, NoAuth, OidcClientCredentials
from geozarr_pipeline.catalog.common import (
    collection_template,
    merge_for_upsert,
    strip_backend_links,
)
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import (
    InvalidInput,
    RateLimited,
    SourceNotFound,
    TransientError,
    UpstreamRejected,
)
from geozarr_pipeline.faults import TRANSIENT_STATUSES

log = logging.getLogger(__name__)
MAX_RETRY_AFTER_SECONDS = 10.0
CONCURRENT_WRITE_ATTEMPTS = 5


def api_message(response: httpx.Response) -> str:
    """The API's own explanation of an error response, shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        for key in ("description", "detail", "message", "error"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:500]


@dataclass
class StacApiCatalog:
    base_url: str
    client: httpx.Client
    auth: Auth = field(default_factory=NoAuth)
    retries: int = 4
    backoff_seconds: float = 0.25
    sleep: Callable[[float], None] = time.sleep
    _collections: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: httpx.Client | None = None
    ) -> StacApiCatalog:
        if not settings.stac_api_url:
            raise InvalidInput("catalog_backend is stac-api but GEOZARR_STAC_API_URL is not set")
        client = client or httpx.Client(timeout=settings.stac_api_timeout_seconds)
        auth: Auth = NoAuth()
        if settings.oidc_token_url:
            if not settings.oidc_client_id or settings.oidc_client_secret is None:
                raise InvalidInput(
                    "OIDC needs GEOZARR_OIDC_CLIENT_ID and GEOZARR_OIDC_CLIENT_SECRET"
                )
            auth = OidcClientCredentials(
                token_url=settings.oidc_token_url,
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret.get_secret_value(),
                client=client,
                scope=settings.oidc_scope,
            )
        elif settings.stac_api_token is not None:
            auth = BearerToken(settings.stac_api_token.get_secret_value())
        return cls(
            base_url=settings.stac_api_url.rstrip("/"),
            client=client,
            auth=auth,
            retries=settings.stac_api_retries,
            backoff_seconds=settings.stac_api_backoff_seconds,
        )

    # Transport ---------------------------------------------------------------------------
    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and response.status_code == 429:
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                return min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
        base: float = self.backoff_seconds * (2**attempt)
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """Send with auth; retry transient failures; return any other response to the caller."""
        url = f"{self.base_url}{path}"
        refreshed = False
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self.client.request(method, url, json=body, headers=self.auth.headers())
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}"
            else:
                if response.status_code == 401 and not refreshed:
                    refreshed = True
                    if self.auth.invalidate():
                        continue  # once, with a fresh token
                if response.status_code not in TRANSIENT_STATUSES:
                    return response
                failure = f"HTTP {response.status_code}"
            if attempt >= self.retries:
                message = f"STAC API {method} {path} failed after {attempt + 1} attempts: {failure}"
                if response is not None and response.status_code == 429:
                    raise RateLimited(message)
                raise TransientError(message)
            delay = self._delay(attempt, response)
            log.warning(
                "stac api retry",
                extra={"method": method, "path": path, "failure": failure, "delay_s": delay},
            )
            self.sleep(delay)
            attempt += 1

    def _rejected(self, response: httpx.Response, what: str) -> UpstreamRejected:
        return UpstreamRejected(
            f"STAC API refused {what} ({response.status_code}): {api_message(response)}",
            status=response.status_code,
        )

    # Catalog protocol --------------------------------------------------------------------
    def item_url(self, collection_id: str, item_id: str) -> str:
        return f"{self.base_url}/collections/{collection_id}/items/{item_id}"

    def collection_url(self, collection_id: str) -> str:
        return f"{self.base_url}/collections/{collection_id}"

    def ensure_collection(self, collection_id: str) -> None:
        if collection_id in self._collections:
            return
        response = self.request("GET", f"/collections/{collection_id}")
        if response.status_code == 404:
            created = self.request("POST", "/collections", collection_template(collection_id))
            if created.status_code not in (200, 201, 409):
                raise self._rejected(created, f"creating collection {collection_id!r}")
            log.info("collection created", extra={"collection": collection_id})
        elif response.status_code != 200:
            raise self._rejected(response, f"reading collection {collection_id!r}")
        self._collections.add(collection_id)

    def get_item(self, collection_id: str, item_id: str) -> StacItem:
        response = self.request("GET", f"/collections/{collection_id}/items/{item_id}")
        if response.status_code == 404:
            raise SourceNotFound(f"no item {item_id!r} in collection {collection_id!r}")
        if response.status_code != 200:
            raise self._rejected(response, f"reading item {item_id!r}")
        item: StacItem = response.json()
        return item

    def _find(self, collection_id: str, item_id: str) -> StacItem | None:
        try:
            return self.get_item(collection_id, item_id)
        except SourceNotFound:
            return None

    def _put(self, item: StacItem) -> bool:
        """Update the item; False if the API says it is missing (404)."""
        path = f"/collections/{item['collection']}/items/{item['id']}"
        response = self.request("PUT", path, strip_backend_links(item))
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 201, 204):
            raise self._rejected(response, f"updating item {item['id']!r}")
        return True

    def _post(self, item: StacItem) -> bool:
        """Create the item; False if it exists already (409)."""
        response = self.request(
            "POST", f"/collections/{item['collection']}/items", strip_backend_links(item)
        )
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201):
            raise self._rejected(response, f"creating item {item['id']!r}")
        return True

    def _write(self, item: StacItem, mode: RegisterMode) -> bool:
        """One attempt at writing; False when a concurrent writer got in the way."""
        if mode == "upsert":
            existing = self._find(str(item["collection"]), str(item["id"]))
            if existing is not None:
                return self._put(merge_for_upsert(existing, item))
            return self._post(item)  # a 409 means it was created since our read: go again
        if self._post(item) or mode == "create-or-skip":
            return True
        return self._put(item)

    def put_item(self, item: StacItem, mode: RegisterMode) -> str:
        collection_id, item_id = str(item["collection"]), str(item["id"])
        self.ensure_collection(collection_id)
        # pgstac updates an item as delete + insert in one transaction, so a PUT racing another
        # writer can answer 404 although the item exists: such a race is retried, never a loss.
        for attempt in range(CONCURRENT_WRITE_ATTEMPTS):
            if self._write(item, mode):
                return self.item_url(collection_id, item_id)
            self.sleep(self._delay(attempt, None))
        raise TransientError(
            f"item {item_id!r} kept changing under concurrent writers; try again later"
        )

    def delete_item(self, collection_id: str, item_id: str) -> bool:
        """DELETE the item; False if the API says it does not exist (404).

        A retried DELETE whose first attempt was applied answers 404 too: False then means
        "gone now", which is all a caller can rely on anyway.
        """
        response = self.request("DELETE", f"/collections/{collection_id}/items/{item_id}")
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202, 204):
            raise self._rejected(response, f"deleting item {item_id!r}")
        return True
