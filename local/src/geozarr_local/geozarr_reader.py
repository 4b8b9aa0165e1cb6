"""A rio-tiler reader for the GeoZarr stores that eopf-geozarr writes.

A rendering names its bands as `{group}:{variable}` (e.g. `/measurements/reflectance/r10m:b04`).
When the group is one level of a multiscale group (the parent's `multiscales.layout`), each
read picks the coarsest level that is still at least as fine as the output needs, so a
low-zoom tile or a preview never reads the 10 m arrays. Each band is read with rio-tiler's
XarrayReader (reprojection to the tile matrix set included) and the bands are stacked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import attr
import obstore
import xarray
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS  # type: ignore[import-untyped]
from rasterio.warp import transform_bounds  # type: ignore[import-untyped]
from rio_tiler.constants import WEB_MERCATOR_TMS
from rio_tiler.errors import InvalidBandName, MissingBands, TileOutsideBounds
from rio_tiler.io.base import BaseReader
from rio_tiler.io.xarray import XarrayReader
from rio_tiler.models import BandStatistics, ImageData, Info, PointData
from rio_tiler.types import BBox
from zarr.storage import ObjectStore

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import SourceNotFound

CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class VariableRef:
    """One output band: a variable of a group of the store."""

    group: str
    variable: str

    @classmethod
    def parse(cls, spec: str) -> VariableRef:
        group, sep, variable = spec.rpartition(":")
        if not sep or not variable:
            raise InvalidBandName(
                f"variable {spec!r} is not of the form '{{group}}:{{variable}}', "
                "e.g. /measurements/reflectance/r10m:b04"
            )
        return cls(group="/" + group.strip("/"), variable=variable)

    @property
    def spec(self) -> str:
        return f"{self.group}:{self.variable}"


def _parent(group: str) -> tuple[str, str]:
    parent, _, name = group.rstrip("/").rpartition("/")
    return (parent or "/"), name


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
    default_variables: tuple[str, ...] = ()


def _resolution(da: xarray.DataArray) -> float:
    xres, yres = da.rio.resolution()
    return min(abs(float(xres)), abs(float(yres)))


@attr.s
class GeoZarrReader(BaseReader):
    """Read `variables` of an item's GeoZarr store as one multi-band image."""

    input: ItemSource = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    variables: list[str] | None = attr.ib(default=None)

    _refs: list[VariableRef] = attr.ib(init=False, factory=list)
    _finest: xarray.DataArray = attr.ib(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        specs = list(self.variables or self.input.default_variables)
        if not specs:
            raise MissingBands("no `variables` given and the item has no default rendering")
        self._refs = [VariableRef.parse(spec) for spec in specs]
        first = self._refs[0]
        self._finest = self._array(first.group, first.variable)
        self.bounds = tuple(self._finest.rio.bounds())
        self.crs = self._finest.rio.crs
        self.transform = self._finest.rio.transform()
        self.height = self._finest.rio.height
        self.width = self._finest.rio.width

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

    def levels(self, ref: VariableRef) -> list[tuple[float, str]]:
        """(resolution, group) of every level that can stand in for `ref`, finest first."""
        parent, name = _parent(ref.group)
        layout = (
            self.input.opener.group_attrs(self.input.store_url, parent)
            .get("multiscales", {})
            .get("layout", [])
        )
        names = [str(level.get("asset")) for level in layout if isinstance(level, dict)]
        requested = _resolution(self._array(ref.group, ref.variable))
        found = [(requested, ref.group)]
        if name in names:
            for other in names:
                group = f"{parent.rstrip('/')}/{other}"
                if group == ref.group:
                    continue
                ds = self.input.opener.dataset(self.input.store_url, group)
                if ref.variable not in ds.data_vars:
                    continue
                resolution = _resolution(ds[ref.variable])
                if resolution >= requested:
                    found.append((resolution, group))
        return sorted(found)

    def _pick(self, ref: VariableRef, target_resolution: float) -> xarray.DataArray:
        """The coarsest level whose pixels are no larger than the output's."""
        levels = self.levels(ref)
        chosen = levels[0][1]
        for resolution, group in levels:
            if resolution <= target_resolution * 1.01:
                chosen = group
        return self._array(chosen, ref.variable)

    def _read(
        self, target_resolution: float, read: Callable[[XarrayReader], ImageData]
    ) -> ImageData:
        images = []
        for ref in self._refs:
            with XarrayReader(self._pick(ref, target_resolution), tms=self.tms) as src:
                image = read(src)
            image.band_names = [ref.spec]
            image.band_descriptions = [ref.variable]
            images.append(image)
        stacked = images[0] if len(images) == 1 else ImageData.create_from_list(images)
        stacked.band_names = [ref.spec for ref in self._refs]
        return stacked

    def _target_for_bounds(self, bounds: BBox, crs: CRS, pixels: int) -> float:
        """Size in dataset units of one output pixel over `bounds`."""
        minx, miny, maxx, maxy = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        return float(max(maxx - minx, maxy - miny)) / max(pixels, 1)

    # Zoom range over all levels ---------------------------------------------------------

    @property
    def minzoom(self) -> int:
        coarsest = self._array(*reversed(self._coarsest_level()))
        with XarrayReader(coarsest, tms=self.tms) as src:
            return int(src.minzoom)

    @property
    def maxzoom(self) -> int:
        with XarrayReader(self._finest, tms=self.tms) as src:
            return int(src.maxzoom)

    def _coarsest_level(self) -> tuple[str, str]:
        ref = self._refs[0]
        return ref.variable, self.levels(ref)[-1][1]

    # rio-tiler reader API ---------------------------------------------------------------

    def info(self) -> Info:
        with XarrayReader(self._finest, tms=self.tms) as src:
            info: Info = src.info()
        info.band_descriptions = [(f"b{i}", ref.spec) for i, ref in enumerate(self._refs, 1)]
        return info

    def statistics(self, **kwargs: Any) -> dict[str, BandStatistics]:
        image = self.preview(max_size=1024)
        stats = image.statistics(**{k: v for k, v in kwargs.items() if v is not None})
        return dict(zip([ref.spec for ref in self._refs], stats.values(), strict=True))

    def tile(
        self, tile_x: int, tile_y: int, tile_z: int, tilesize: int | None = None, **kwargs: Any
    ) -> ImageData:
        if not self.tile_exists(tile_x, tile_y, tile_z):
            raise TileOutsideBounds(f"Tile(x={tile_x}, y={tile_y}, z={tile_z}) is outside bounds")
        matrix = self.tms.matrix(tile_z)
        pixels = tilesize or matrix.tileWidth
        bounds = self.tms.xy_bounds(Tile(x=tile_x, y=tile_y, z=tile_z))
        box = (bounds.left, bounds.bottom, bounds.right, bounds.top)
        target = self._target_for_bounds(box, self.tms.rasterio_crs, pixels)
        return self._read(
            target, lambda src: src.tile(tile_x, tile_y, tile_z, tilesize=tilesize, **kwargs)
        )

    def preview(self, max_size: int | None = 1024, **kwargs: Any) -> ImageData:
        size = max_size or max(kwargs.get("width") or 0, kwargs.get("height") or 0) or 1024
        target = max(self.bounds[2] - self.bounds[0], self.bounds[3] - self.bounds[1]) / size
        options: dict[str, Any] = {"max_size": max_size, **kwargs}
        return self._read(target, lambda src: src.preview(**options))

    def part(self, bbox: BBox, **kwargs: Any) -> ImageData:
        crs = kwargs.get("bounds_crs") or CRS.from_epsg(4326)
        pixels = kwargs.get("max_size") or kwargs.get("width") or kwargs.get("height") or 1024
        target = self._target_for_bounds(bbox, crs, pixels)
        return self._read(target, lambda src: src.part(bbox, **kwargs))

    def feature(self, shape: dict[str, Any], **kwargs: Any) -> ImageData:
        pixels = kwargs.get("max_size") or kwargs.get("width") or kwargs.get("height") or 1024
        extent = max(self.width or 1, self.height or 1)
        target = _resolution(self._finest) * extent / pixels
        return self._read(target, lambda src: src.feature(shape, **kwargs))

    def point(self, lon: float, lat: float, **kwargs: Any) -> PointData:
        points = []
        for ref in self._refs:
            with XarrayReader(self._array(ref.group, ref.variable), tms=self.tms) as src:
                points.append(src.point(lon, lat, **kwargs))
        return PointData.create_from_list(points)
