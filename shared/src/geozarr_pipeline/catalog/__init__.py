"""Catalog backends: where register writes items and augment updates them.

`open_catalog(settings)` returns the backend the settings select: an on-disk static STAC
catalog (the embedded default) or a STAC API with the Transactions extension.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

RegisterMode = Literal["create-or-skip", "upsert", "replace"]
StacItem = dict[str, Any]


class Catalog(Protocol):
    def ensure_collection(self, collection_id: str) -> None:
        """Create the collection from its template if it does not exist yet."""

    def get_item(self, collection_id: str, item_id: str) -> StacItem:
        """The stored item; raises errors.SourceNotFound if there is none."""

    def put_item(self, item: StacItem, mode: RegisterMode) -> str:
        """Write the item as `mode` says and return its URL."""

    def item_url(self, collection_id: str, item_id: str) -> str:
        """Where the item is (or will be) readable."""
