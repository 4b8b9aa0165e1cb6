"""The augment stage: RegisterDone -> AugmentDone.

Reads the registered item into a pystac Item, adds the raster API's web-map links, a
thumbnail and render hints (`geozarr_pipeline.visual`), and writes its JSON back through the
same catalog backend. Light on purpose: no xarray, dask or eopf_geozarr here.
"""

from __future__ import annotations

import logging

from geozarr_pipeline.catalog import Catalog, opened_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import AugmentDone, RegisterDone
from geozarr_pipeline.stac.item import item_dict, read_registered_item
from geozarr_pipeline.stac.validate import validate_item
from geozarr_pipeline.visual import RasterApi, visualise

log = logging.getLogger(__name__)


def run(event: RegisterDone, settings: Settings, catalog: Catalog | None = None) -> AugmentDone:
    api = RasterApi(settings.raster_api_url)
    with opened_catalog(settings, catalog) as backend:
        stored = backend.get_item(event.collection, event.item_id)
        item = read_registered_item(stored, f"{event.collection}/{event.item_id}")
        # Both sides as the catalog is handed items: the backend's self link left out.
        before = item_dict(item)
        visualise(item, api)
        augmented = item_dict(item)
        written = augmented != before
        if written:
            validate_item(augmented)
            item_url = backend.put_item(augmented, mode="upsert")
        else:
            item_url = backend.item_url(event.collection, event.item_id)
    viewer_url = api.viewer_url(event.collection, event.item_id)
    log.info(
        "item augmented",
        extra={
            "item_id": event.item_id,
            "collection": event.collection,
            "written": written,
            "viewer_url": viewer_url,
        },
    )
    return AugmentDone(
        item_id=event.item_id,
        collection=event.collection,
        item_url=item_url,
        viewer_url=viewer_url,
    )
