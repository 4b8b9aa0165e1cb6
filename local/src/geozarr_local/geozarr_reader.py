"""A rio-tiler reader for the GeoZarr stores that eopf-geozarr writes.

A rendering names its bands as `{group}:{variable}` (e.g. `/measurements/reflectance:b04`),
the raster-API contract of `geozarr_pipeline.visual.titiler_eopf`. When the group carries a
`multiscales` layout, each read takes the level titiler-eopf would take for the output's
resolution (`multiscale_level`), so a low-zoom tile or a preview never reads the 10 m arrays;
a variable of a level group (`.../reflectance/r10m:b04`) is read from that level alone, as in
production. Each band is read with rio-tiler's GeoArrayReader (as titiler-eopf does: a window
of the array, then the warp to the tile matrix set) and the bands are stacked. The reads of
a request (level, window and chunk pixels) are collected in `CURRENT_READS` when the server
sets one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import attr
import obstore
import xarray
from affine import Affine
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS  # type: ignore[import-untyped]
from rasterio.transform import from_bounds  # type: ignore[import-untyped]
from rasterio.warp import (  # type: ignore[import-untyped]
    calculate_default_transform,
    transform_bounds,
)
from rasterio.windows import from_bounds as window_from_bounds  # type: ignore[import-untyped]
from rio_tiler.constants import WEB_MERCATOR_TMS
from rio_tiler.errors import InvalidBandName, MissingBands, TileOutsideBounds
from rio_tiler.experimental.xarray import GeoArrayReader
from rio_tiler.io.base import BaseReader
from rio_tiler.io.xarray import XarrayReader
from rio_tiler.models import BandStatistics, ImageData, Info, PointData
from rio_tiler.types import BBox
from zarr.storage import ObjectStore

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import SourceNotFound
from geozarr_pipeline.visual.titiler_eopf import multiscale_level, split_variable

CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class VariableRef:
    """One output band: a variable of a group of the store."""

    group: str
    variable: str

    @classmethod
    def parse(cls, spec: str) -> VariableRef:
        try:
            group, variable = split_variable(spec)
        except ValueError as exc:
            raise InvalidBandName(f"{exc}, e.g. /measurements/reflectance:b04") from exc
        return cls(group=group, variable=variable)

    @property
    def spec(self) -> str:
        return f"{self.group}:{self.variable}"


class TtlCache[K, V]:
    """Values kept for `seconds` after they were loaded; expired entries are dropped on insert,
    so a long-running server holds only what was used recently."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
            if cached and now - cached[0] < self.seconds:
                return cached[1]
        value = load()
        with self._lock:
            self._entries = {
                k: entry for k, entry in self._entries.items() if now - entry[0] < self.seconds
            }
            self._entries[key] = (now, value)
        return value


@dataclass
class StoreOpener:
    """Opens groups of GeoZarr stores (local, s3:// against any endpoint, http[s]://).

    Datasets are cached for a minute: a tile burst opens each level once. For s3:// the
    store is built here with the configured endpoint and credentials, so titiler-xarray's
    `_find_bucket_region` (a call to AWS's public endpoint) is never involved.
    """

    settings: Settings
    _cache: TtlCache[tuple[str, str], xarray.Dataset] = field(
        default_factory=lambda: TtlCache(CACHE_SECONDS)
    )

    def _store(self, url: str) -> Any:
        parsed = urlparse(url)
        if parsed.scheme == "s3":
            settings = self.settings
            options: dict[str, Any] = {
                "region": settings.s3_region or "us-east-1",
                "virtual_hosted_style_request": False,
            }
            if settings.s3_endpoint_url:
                options["endpoint"] = settings.s3_endpoint_url
                options["client_options"] = {"allow_http": True}
            if settings.s3_access_key_id and settings.s3_secret_access_key:
                options["access_key_id"] = settings.s3_access_key_id
                options["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
            else:
                options["skip_signature"] = True
            s3 = obstore.store.S3Store(parsed.netloc, prefix=parsed.path.strip("/"), **options)
            return ObjectStore(store=s3, read_only=True)
        if parsed.scheme in ("http", "https"):
            http = obstore.store.HTTPStore.from_url(url, client_options={"allow_http": True})
            return ObjectStore(store=http, read_only=True)
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        if not path.is_dir():
            raise SourceNotFound(f"no store at {url}")
        local = obstore.store.LocalStore(str(path.resolve()))
        return ObjectStore(store=local, read_only=True)

    def _open(self, store_url: str, group: str) -> xarray.Dataset:
        try:
            return xarray.open_dataset(
                self._store(store_url),
                group=group.strip("/") or None,
                engine="zarr",
                decode_coords="all",
                consolidated=False,
            )
        except FileNotFoundError as exc:  # zarr's GroupNotFoundError among them
            raise SourceNotFound(f"no group {group!r} in the store {store_url}") from exc

    def dataset(self, store_url: str, group: str) -> xarray.Dataset:
        return self._cache.get((store_url, group), lambda: self._open(store_url, group))

    def group_attrs(self, store_url: str, group: str) -> dict[str, Any]:
        return dict(self.dataset(store_url, group).attrs)


@dataclass(frozen=True)
class ItemSource:
    """What the reader reads: the item's store, how to open it, and the item itself."""

    item: dict[str, Any]
    store_url: str
    opener: StoreOpener


@dataclass(frozen=True)
class LevelRead:
    """One band read from one group: what a response reports in its headers."""

    group: str
    variable: str
    pixels: int  # of the level inside the output's bounds
    chunk_pixels: int  # of the chunks holding those: what the read decodes


class ReadLog:
    """The reads of one request, collected by the reader and reported by the server."""

    def __init__(self) -> None:
        self.reads: list[LevelRead] = []
        self._lock = threading.Lock()

    def add(self, read: LevelRead) -> None:
        with self._lock:
            self.reads.append(read)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(read.group for read in self.reads))

    @property
    def pixels(self) -> int:
        return sum(read.pixels for read in self.reads)

    @property
    def chunk_pixels(self) -> int:
        return sum(read.chunk_pixels for read in self.reads)


CURRENT_READS: ContextVar[ReadLog | None] = ContextVar("geozarr_reads", default=None)


@dataclass(frozen=True)
class Band:
    """A requested variable and, when its group is multiscale, the group's whole layout."""

    ref: VariableRef
    layout: tuple[Mapping[str, Any], ...] = ()
    default_asset: str | None = None

    @property
    def default_group(self) -> str:
        """The group read when the output size is unknown: the first level holding it."""
        if self.default_asset is None:
            return self.ref.group
        return self.level_group(self.default_asset)

    def level_group(self, asset: str) -> str:
        return f"{self.ref.group.rstrip('/')}/{asset}"

    def group_for(self, target_resolution: float | None) -> str:
        """titiler-eopf's choice (`titiler_eopf.multiscale_level`) for an output resolution.

        As upstream, the choice is made over the whole layout, whether or not the chosen level
        holds the variable (the read then names the missing variable).
        """
        if not self.layout or target_resolution is None:
            return self.default_group
        return self.level_group(multiscale_level(self.layout, target_resolution))


@attr.s
class GeoZarrReader(BaseReader):
    """Read `variables` of an item's GeoZarr store as one multi-band image.

    As titiler-eopf's reader (`geozarr_pipeline.visual.titiler_eopf`): a variable of a
    multiscale group is read at the level that fits each output, a variable of any other
    group from that group alone.
    """

    input: ItemSource = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    variables: list[str] | None = attr.ib(default=None)

    _bands: list[Band] = attr.ib(init=False, factory=list)
    _finest: xarray.DataArray = attr.ib(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        specs = list(self.variables or ())
        if not specs:
            raise MissingBands(
                "`variables` is required: {group}:{variable}, once per band "
                "(`expression` is not supported by the local raster server)"
            )
        self._bands = [self._band(VariableRef.parse(spec)) for spec in specs]
        first = self._bands[0]
        self._finest = self._array(first.default_group, first.ref.variable)
        finest = self._level_reader(first.default_group, first.ref.variable)
        west, south, east, north = finest.bounds
        self.bounds = (west, south, east, north)
        self.crs = finest.crs
        self.transform = finest.transform
        self.height = finest.height
        self.width = finest.width

    # Levels ---------------------------------------------------------------------------

    def _array(self, group: str, variable: str) -> xarray.DataArray:
        ds = self.input.opener.dataset(self.input.store_url, group)
        if variable not in ds.data_vars:
            raise InvalidBandName(f"variable {variable!r} not found in group {group!r}")
        da = ds[variable]
        if da.rio.crs is None:
            code = ds.attrs.get("proj:code") or da.attrs.get("proj:code")
            if code:
                da = da.rio.write_crs(code)
        return da

    def _level_reader(self, group: str, variable: str) -> GeoArrayReader:
        """rio-tiler's reader of Zarr-convention arrays (the one titiler-eopf reads with),
        georeferenced from the group's `spatial:transform` and `proj:code`."""
        array = self._array(group, variable)
        attrs = self.input.opener.group_attrs(self.input.store_url, group)
        transform = attrs.get("spatial:transform")
        return GeoArrayReader(
            array,
            transform=Affine(*transform[:6]) if transform else array.rio.transform(),
            crs=CRS.from_user_input(attrs["proj:code"]) if "proj:code" in attrs else array.rio.crs,
            tms=self.tms,
        )

    def _band(self, ref: VariableRef) -> Band:
        attrs = self.input.opener.group_attrs(self.input.store_url, ref.group)
        layout = tuple((attrs.get("multiscales") or {}).get("layout") or [])
        if not layout:
            return Band(ref)
        for entry in layout:
            group = f"{ref.group.rstrip('/')}/{entry.get('asset')}"
            if ref.variable in self.input.opener.dataset(self.input.store_url, group).data_vars:
                return Band(ref, layout, str(entry.get("asset")))
        raise InvalidBandName(
            f"variable {ref.variable!r} is in no level of the multiscale group {ref.group!r}"
        )

    def _read(
        self,
        target_resolution: float | None,
        window_bounds: tuple[BBox, CRS] | None,
        read: Callable[[GeoArrayReader], ImageData],
    ) -> ImageData:
        images = []
        log = CURRENT_READS.get()
        for band in self._bands:
            group = band.group_for(target_resolution)
            with self._level_reader(group, band.ref.variable) as src:
                if log is not None:
                    log.add(level_read(group, band.ref.variable, src, window_bounds))
                image = read(src)
            image.band_names = [band.ref.spec]
            image.band_descriptions = [band.ref.variable]
            images.append(image)
        stacked = images[0] if len(images) == 1 else ImageData.create_from_list(images)
        stacked.band_names = [band.ref.spec for band in self._bands]
        return stacked

    def _target_for_output(self, bounds: BBox, crs: CRS, width: int, height: int) -> float:
        """Size in dataset units of one output pixel over `bounds` (in `crs`).

        As `calculate_output_transform` of titiler/eopf/reader.py (commit in
        `titiler_eopf.UPSTREAM_COMMIT`): the output grid's transform in the dataset CRS.
        """
        if crs == self.crs:
            return float(from_bounds(*bounds, width=width, height=height).a)
        transform, _, _ = calculate_default_transform(crs, self.crs, width, height, *bounds)
        return float(transform.a)

    # Zoom range over all levels ---------------------------------------------------------

    @property
    def minzoom(self) -> int:
        band = self._bands[0]
        coarsest = self._array(band.group_for(math.inf), band.ref.variable)
        with XarrayReader(coarsest, tms=self.tms) as src:
            return int(src.minzoom)

    @property
    def maxzoom(self) -> int:
        with XarrayReader(self._finest, tms=self.tms) as src:
            return int(src.maxzoom)

    # rio-tiler reader API ---------------------------------------------------------------

    def info(self) -> Info:
        with XarrayReader(self._finest, tms=self.tms) as src:
            info: Info = src.info()
        info.band_descriptions = [(f"b{i}", band.ref.spec) for i, band in enumerate(self._bands, 1)]
        return info

    def statistics(self, **kwargs: Any) -> dict[str, BandStatistics]:
        image = self.preview(max_size=1024)
        stats = image.statistics(**{k: v for k, v in kwargs.items() if v is not None})
        return dict(zip([band.ref.spec for band in self._bands], stats.values(), strict=True))

    def tile(
        self, tile_x: int, tile_y: int, tile_z: int, tilesize: int | None = None, **kwargs: Any
    ) -> ImageData:
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile(x={tile_x}, y={tile_y}, z={tile_z}) is outside bounds")
        bounds = self.tms.xy_bounds(Tile(x=tile_x, y=tile_y, z=tile_z))
        box = (bounds.left, bounds.bottom, bounds.right, bounds.top)
        crs = self.tms.rasterio_crs
        # Without a `tilesize` titiler-eopf sizes the output at native resolution, so the
        # finest level is read at every zoom (reader.py, get_target_resolution): so here.
        target = self._target_for_output(box, crs, tilesize, tilesize) if tilesize else None
        return self._read(
            target,
            (box, crs),
            lambda src: src.tile(tile_x, tile_y, tile_z, tilesize=tilesize, **kwargs),
        )

    def _output_size(
        self, max_size: int | None, width: int | None, height: int | None
    ) -> tuple[int, int]:
        """(width, height) of a whole-item image, as rio-tiler sizes it."""
        if width and height:
            return width, height
        ratio = (self.height or 1) / (self.width or 1)
        if width:
            return width, max(1, math.ceil(width * ratio))
        if height:
            return max(1, math.ceil(height / ratio)), height
        long_side = max_size or max(self.width or 1, self.height or 1)
        if ratio <= 1:
            return long_side, max(1, round(long_side * ratio))
        return max(1, round(long_side / ratio)), long_side

    def preview(self, max_size: int | None = 1024, **kwargs: Any) -> ImageData:
        width, height = self._output_size(max_size, kwargs.get("width"), kwargs.get("height"))
        west, south, east, north = self.bounds
        target = self._target_for_output((west, south, east, north), self.crs, width, height)
        options: dict[str, Any] = {"max_size": max_size, **kwargs}
        return self._read(target, None, lambda src: src.preview(**options))

    def part(self, bbox: BBox, **kwargs: Any) -> ImageData:
        raise NotImplementedError("the local raster server serves no /bbox route")

    def feature(self, shape: dict[str, Any], **kwargs: Any) -> ImageData:
        raise NotImplementedError("the local raster server serves no /feature route")

    def point(self, lon: float, lat: float, **kwargs: Any) -> PointData:
        points = []
        for band in self._bands:
            with self._level_reader(band.default_group, band.ref.variable) as src:
                points.append(src.point(lon, lat, **kwargs))
        return PointData.create_from_list(points)


def _window_within(
    src: GeoArrayReader, window_bounds: tuple[BBox, CRS] | None
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the level inside the bounds (all of it without bounds)."""
    rows, cols = int(src.height or 0), int(src.width or 0)
    if window_bounds is None:
        return 0, rows, 0, cols
    bounds, crs = window_bounds
    left, bottom, right, top = transform_bounds(crs, src.crs, *bounds, densify_pts=21)
    window = window_from_bounds(left, bottom, right, top, transform=src.transform)
    row_off, col_off = float(window.row_off), float(window.col_off)
    row0, col0 = max(0, math.floor(row_off)), max(0, math.floor(col_off))
    row1 = min(rows, math.ceil(row_off + float(window.height)))
    col1 = min(cols, math.ceil(col_off + float(window.width)))
    return row0, max(row0, row1), col0, max(col0, col1)


def level_read(
    group: str, variable: str, src: GeoArrayReader, window_bounds: tuple[BBox, CRS] | None
) -> LevelRead:
    """What one band read costs: its window, and the chunks that window decodes."""
    row0, row1, col0, col1 = _window_within(src, window_bounds)
    rows, cols = int(src.height or 0), int(src.width or 0)
    chunks = src.input.encoding.get("chunks") or (rows, cols)
    chunk_rows, chunk_cols = int(chunks[-2]) or 1, int(chunks[-1]) or 1
    if row1 > row0 and col1 > col0:
        first_row, last_row = row0 // chunk_rows * chunk_rows, -(-row1 // chunk_rows) * chunk_rows
        first_col, last_col = col0 // chunk_cols * chunk_cols, -(-col1 // chunk_cols) * chunk_cols
        decoded = (min(rows, last_row) - first_row) * (min(cols, last_col) - first_col)
    else:
        decoded = 0
    return LevelRead(group, variable, (row1 - row0) * (col1 - col0), decoded)
