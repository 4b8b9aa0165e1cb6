"""A STAC API with the Transactions extension (e.g. stac-fastapi-pgstac) as the catalog.

Every request runs under the STAC API retry policy (`retries`): connection errors, timeouts,
429 (after the Retry-After it asks for) and 5xx are retried with jittered backoff; any other
4xx is a permanent UpstreamRejected carrying the API's own message. A refused token (401) is
renewed and the request sent once more within the same attempt.
Updates are one atomic PUT; a create that races another create (409) turns into a PUT, so
there is never a window in which the item is missing; a write that keeps losing such races
is retried under the same policy. A delete is one
`DELETE /collections/{c}/items/{id}` (Transactions); a 404 means there was nothing to delete.
"""

from __future__ import annotations

import itertools
import logging
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
    SourceNotFound,
    TransientError,
    UpstreamRejected,
)
from geozarr_pipeline.faults import TRANSIENT_STATUSES, http_answer_fault, http_request_fault
from geozarr_pipeline.retries import RetryPolicies, RetryPolicy, default_policies

log = logging.getLogger(__name__)


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
    retry: RetryPolicy = field(default_factory=lambda: default_policies().stac_api)
    _collections: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: httpx.Client | None = None
    ) -> StacApiCatalog:
        if not settings.stac_api_url:
            raise InvalidInput("catalog_backend is stac-api but GEOZARR_STAC_API_URL is not set")
        client = client or httpx.Client(timeout=settings.stac_api_timeout_seconds)
        policies = RetryPolicies.from_settings(settings)
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
                retry=policies.token,
            )
        elif settings.stac_api_token is not None:
            auth = BearerToken(settings.stac_api_token.get_secret_value())
        return cls(
            base_url=settings.stac_api_url.rstrip("/"),
            client=client,
            auth=auth,
            retry=policies.stac_api,
        )

    # Transport ---------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: Any = None, *, item_id: str | None = None
    ) -> httpx.Response:
        """Send with auth under the retry policy; any answer but a transient one is returned
        to the caller. `item_id`: the item the request is for, in the retry log."""
        numbers = itertools.count(1)
        return self.retry.call(
            lambda: self._attempt(method, path, body, item_id, next(numbers)), item_id=item_id
        )

    def _attempt(
        self, method: str, path: str, body: Any, item_id: str | None, number: int
    ) -> httpx.Response:
        """Attempt `number`: the answer, or the transient fault `faults` makes of it."""
        what = f"STAC API {method} {path}"
        try:
            response = self._send(method, path, body, item_id)
            if response.status_code == 401 and self.auth.invalidate():
                response = self._send(method, path, body, item_id)  # with a fresh token
        except httpx.TransportError as exc:
            lost = http_request_fault(what, exc)
            failed = f"{what} failed after {number} attempts: {type(exc).__name__}"
            raise type(lost)(failed, **lost.details) from exc
        transient = response.status_code in TRANSIENT_STATUSES
        fault = http_answer_fault(response, what) if transient else None
        if fault is None:
            return response
        failed = f"{what} failed after {number} attempts: HTTP {response.status_code}"
        raise type(fault)(failed, **fault.details)

    def _send(self, method: str, path: str, body: Any, item_id: str | None) -> httpx.Response:
        headers = self.auth.headers(item_id=item_id)
        return self.client.request(method, f"{self.base_url}{path}", json=body, headers=headers)

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

    def ensure_collection(self, collection_id: str, *, item_id: str | None = None) -> None:
        """`item_id`: the item the collection is needed for, in the retry log."""
        if collection_id in self._collections:
            return
        response = self.request("GET", f"/collections/{collection_id}", item_id=item_id)
        if response.status_code == 404:
            created = self.request(
                "POST", "/collections", collection_template(collection_id), item_id=item_id
            )
            if created.status_code not in (200, 201, 409):
                raise self._rejected(created, f"creating collection {collection_id!r}")
            log.info("collection created", extra={"collection": collection_id})
        elif response.status_code != 200:
            raise self._rejected(response, f"reading collection {collection_id!r}")
        self._collections.add(collection_id)

    def get_item(self, collection_id: str, item_id: str) -> StacItem:
        response = self.request(
            "GET", f"/collections/{collection_id}/items/{item_id}", item_id=item_id
        )
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
        response = self.request("PUT", path, strip_backend_links(item), item_id=str(item["id"]))
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 201, 204):
            raise self._rejected(response, f"updating item {item['id']!r}")
        return True

    def _post(self, item: StacItem) -> bool:
        """Create the item; False if it exists already (409)."""
        response = self.request(
            "POST",
            f"/collections/{item['collection']}/items",
            strip_backend_links(item),
            item_id=str(item["id"]),
        )
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201):
            raise self._rejected(response, f"creating item {item['id']!r}")
        return True

    def _write(self, item: StacItem, mode: RegisterMode) -> None:
        """One attempt at writing; a TransientError when a concurrent writer got in the way."""
        if mode == "upsert":
            existing = self._find(str(item["collection"]), str(item["id"]))
            if existing is not None:
                written = self._put(merge_for_upsert(existing, item))
            else:
                written = self._post(item)  # a 409 means it was created since our read
        else:
            written = self._post(item) or mode == "create-or-skip" or self._put(item)
        if not written:
            raise TransientError(
                f"item {item['id']!r} kept changing under concurrent writers; try again later"
            )

    def put_item(self, item: StacItem, mode: RegisterMode) -> str:
        collection_id, item_id = str(item["collection"]), str(item["id"])
        self.ensure_collection(collection_id, item_id=item_id)
        # pgstac updates an item as delete + insert in one transaction, so a PUT racing another
        # writer can answer 404 although the item exists: such a race is retried, never a loss.
        # The requests inside have their own attempts: a fault they gave up on is final here.
        self.retry.call(lambda: self._write(item, mode), item_id=item_id)
        return self.item_url(collection_id, item_id)

    def delete_item(self, collection_id: str, item_id: str) -> bool:
        """DELETE the item; False if the API says it does not exist (404).

        A retried DELETE whose first attempt was applied answers 404 too: False then means
        "gone now", which is all a caller can rely on anyway.
        """
        response = self.request(
            "DELETE", f"/collections/{collection_id}/items/{item_id}", item_id=item_id
        )
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202, 204):
            raise self._rejected(response, f"deleting item {item_id!r}")
        return True
