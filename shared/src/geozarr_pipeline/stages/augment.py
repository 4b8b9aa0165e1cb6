"""The augment stage: RegisterDone -> AugmentDone.

Reads the registered item, adds the raster API's web-map links, a thumbnail and render
hints (`geozarr_pipeline.visual`), and writes it back through the same catalog backend.
Light on purpose: no xarray, dask or eopf_geozarr here.
"""

from __future__ import annotations

import logging

from geozarr_pipeline.catalog import Catalog, open_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import AugmentDone, RegisterDone
from geozarr_pipeline.stac.validate import validate_item
from geozarr_pipeline.visual import RasterApi, add_visualisation

log = logging.getLogger(__name__)


def run(event: RegisterDone, settings: Settings, catalog: Catalog | None = None) -> AugmentDone:
    catalog = catalog if catalog is not None else open_catalog(settings)
    api = RasterApi(settings.raster_api_url)
    item = catalog.get_item(event.collection, event.item_id)
    augmented = add_visualisation(item, api)
    if augmented == item:
        item_url = catalog.item_url(event.collection, event.item_id)
        written = False
    else:
        validate_item(augmented)
        item_url = catalog.put_item(augmented, mode="upsert")
        written = True
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
