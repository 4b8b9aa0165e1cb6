"""The embedded default backend: a static STAC catalog on disk.

Layout (STAC best practice), all links relative so the folder can be moved or served:

    {root}/catalog.json
    {root}/{collection}/collection.json
    {root}/{collection}/{item_id}/{item_id}.json

Every file is written atomically (temporary file in the same folder, fsync, rename), and an
item write holds an exclusive lock on the collection so concurrent deliveries serialise. An
item is deleted the same way: under the lock its folder is renamed aside in one step (a reader
sees the item whole or not at all), then the renamed folder is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geozarr_pipeline.catalog import RegisterMode, StacItem
from geozarr_pipeline.catalog.common import (
    collection_template,
    merge_for_upsert,
    strip_backend_links,
)
from geozarr_pipeline.errors import InvalidInput, SourceNotFound
from geozarr_pipeline.events import check_safe_id
from geozarr_pipeline.files import write_atomic

CATALOG_ID = "geozarr"


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` (its `.lock` file), released when the file closes."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class StaticCatalog:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    # Paths -------------------------------------------------------------------------------
    def _safe(self, value: str) -> str:
        try:
            return check_safe_id(value)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc

    def catalog_path(self) -> Path:
        return self.root / "catalog.json"

    def collection_path(self, collection_id: str) -> Path:
        return self.root / self._safe(collection_id) / "collection.json"

    def item_path(self, collection_id: str, item_id: str) -> Path:
        item_id = self._safe(item_id)
        return self.root / self._safe(collection_id) / item_id / f"{item_id}.json"

    def item_url(self, collection_id: str, item_id: str) -> str:
        return self.item_path(collection_id, item_id).as_uri()

    def collection_url(self, collection_id: str) -> str:
        return self.collection_path(collection_id).as_uri()

    def _locked(self, collection_id: str) -> contextlib.AbstractContextManager[None]:
        return locked_folder(self.root / self._safe(collection_id))

    # Catalog and collections -------------------------------------------------------------
    def _ensure_root(self) -> dict[str, Any]:
        path = self.catalog_path()
        if path.exists():
            catalog: dict[str, Any] = json.loads(path.read_text())
            return catalog
        catalog = {
            "type": "Catalog",
            "stac_version": "1.1.0",
            "id": CATALOG_ID,
            "description": "GeoZarr items registered by the pipeline",
            "links": [
                {"rel": "root", "href": "./catalog.json", "type": "application/json"},
                {"rel": "self", "href": "./catalog.json", "type": "application/json"},
            ],
        }
        write_json_atomic(path, catalog)
        return catalog

    def _add_child_link(self, collection_id: str) -> None:
        catalog = self._ensure_root()
        href = f"./{collection_id}/collection.json"
        if any(link.get("href") == href for link in catalog["links"]):
            return
        catalog["links"].append({"rel": "child", "href": href, "type": "application/json"})
        write_json_atomic(self.catalog_path(), catalog)

    def ensure_collection(self, collection_id: str) -> None:
        path = self.collection_path(collection_id)
        with locked_folder(self.root):
            if not path.exists():
                collection = collection_template(collection_id)
                collection["links"] = [
                    {"rel": "root", "href": "../catalog.json", "type": "application/json"},
                    {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
                    {"rel": "self", "href": "./collection.json", "type": "application/json"},
                    *collection["links"],
                ]
                write_json_atomic(path, collection)
            self._add_child_link(collection_id)

    # Items -------------------------------------------------------------------------------
    def get_item(self, collection_id: str, item_id: str) -> StacItem:
        path = self.item_path(collection_id, item_id)
        try:
            item: StacItem = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise SourceNotFound(f"no item {item_id!r} in collection {collection_id!r}") from exc
        return item

    def _with_links(self, item: StacItem) -> StacItem:
        document = strip_backend_links(item)
        document["links"] = [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "self", "href": f"./{item['id']}.json", "type": "application/geo+json"},
            *document["links"],
        ]
        return document

    def put_item(self, item: StacItem, mode: RegisterMode) -> str:
        collection_id = str(item.get("collection", ""))
        item_id = str(item.get("id", ""))
        path = self.item_path(collection_id, item_id)
        self.ensure_collection(collection_id)
        with self._locked(collection_id):
            exists = path.exists()
            if exists and mode == "create-or-skip":
                return self.item_url(collection_id, item_id)
            document = item
            if exists and mode == "upsert":
                document = merge_for_upsert(json.loads(path.read_text()), item)
            write_json_atomic(path, self._with_links(document))
        return self.item_url(collection_id, item_id)

    def delete_item(self, collection_id: str, item_id: str) -> bool:
        path = self.item_path(collection_id, item_id)
        if not path.parent.parent.is_dir():
            return False  # no such collection: nothing to lock, nothing to delete
        with self._locked(collection_id):
            if not path.parent.is_dir():
                return False
            existed = path.is_file()
            # A hidden name: never read as an item (ids start with a letter or a digit).
            aside = path.parent.with_name(f".deleted.{uuid.uuid4().hex}")
            os.rename(path.parent, aside)
        shutil.rmtree(aside, ignore_errors=True)
        return existed
