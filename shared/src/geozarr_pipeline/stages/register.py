"""The register stage: ConvertDone -> RegisterDone.

Fetch the source item (or describe a direct Zarr source from its own metadata), read the
converted store's real structure, build and validate the item, write it to the catalog.
Light on purpose: JSON metadata only, no zarr/xarray/dask/eopf_geozarr imports.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pystac

from geozarr_pipeline import output_store
from geozarr_pipeline.catalog import Catalog, opened_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, OutputCheckFailed
from geozarr_pipeline.events import ConvertDone, RegisterDone, quoted_value
from geozarr_pipeline.provenance import (
    PROCESSING_EXTENSION,
    processing_properties,
)
from geozarr_pipeline.retries import RetryPolicies
from geozarr_pipeline.stac.hrefs import canonical_store_url
from geozarr_pipeline.stac.item import build_item, item_dict, merge_extensions, read_source_item
from geozarr_pipeline.stac.source import derived_from_link, fetch_source_item, item_from_product
from geozarr_pipeline.stac.store import node_exists, open_reader, read_store
from geozarr_pipeline.stac.validate import validate_item
from geozarr_pipeline.urlpolicy import check_url, policy_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversion:
    """A completed conversion as convert left it: its reply, its marker, its store."""

    done: ConvertDone
    marker: dict[str, Any]
    store_url: str


def converted_store(event: ConvertDone, settings: Settings) -> Conversion:
    """The conversion behind `event`, as its completion marker records it.

    Register takes only the store that convert writes for the event's item and collection
    under output_root (compared as text, never resolved: the event's path is not touched),
    completed (marker present, store there), and only the event that conversion replied
    with: an event naming another store, a leftover, a folder without data, or a source other
    than the one converted is refused before anything is read.
    """
    with output_store.output_for(settings, event.collection, event.item_id) as location:
        expected = location.url.rstrip("/")
        if event.output_url.rstrip("/") != expected:
            raise InvalidInput(
                f"output_url {quoted_value(event.output_url, 200)} is not the store convert "
                f"writes for {event.collection}/{event.item_id} ({expected})",
                field="output_url",
            )
        marker = output_store.completed_marker(location)
    if marker is None:
        raise InvalidInput(
            f"no completed conversion of {event.collection}/{event.item_id} at {expected} "
            "(no completion marker or no store)",
            field="output_url",
        )
    recorded = ConvertDone.model_validate(marker["done"])
    if recorded.output_url.rstrip("/") != expected:
        raise InvalidInput(
            f"the completion marker at {expected} records another store "
            f"({quoted_value(recorded.output_url, 200)})",
            field="output_url",
        )
    claimed = event.model_copy(update={"output_url": recorded.output_url})
    if claimed != recorded:
        differing = sorted(
            name
            for name in ConvertDone.model_fields
            if getattr(claimed, name) != getattr(recorded, name)
        )
        raise InvalidInput(
            f"the event does not match the conversion recorded at {expected}: "
            f"{', '.join(differing)} differ",
            field=differing[0],
        )
    return Conversion(done=recorded, marker=marker, store_url=canonical_store_url(expected))


def build_registered_item(
    event: ConvertDone, settings: Settings, client: httpx.Client, collection_url: str
) -> dict[str, Any]:
    """The validated item for a converted store; every asset points at an existing node."""
    conversion = converted_store(event, settings)
    event = conversion.done
    retry = RetryPolicies.from_settings(settings).source
    if event.source_item_url:
        check_url(event.source_item_url, settings, what="source item URL")
        source_item = fetch_source_item(
            event.source_item_url, client, retry=retry, item_id=event.item_id
        )
    else:
        check_url(event.zarr_url, settings, what="source Zarr URL")
        with contextlib.closing(open_reader(event.zarr_url, settings, client)) as product:
            zarr_url = event.zarr_url
            source_item = retry.call(
                lambda: item_from_product(product, zarr_url), item_id=event.item_id
            )
    store_url = conversion.store_url
    with contextlib.closing(open_reader(store_url, settings, client)) as reader:
        tree = read_store(store_url, reader)
        item, node_paths = build_item(
            item_id=event.item_id,
            collection=event.collection,
            source_item=read_source_item(source_item, event.source_item_url or event.zarr_url),
            source_link=pystac.Link.from_dict(
                derived_from_link(event.source_item_url, event.zarr_url)
            ),
            store_url=store_url,
            tree=tree,
            settings=settings,
        )
        missing = [key for key, path in node_paths.items() if not node_exists(reader, path)]
    if missing:
        raise OutputCheckFailed(
            f"assets {', '.join(sorted(missing))} point at nodes missing from {store_url}"
        )
    item.add_link(pystac.Link("collection", collection_url, media_type="application/json"))
    item.properties.update(processing_properties(conversion.marker, item.properties))
    item.stac_extensions = merge_extensions(item.stac_extensions, [PROCESSING_EXTENSION])
    registered = item_dict(item)
    validate_item(registered)
    return registered


def run(
    event: ConvertDone,
    settings: Settings,
    catalog: Catalog | None = None,
    client: httpx.Client | None = None,
) -> RegisterDone:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        http = client or stack.enter_context(
            policy_client(settings, user_agent="geozarr-pipeline-register")
        )
        catalog = stack.enter_context(opened_catalog(settings, catalog))
        item = build_registered_item(
            event, settings, http, catalog.collection_url(event.collection)
        )
        item_url = catalog.put_item(item, settings.register_mode)
    log.info(
        "item registered",
        extra={
            "item_id": event.item_id,
            "collection": event.collection,
            "item_url": item_url,
            "mode": settings.register_mode,
            "assets": sorted(item["assets"]),
            "elapsed_s": round(time.monotonic() - started, 3),
        },
    )
    return RegisterDone(
        item_id=event.item_id,
        collection=event.collection,
        item_url=item_url,
        output_url=event.output_url,
    )
