"""Latency of the local raster API on a synthetic L2A product converted by eopf-geozarr.

    uv run python benchmarks/raster/run.py --scale 0.5 --out data/bench/raster

Synthesizes the sample at `--scale`, converts it (spatial_chunk 1024, unsharded), augments a
minimal item and times the app in-process (Starlette TestClient): TileJSON, one tile at the
footprint centre per zoom level, the thumbnail preview, and for comparison the same preview
read from the 10 m level alone (what it costs without the multiscale level choice).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import morecantile
import xarray
from eopf_geozarr.conversion import open_source_datatree
from eopf_geozarr.s2_optimization.s2_converter import convert_s2_optimized
from fastapi.testclient import TestClient
from rio_tiler.io.xarray import XarrayReader

from geozarr_pipeline.config import Settings
from geozarr_local.raster import create_app
from geozarr_local.sample.build import write_sample
from geozarr_pipeline.visual import RasterApi, add_visualisation


class OneItem:
    """The smallest catalog: one item, read-only."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item

    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any]:
        return self.item


def timed(client: TestClient, url: str, repeat: int) -> tuple[float, float]:
    """(median, first) latency in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return round(statistics.median(times)), round(times[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("data/bench/raster"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)

    started = time.perf_counter()
    sample = write_sample(args.out / "sample", "l2a", scale=args.scale)
    print(f"synthesize scale {args.scale}: {time.perf_counter() - started:.1f} s")
    store = args.out / "geozarr" / f"{sample.item_id}.zarr"
    started = time.perf_counter()
    convert_s2_optimized(
        open_source_datatree(str(sample.product_path)),
        output_path=str(store),
        spatial_chunk=1024,
        enable_sharding=False,
        compression_level=3,
        validate_output=False,
        keep_scale_offset=False,
    )
    print(f"convert: {time.perf_counter() - started:.1f} s")

    source = json.loads(sample.item_path.read_text())
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": sample.item_id,
        "collection": sample.collection,
        "geometry": source["geometry"],
        "bbox": source["bbox"],
        "properties": {},
        "links": [],
        "assets": {
            "reflectance": {"href": f"{store}/measurements/reflectance"},
            "product": {"href": str(store)},
        },
    }
    item = add_visualisation(item, RasterApi("http://testserver"))
    links = {link["rel"]: link["href"] for link in item["links"]}
    client = TestClient(create_app(Settings(), catalog=OneItem(item)))

    tilejson = client.get(links["tilejson"]).json()
    print(f"tilejson ms (median, first): {timed(client, links['tilejson'], args.repeat)}")
    ring = item["geometry"]["coordinates"][0][:-1]
    lon = sum(p[0] for p in ring) / len(ring)
    lat = sum(p[1] for p in ring) / len(ring)
    tms = morecantile.tms.get("WebMercatorQuad")
    for zoom in range(tilejson["minzoom"], tilejson["maxzoom"] + 1):
        tile = tms.tile(lon, lat, zoom)
        url = (
            links["xyz"]
            .replace("{z}", str(zoom))
            .replace("{x}", str(tile.x))
            .replace("{y}", str(tile.y))
        )
        print(f"tile z{zoom} ms (median, first): {timed(client, url, args.repeat)}")
    preview = item["assets"]["thumbnail"]["href"]
    print(f"preview ms (median, first): {timed(client, preview, 3)}")

    started = time.perf_counter()
    level = xarray.open_dataset(
        str(store), group="measurements/reflectance/r10m", engine="zarr", decode_coords="all"
    )
    for band in ("b04", "b03", "b02"):
        with XarrayReader(level[band]) as reader:
            reader.preview(max_size=1024)
    print(f"preview from the 10 m level only ms: {round((time.perf_counter() - started) * 1000)}")


if __name__ == "__main__":
    main()
