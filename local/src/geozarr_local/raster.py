"""The local raster API: the item URL shapes of production's TiTiler, for the local catalog.

    python -m geozarr_local.raster --host 127.0.0.1 --port 8010

Serves, for every item of the configured catalog (Settings: GEOZARR_CATALOG_BACKEND,
GEOZARR_CATALOG_ROOT or GEOZARR_STAC_API_URL; GEOZARR_S3_* for s3:// stores):

    /collections/{c}/items/{i}/tiles/{tms}/{z}/{x}/{y}[.{format}]   map tiles
    /collections/{c}/items/{i}/{tms}/tilejson.json                  TileJSON 3.0.0
    /collections/{c}/items/{i}/{tms}/WMTSCapabilities.xml           WMTS 1.0.0, one layer per render
    /collections/{c}/items/{i}/preview[.{format}]                   whole-item image (thumbnail)
    /collections/{c}/items/{i}/viewer                               Leaflet map of the item
    /healthz

Tiles and previews are TiTiler (titiler.core factory, titiler-xarray dependencies) over
`GeoZarrReader`; query parameters are titiler-eopf's: `variables={group}:{var}` (repeated),
`rescale`, `color_formula`, `bidx`, ...
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlparse
from xml.sax.saxutils import escape

import morecantile
import uvicorn
from attrs import define
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from titiler.core.dependencies import BidxParams, DefaultDependency
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import TilerFactory
from titiler.core.models.mapbox import TileJSON
from titiler.core.resources.enums import ImageType
from titiler.xarray.dependencies import DatasetParams, PartFeatureParams, PreviewParams

from geozarr_local.geozarr_reader import (
    GeoZarrReader,
    ItemSource,
    StoreOpener,
    TtlCache,
)
from geozarr_pipeline.catalog import Catalog, open_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import PipelineError, SourceNotFound, status_code_for
from geozarr_pipeline.stac.hrefs import public_to_storage
from geozarr_pipeline.visual.encoding import with_query
from geozarr_pipeline.visual.item import PRODUCT_KEY, default_rendering, store_root
from geozarr_pipeline.visual.links import DEFAULT_TMS
from geozarr_pipeline.visual.rendering import render_query

log = logging.getLogger(__name__)

ITEM_PREFIX = "/collections/{collection_id}/items/{item_id}"
ITEM_CACHE_SECONDS = 5.0
STATIC_PACKAGE = "geozarr_local"
SUPPORTED_TMS = morecantile.tms


def tile_matrix_set(identifier: str) -> morecantile.TileMatrixSet:
    """A supported tile matrix set, or 404."""
    if identifier not in SUPPORTED_TMS.list():
        raise HTTPException(404, f"unknown tile matrix set {identifier!r}")
    return SUPPORTED_TMS.get(identifier)


def store_url_for(item: dict[str, Any], settings: Settings) -> str:
    """Where the item's GeoZarr store is, as this server can read it.

    A public https href under GEOZARR_PUBLIC_BASE_URL is mapped back to GEOZARR_OUTPUT_ROOT;
    otherwise an `s3` alternate of the product asset is preferred to a public href.
    """
    store = store_root(item)
    if store is None:
        raise SourceNotFound(f"item {item.get('id')!r} has no Zarr asset or store link")
    storage = public_to_storage(store, settings)
    if storage is not None:
        return storage
    product = (item.get("assets") or {}).get(PRODUCT_KEY) or {}
    alternate = ((product.get("alternate") or {}).get("s3") or {}).get("href")
    if alternate and urlparse(store).scheme in ("http", "https"):
        return str(alternate).rstrip("/")
    return store


def default_variables(item: dict[str, Any]) -> tuple[str, ...]:
    """The variables of the item's first render entry, else of its default true colour."""
    for entry in ((item.get("properties") or {}).get("renders") or {}).values():
        if isinstance(entry, dict) and entry.get("variables"):
            return tuple(str(v) for v in entry["variables"])
    try:
        return default_rendering(item).variables
    except PipelineError:
        return ()


@dataclass
class ItemResolver:
    """Items from the catalog (cached for a few seconds: a map asks for many tiles at once)."""

    settings: Settings
    catalog: Catalog
    opener: StoreOpener
    _cache: TtlCache[tuple[str, str], dict[str, Any]] = field(
        default_factory=lambda: TtlCache(ITEM_CACHE_SECONDS)
    )

    def item(self, collection_id: str, item_id: str) -> dict[str, Any]:
        return self._cache.get(
            (collection_id, item_id), lambda: self.catalog.get_item(collection_id, item_id)
        )

    def source(self, collection_id: str, item_id: str) -> ItemSource:
        item = self.item(collection_id, item_id)
        return ItemSource(
            item=item,
            store_url=store_url_for(item, self.settings),
            opener=self.opener,
            default_variables=default_variables(item),
        )


@dataclass
class VariablesParams(DefaultDependency):
    """titiler-eopf's band selection: `{group}:{variable}`, one per output band."""

    variables: Annotated[
        list[str] | None,
        Query(description="Variables as `{group}:{variable}`, repeated once per band."),
    ] = None


@define(kw_only=True)
class ItemTilerFactory(TilerFactory):
    """TiTiler's tiles/preview/info/statistics for catalog items; our own TileJSON."""

    def register_routes(self) -> None:
        routes: Any = self  # TiTiler's route builders are untyped
        routes.info()
        routes.statistics()
        routes.tile()
        routes.point()
        routes.preview()


def _query_without(request: Request, names: set[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k.lower() not in names]


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _item_root(request: Request, collection_id: str, item_id: str) -> str:
    return f"{_base_url(request)}/collections/{collection_id}/items/{item_id}"


def _link_query(item: dict[str, Any], rel: str) -> list[tuple[str, str]] | None:
    for link in item.get("links") or []:
        if link.get("rel") == rel:
            return parse_qsl(urlparse(str(link.get("href", ""))).query, keep_blank_values=True)
    return None


def _wmts_layers(
    item: dict[str, Any], request_query: list[tuple[str, str]]
) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(identifier, title, query) of each layer: one per render entry, plus the request's."""
    layers: list[tuple[str, str, list[tuple[str, str]]]] = []
    for key, entry in ((item.get("properties") or {}).get("renders") or {}).items():
        if isinstance(entry, dict) and entry.get("variables"):
            layers.append((str(key), str(entry.get("title") or key), render_query(entry)))
    if any(k == "variables" for k, _ in request_query):
        layers.insert(0, ("default", "Requested rendering", request_query))
    if not layers:
        rendering = default_rendering(item)
        layers.append((rendering.key, rendering.title, rendering.query()))
    return layers


def horizontal_bbox(bbox: Any) -> list[float]:
    """West, south, east, north of a 2D or 3D STAC bbox; the Web Mercator world without one."""
    if isinstance(bbox, list) and len(bbox) == 6:
        return [bbox[0], bbox[1], bbox[3], bbox[4]]
    if isinstance(bbox, list) and len(bbox) == 4:
        return list(bbox)
    return [-180.0, -85.0511, 180.0, 85.0511]


def wmts_capabilities(
    tms: morecantile.TileMatrixSet,
    tiles_root: str,
    bbox: Sequence[float],
    layers: list[tuple[str, str, list[tuple[str, str]]]],
    image_format: str,
) -> str:
    """A WMTS 1.0.0 GetCapabilities document with RESTful tile URL templates."""
    west, south, east, north = bbox
    tms_id = str(tms.id)
    template = f"{tiles_root}/tiles/{tms_id}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{image_format}"
    layer_xml = []
    for identifier, title, query in layers:
        layer_xml.append(
            f"""    <Layer>
      <ows:Title>{escape(title)}</ows:Title>
      <ows:Identifier>{escape(identifier)}</ows:Identifier>
      <ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">
        <ows:LowerCorner>{west} {south}</ows:LowerCorner>
        <ows:UpperCorner>{east} {north}</ows:UpperCorner>
      </ows:WGS84BoundingBox>
      <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
      <Format>image/{image_format}</Format>
      <TileMatrixSetLink><TileMatrixSet>{escape(tms_id)}</TileMatrixSet></TileMatrixSetLink>
      <ResourceURL format="image/{image_format}" resourceType="tile"
        template="{escape(with_query(template, query), {'"': "&quot;"})}"/>
    </Layer>"""
        )
    crs_urn = f"urn:ogc:def:crs:EPSG::{tms.crs.to_epsg()}"
    matrices = []
    for matrix in tms.tileMatrices:
        origin_x, origin_y = matrix.pointOfOrigin
        matrices.append(
            f"""      <TileMatrix>
        <ows:Identifier>{matrix.id}</ows:Identifier>
        <ScaleDenominator>{matrix.scaleDenominator}</ScaleDenominator>
        <TopLeftCorner>{origin_x} {origin_y}</TopLeftCorner>
        <TileWidth>{matrix.tileWidth}</TileWidth>
        <TileHeight>{matrix.tileHeight}</TileHeight>
        <MatrixWidth>{matrix.matrixWidth}</MatrixWidth>
        <MatrixHeight>{matrix.matrixHeight}</MatrixHeight>
      </TileMatrix>"""
        )
    newline = "\n"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
  xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">
  <ows:ServiceIdentification>
    <ows:Title>GeoZarr pipeline local raster API</ows:Title>
    <ows:ServiceType>OGC WMTS</ows:ServiceType>
    <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
  </ows:ServiceIdentification>
  <Contents>
{newline.join(layer_xml)}
    <TileMatrixSet>
      <ows:Identifier>{escape(tms_id)}</ows:Identifier>
      <ows:SupportedCRS>{crs_urn}</ows:SupportedCRS>
{newline.join(matrices)}
    </TileMatrixSet>
  </Contents>
  <ServiceMetadataURL xlink:href="{escape(tiles_root)}/{escape(tms_id)}/WMTSCapabilities.xml"/>
</Capabilities>
"""


def viewer_html(config: dict[str, Any]) -> str:
    """The viewer page: the template with the item's configuration embedded as JSON."""
    template = Template(resources.files(STATIC_PACKAGE).joinpath("viewer.html").read_text())
    payload = json.dumps(config).replace("</", "<\\/")
    return template.substitute(title=escape(str(config["item_id"])), config=payload)


def create_app(settings: Settings, catalog: Catalog | None = None) -> FastAPI:
    """The raster API for the catalog that `settings` selects (or the one passed in)."""
    resolver = ItemResolver(
        settings=settings,
        catalog=catalog if catalog is not None else open_catalog(settings),
        opener=StoreOpener(settings),
    )

    def item_source(
        collection_id: Annotated[str, PathParam(description="Collection id")],
        item_id: Annotated[str, PathParam(description="Item id")],
    ) -> ItemSource:
        return resolver.source(collection_id, item_id)

    app = FastAPI(title="GeoZarr pipeline raster API (local)", openapi_url="/api")
    factory = ItemTilerFactory(
        reader=GeoZarrReader,
        path_dependency=item_source,
        reader_dependency=VariablesParams,
        layer_dependency=BidxParams,
        dataset_dependency=DatasetParams,
        tile_dependency=DefaultDependency,
        img_preview_dependency=PreviewParams,
        img_part_dependency=PartFeatureParams,
        router_prefix=ITEM_PREFIX,
        add_viewer=False,
        add_part=False,
    )
    app.include_router(factory.router, prefix=ITEM_PREFIX, tags=["Items"])

    @app.get(
        f"{ITEM_PREFIX}/{{tileMatrixSetId}}/tilejson.json",
        response_model=TileJSON,
        response_model_exclude_none=True,
    )
    def tilejson(
        request: Request,
        collection_id: str,
        item_id: str,
        tileMatrixSetId: str,  # noqa: N803 - TiTiler's path parameter name
        tile_format: Annotated[ImageType | None, Query()] = None,
        minzoom: Annotated[int | None, Query()] = None,
        maxzoom: Annotated[int | None, Query()] = None,
        source: ItemSource = Depends(item_source),  # noqa: B008
        reader_params: VariablesParams = Depends(VariablesParams),  # noqa: B008
    ) -> dict[str, Any]:
        tms = tile_matrix_set(tileMatrixSetId)
        query = _query_without(request, {"tile_format", "minzoom", "maxzoom"})
        extension = tile_format.value if tile_format else "png"
        root = _item_root(request, collection_id, item_id)
        tiles = with_query(f"{root}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}.{extension}", query)
        with GeoZarrReader(source, tms=tms, **reader_params.as_dict()) as src:
            bounds = list(src.get_geographic_bounds(tms.rasterio_geographic_crs))
            low = minzoom if minzoom is not None else src.minzoom
            high = maxzoom if maxzoom is not None else src.maxzoom
        return {
            "tilejson": "3.0.0",
            "name": item_id,
            "scheme": "xyz",
            "tiles": [tiles],
            "bounds": bounds,
            "center": ((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, low),
            "minzoom": low,
            "maxzoom": high,
        }

    @app.get(f"{ITEM_PREFIX}/{{tileMatrixSetId}}/WMTSCapabilities.xml")
    def wmts(
        request: Request,
        collection_id: str,
        item_id: str,
        tileMatrixSetId: str,  # noqa: N803
        tile_format: Annotated[ImageType | None, Query()] = None,
    ) -> Response:
        tms = tile_matrix_set(tileMatrixSetId)
        item = resolver.item(collection_id, item_id)
        query = _query_without(request, {"tile_format"})
        bbox = horizontal_bbox(item.get("bbox"))
        body = wmts_capabilities(
            tms,
            _item_root(request, collection_id, item_id),
            bbox,
            _wmts_layers(item, query),
            tile_format.value if tile_format else "png",
        )
        return Response(body, media_type="application/xml")

    @app.get(f"{ITEM_PREFIX}/viewer", response_class=HTMLResponse)
    def viewer(request: Request, collection_id: str, item_id: str) -> HTMLResponse:
        item = resolver.item(collection_id, item_id)
        query = _link_query(item, "tilejson")
        if query is None:
            query = default_rendering(item).query()
        root = _item_root(request, collection_id, item_id)
        config = {
            "item_id": item_id,
            "collection": collection_id,
            "geometry": item.get("geometry"),
            "bbox": item.get("bbox"),
            "tilejson_url": with_query(f"{root}/{DEFAULT_TMS}/tilejson.json", query),
            "static_url": f"{_base_url(request)}/static",
        }
        return HTMLResponse(viewer_html(config))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    static_dir = Path(str(resources.files(STATIC_PACKAGE).joinpath("static")))
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.exception_handler(PipelineError)
    def pipeline_error(request: Request, exc: PipelineError) -> JSONResponse:
        status = 404 if isinstance(exc, SourceNotFound) else status_code_for(exc)
        return JSONResponse(exc.to_body(), status_code=status)

    add_exception_handlers(app, DEFAULT_STATUS_CODES)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"])
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geozarr_local.raster",
        description="Local raster API (tiles, TileJSON, WMTS, preview, viewer) for catalog items.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--catalog-backend", choices=["static", "stac-api"], default=None)
    parser.add_argument("--catalog-root", type=Path, default=None)
    parser.add_argument("--stac-api-url", default=None)
    parser.add_argument("--log-level", default="warning")


def serve(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("catalog_backend", args.catalog_backend),
            ("catalog_root", args.catalog_root),
            ("stac_api_url", args.stac_api_url),
        )
        if value is not None
    }
    settings = Settings().model_copy(update=overrides)
    app = create_app(settings)
    log.info("raster API listening", extra={"host": args.host, "port": args.port})
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from geozarr_pipeline.logs import configure_logging

    configure_logging()
    return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
