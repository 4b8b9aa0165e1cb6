"""The augment stage: RegisterDone -> AugmentDone.

Reads the registered item, adds the raster API's web-map links, a thumbnail and render
hints (`geozarr_pipeline.visual`), and writes it back through the same catalog backend.
Light on purpose: no xarray, dask or eopf_geozarr here.
"""

from __future__ import annotations

import logging

from geozarr_pipeline.catalog import Catalog, opened_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import AugmentDone, RegisterDone
from geozarr_pipeline.stac.validate import validate_item
from geozarr_pipeline.visual import RasterApi, add_visualisation

log = logging.getLogger(__name__)


def run(event: RegisterDone, settings: Settings, catalog: Catalog | None = None) -> AugmentDone:
    api = RasterApi(settings.raster_api_url)
    with opened_catalog(settings, catalog) as backend:
        item = backend.get_item(event.collection, event.item_id)
        augmented = add_visualisation(item, api)
        written = augmented != item
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
