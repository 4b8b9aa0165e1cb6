"""What both backends share: collection templates and the upsert merge."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from geozarr_pipeline.catalog import StacItem

BACKEND_LINK_RELS = frozenset({"self", "root", "parent", "collection", "items"})
DEFAULT_TEMPLATE = "sentinel-2-l2a"


def collection_template(collection_id: str) -> dict[str, Any]:
    """The collection document for `collection_id`, from the bundled template.

    A template named after the collection wins; otherwise the Sentinel-2 L2A one is used
    with its id replaced.
    """
    templates = resources.files("geozarr_pipeline.catalog").joinpath("templates")
    name = collection_id if templates.joinpath(f"{collection_id}.json").is_file() else None
    text = templates.joinpath(f"{name or DEFAULT_TEMPLATE}.json").read_text()
    collection: dict[str, Any] = json.loads(text)
    collection["id"] = collection_id
    collection["links"] = [
        link for link in collection.get("links", []) if link.get("rel") not in BACKEND_LINK_RELS
    ]
    return collection


def strip_backend_links(item: StacItem) -> StacItem:
    result = copy.deepcopy(item)
    result["links"] = [
        link for link in result.get("links", []) if link.get("rel") not in BACKEND_LINK_RELS
    ]
    return result


def merge_for_upsert(existing: StacItem, new: StacItem) -> StacItem:
    """`new`, plus whatever the stored item has that `new` does not define."""
    old = strip_backend_links(existing)
    merged = copy.deepcopy(new)
    for key, value in old.items():
        merged.setdefault(key, value)
    for section in ("properties", "assets"):
        target = merged.setdefault(section, {})
        for key, value in (old.get(section) or {}).items():
            target.setdefault(key, value)
    new_rels = {link.get("rel") for link in merged.get("links", [])}
    merged["links"] = list(merged.get("links", [])) + [
        link for link in old.get("links", []) if link.get("rel") not in new_rels
    ]
    merged["stac_extensions"] = sorted(
        set(merged.get("stac_extensions", [])) | set(old.get("stac_extensions", []))
    )
    return merged
