"""Where the sample server finds things under its root folder.

    ROOT/products/<item_id>.zarr             the product (Zarr v2), served at /products/...
    ROOT/items/<collection>/<item_id>.json   its source STAC item, served at
                                             /collections/<collection>/items/<item_id>

Items on disk carry hrefs under PLACEHOLDER_BASE; the server rewrites that prefix to its own
base URL on the fly, so the same folder works on any port.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER_BASE = "http://sample.invalid"
PRODUCTS_DIR = "products"
ITEMS_DIR = "items"


@dataclass(frozen=True)
class SampleLayout:
    root: Path

    def product_path(self, item_id: str) -> Path:
        return self.root / PRODUCTS_DIR / f"{item_id}.zarr"

    def item_path(self, collection: str, item_id: str) -> Path:
        return self.root / ITEMS_DIR / collection / f"{item_id}.json"


def product_url(base: str, item_id: str) -> str:
    return f"{base.rstrip('/')}/{PRODUCTS_DIR}/{item_id}.zarr"


def item_url(base: str, collection: str, item_id: str) -> str:
    return f"{base.rstrip('/')}/collections/{collection}/items/{item_id}"
