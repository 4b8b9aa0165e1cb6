"""Catalog backends: where register writes items and augment updates them.

`open_catalog(settings)` returns the backend the settings select: an on-disk static STAC
catalog (the embedded default) or a STAC API with the Transactions extension;
`opened_catalog(settings)` is the same as a context manager that closes its HTTP client.

Write modes of `put_item`:
- `create-or-skip`: create the item; if it already exists, leave it untouched.
- `upsert`: create, or update in one atomic PUT, keeping what others added to the stored item
  (assets, links, properties the new item does not have, e.g. augment's thumbnail and links).
- `replace`: create, or overwrite in one atomic PUT with exactly this item.

`delete_item` removes an item (the operator commands `delete` and `cleanup`); deleting an item
that does not exist is not an error, it answers False.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import httpx

    from geozarr_pipeline.config import Settings

RegisterMode = Literal["create-or-skip", "upsert", "replace"]
StacItem = dict[str, Any]


class Catalog(Protocol):
    def ensure_collection(self, collection_id: str) -> None:
        """Create the collection from its template if it does not exist yet."""

    def get_item(self, collection_id: str, item_id: str) -> StacItem:
        """The stored item; raises errors.SourceNotFound if there is none."""

    def put_item(self, item: StacItem, mode: RegisterMode) -> str:
        """Write the item as `mode` says and return its URL."""

    def delete_item(self, collection_id: str, item_id: str) -> bool:
        """Remove the item at once (never half of it); True if it existed, False if not."""

    def item_url(self, collection_id: str, item_id: str) -> str:
        """Where the item is (or will be) readable."""

    def collection_url(self, collection_id: str) -> str:
        """Where the collection is (or will be) readable."""


def open_catalog(settings: Settings, client: httpx.Client | None = None) -> Catalog:
    """The backend the settings select. `client` is for the STAC API backend (tests, reuse)."""
    if settings.catalog_backend == "stac-api":
        from geozarr_pipeline.catalog.stac_api import StacApiCatalog

        return StacApiCatalog.from_settings(settings, client=client)
    from geozarr_pipeline.catalog.static import StaticCatalog

    return StaticCatalog(settings.catalog_root)


@contextlib.contextmanager
def opened_catalog(settings: Settings, catalog: Catalog | None = None) -> Iterator[Catalog]:
    """`catalog` as it is, else the backend the settings select with its HTTP client closed
    on exit (one client per stage run, not one leaked per event)."""
    if catalog is not None or settings.catalog_backend != "stac-api":
        yield catalog if catalog is not None else open_catalog(settings)
        return
    import httpx

    with httpx.Client(timeout=settings.stac_api_timeout_seconds) as client:
        yield open_catalog(settings, client=client)
