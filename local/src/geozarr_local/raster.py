"""The local raster API: production's titiler-eopf URL contract, for the local catalog.

    python -m geozarr_local.raster --host 127.0.0.1 --port 8010

Serves, for every item of the configured catalog (Settings: GEOZARR_CATALOG_BACKEND,
GEOZARR_CATALOG_ROOT or GEOZARR_STAC_API_URL; GEOZARR_S3_* for s3:// stores), the routes of
`geozarr_pipeline.visual.titiler_eopf` (read from titiler-eopf, commit named there):

    /collections/{c}/items/{i}/tiles/{tms}/{z}/{x}/{y}[.{format}]   map tiles
    /collections/{c}/items/{i}/{tms}/tilejson.json                  TileJSON 3.0.0
    /collections/{c}/items/{i}/WMTSCapabilities.xml                 WMTS 1.0.0
    /collections/{c}/items/{i}/preview[.{format}]                   whole-item image (thumbnail)
    /collections/{c}/items/{i}/viewer                               Leaflet map of the item
    /healthz

Tiles and previews are TiTiler (titiler.core factory, titiler-xarray dependencies) over
`GeoZarrReader`; every image route needs `variables={group}:{var}` (repeated), as
titiler-eopf does, with `rescale`, `color_formula`, `bidx`, ... A variable of a multiscale
group is read at the level that fits each tile; each image response names the levels it
read (`X-GeoZarr-Levels`), the source pixels inside its bounds (`X-GeoZarr-Pixels-Read`) and
the pixels of the chunks those lie in, what it decodes (`X-GeoZarr-Chunk-Pixels-Read`).
Unlike titiler-eopf, `expression` is not supported here.
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
from rio_tiler.errors import MissingBands
from starlette.middleware.cors import CORSMiddleware
from titiler.core.dependencies import BidxParams, DefaultDependency
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import TilerFactory
from titiler.core.models.mapbox import TileJSON
from titiler.core.resources.enums import ImageType
from titiler.xarray.dependencies import DatasetParams, PartFeatureParams, PreviewParams

from geozarr_local.geozarr_reader import (
    CURRENT_READS,
    GeoZarrReader,
    ItemSource,
    ReadLog,
    StoreOpener,
    TtlCache,
)
from geozarr_pipeline.catalog import Catalog, open_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import PipelineError, SourceNotFound, status_code_for
from geozarr_pipeline.stac.hrefs import public_to_storage
from geozarr_pipeline.visual import titiler_eopf as contract
from geozarr_pipeline.visual.encoding import with_query
from geozarr_pipeline.visual.item import PRODUCT_KEY, default_rendering, storage_store, store_root
from geozarr_pipeline.visual.links import DEFAULT_TMS

log = logging.getLogger(__name__)

ITEM_PREFIX = contract.ITEM_PREFIX
# Query keys of the WMTS request that are not passed on to its tiles (as extensions.py).
WMTS_OWN_QUERY = {
    "tile_format",
    "use_epsg",
    "tilesize",
    "service",
    "request",
    "acceptversions",
    "sections",
    "updatesequence",
    "acceptformats",
}
# titiler-eopf lists every supported tile matrix set; these two are what web maps use.
WMTS_MATRIX_SETS = (contract.DEFAULT_TMS, "WorldCRS84Quad")
ITEM_CACHE_SECONDS = 5.0
LEVELS_HEADER = "X-GeoZarr-Levels"
PIXELS_HEADER = "X-GeoZarr-Pixels-Read"
CHUNK_PIXELS_HEADER = "X-GeoZarr-Chunk-Pixels-Read"
TILEJSON_DEFAULT_TILESIZE = 512
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


def horizontal_bbox(bbox: Any) -> list[float]:
    """West, south, east, north of a 2D or 3D STAC bbox; the Web Mercator world without one."""
    if isinstance(bbox, list) and len(bbox) == 6:
        return [bbox[0], bbox[1], bbox[3], bbox[4]]
    if isinstance(bbox, list) and len(bbox) == 4:
        return list(bbox)
    return [-180.0, -85.0511, 180.0, 85.0511]


@dataclass(frozen=True)
class WmtsLayer:
    """One layer of the capabilities document: a tile matrix set and the query of its tiles."""

    identifier: str
    title: str
    tms: morecantile.TileMatrixSet
    query: list[tuple[str, str]]


def wmts_capabilities(
    tiles_root: str,
    bbox: Sequence[float],
    layers: list[WmtsLayer],
    image_format: str,
) -> str:
    """A WMTS 1.0.0 GetCapabilities document with RESTful tile URL templates.

    As titiler-eopf's EOPFwmtsExtension (titiler/eopf/extensions.py): one layer per tile
    matrix set, named `{store}_{tms}_default`, its tiles carrying the request's query.
    """
    west, south, east, north = bbox
    layer_xml = []
    for layer in layers:
        tms_id = str(layer.tms.id)
        template = (
            f"{tiles_root}/tiles/{tms_id}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.{image_format}"
        )
        identifier, title, query = layer.identifier, layer.title, layer.query
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
    matrix_sets = {str(layer.tms.id): tile_matrix_set_xml(layer.tms) for layer in layers}
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
{newline.join(matrix_sets.values())}
  </Contents>
  <ServiceMetadataURL xlink:href="{escape(tiles_root)}/WMTSCapabilities.xml"/>
</Capabilities>
"""


def tile_matrix_set_xml(tms: morecantile.TileMatrixSet) -> str:
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
    return f"""    <TileMatrixSet>
      <ows:Identifier>{escape(str(tms.id))}</ows:Identifier>
      <ows:SupportedCRS>{crs_urn}</ows:SupportedCRS>
{newline.join(matrices)}
    </TileMatrixSet>"""


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
        if "tilesize" not in request.query_params:
            # As titiler-eopf's TileJSON (factory.py): tiles of 512 px unless the query says.
            query.append(("tilesize", str(TILEJSON_DEFAULT_TILESIZE)))
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

    @app.get(f"{ITEM_PREFIX}{contract.WMTS.template}")
    def wmts(
        request: Request,
        collection_id: str,
        item_id: str,
        tile_format: Annotated[ImageType | None, Query()] = None,
        reader_params: VariablesParams = Depends(VariablesParams),  # noqa: B008
    ) -> Response:
        if not reader_params.variables:
            raise MissingBands(
                "WMTSCapabilities.xml needs `variables` ({group}:{variable}, one per band)"
            )
        item = resolver.item(collection_id, item_id)
        query = _query_without(request, WMTS_OWN_QUERY)
        store = storage_store(item) or item_id
        layers = [
            WmtsLayer(
                identifier=contract.wmts_layer(store, tms_id),
                title=f"{item_id} ({tms_id})",
                tms=tile_matrix_set(tms_id),
                query=query,
            )
            for tms_id in WMTS_MATRIX_SETS
        ]
        body = wmts_capabilities(
            _item_root(request, collection_id, item_id),
            horizontal_bbox(item.get("bbox")),
            layers,
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

    @app.middleware("http")
    async def report_reads(request: Request, call_next: Any) -> Response:
        reads = ReadLog()
        token = CURRENT_READS.set(reads)
        try:
            response: Response = await call_next(request)
        finally:
            CURRENT_READS.reset(token)
        if reads.reads:
            response.headers[LEVELS_HEADER] = ",".join(reads.groups)
            response.headers[PIXELS_HEADER] = str(reads.pixels)
            response.headers[CHUNK_PIXELS_HEADER] = str(reads.chunk_pixels)
        return response

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
