"""Zoom sweep of the local raster API on a full-size synthetic L2A product.

    uv run python benchmarks/raster/run.py --scale 1.0 --out data/bench/raster \
        [--reuse] [--json benchmarks/raster/results.json]

Synthesizes the sample at `--scale` (1.0 = a full 10980 x 10980 tile) and converts it with
eopf-geozarr at the stage's defaults (spatial chunk 1024, unsharded); `--reuse` takes the
product and store a previous run left under `--out`.
The item gets its links from `add_visualisation` (the titiler-eopf contract: variables on
the multiscale group), and the app runs in-process (Starlette TestClient, no network).

For every zoom from the TileJSON's minzoom to its maxzoom, up to `--tiles` tiles inside the
footprint (the tile holding the footprint centre where no tile fits inside) are requested
once in a fresh app (cold: nothing opened yet at that zoom's level) and then `--rounds`
more times (warm). Recorded per zoom: median and p95 latency cold and warm, the level read
(`X-GeoZarr-Levels`), source pixels inside the tile per returned pixel (`X-GeoZarr-Pixels-Read`
over tile pixels x bands) and the same for the pixels of the chunks decoded
(`X-GeoZarr-Chunk-Pixels-Read`). Also the TileJSON and the thumbnail (preview PNG).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import morecantile
from fastapi.testclient import TestClient

from geozarr_local.raster import CHUNK_PIXELS_HEADER, LEVELS_HEADER, PIXELS_HEADER, create_app
from geozarr_local.sample.build import write_sample
from geozarr_pipeline.config import Settings
from geozarr_pipeline.visual import RasterApi, add_visualisation

TILE_PIXELS = 256 * 256
TMS = morecantile.tms.get("WebMercatorQuad")


class OneItem:
    """The smallest catalog: one item, read-only."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item

    def get_item(self, collection_id: str, item_id: str) -> dict[str, Any]:
        return self.item


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def inside(ring: list[list[float]], lon: float, lat: float) -> bool:
    """Point in polygon (even-odd rule) for one ring of lon/lat."""
    found = False
    for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1], strict=True):
        if (y0 > lat) != (y1 > lat) and lon < x0 + (lat - y0) * (x1 - x0) / (y1 - y0):
            found = not found
    return found


def tiles_inside(ring: list[list[float]], zoom: int, limit: int) -> list[morecantile.Tile]:
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    candidates = list(TMS.tiles(min(lons), min(lats), max(lons), max(lats), [zoom]))
    within = []
    for tile in candidates:
        b = TMS.bounds(tile)
        corners = [(b.left, b.bottom), (b.left, b.top), (b.right, b.bottom), (b.right, b.top)]
        if all(inside(ring, x, y) for x, y in corners):
            within.append(tile)
    if not within:
        within = [TMS.tile(sum(lons) / len(lons), sum(lats) / len(lats), zoom)]
    random.Random(zoom).shuffle(within)  # noqa: S311 - a repeatable sample, not a secret
    return within[:limit]


def tile_url(template: str, tile: morecantile.Tile) -> str:
    return (
        template.replace("{z}", str(tile.z)).replace("{x}", str(tile.x)).replace("{y}", str(tile.y))
    )


def request(client: TestClient, url: str) -> tuple[float, Any]:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response


def build_store(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from geozarr_pipeline.config import Settings
    from geozarr_pipeline.convert import engine
    from geozarr_pipeline.events import ConversionOptions

    stores = sorted((args.out / "geozarr").glob("*/*.zarr"))
    items = sorted((args.out / "sample").glob("items/*/*.json"))
    if args.reuse and stores and items:
        print(f"reusing {stores[0]}", flush=True)
        return stores[0], json.loads(items[0].read_text())
    started = time.perf_counter()
    sample = write_sample(args.out / "sample", "l2a", scale=args.scale)
    print(f"synthesize scale {args.scale}: {time.perf_counter() - started:.1f} s", flush=True)
    source = json.loads(sample.item_path.read_text())
    store = args.out / "geozarr" / sample.collection / f"{sample.item_id}.zarr"
    if not store.exists():
        started = time.perf_counter()
        # The stage's conversion at its defaults (integer reflectance, 1024 in 4096 shards).
        settings = Settings()
        engine.convert(
            engine.open_source(str(sample.product_path), settings),
            str(store),
            engine.EffectiveOptions.resolve(ConversionOptions(), settings),
            settings,
        )
        print(f"convert: {time.perf_counter() - started:.1f} s", flush=True)
    return store, source


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    store, source = build_store(args)
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": source["id"],
        "collection": source.get("collection") or "sentinel-2-l2a",
        "geometry": source["geometry"],
        "bbox": source["bbox"],
        "properties": {"datetime": source["properties"]["datetime"]},
        "links": [],
        "assets": {
            "reflectance": {"href": f"{store}/measurements/reflectance"},
            "product": {"href": str(store)},
        },
    }
    item = add_visualisation(item, RasterApi("http://testserver"))
    links = {link["rel"]: link["href"] for link in item["links"]}
    ring = item["geometry"]["coordinates"][0][:-1]
    bands = len(parse_qs(urlsplit(links["xyz"]).query)["variables"])
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "zooms": []}

    client = TestClient(create_app(Settings(), catalog=OneItem(item)))
    first, tilejson_response = request(client, links["tilejson"])
    tilejson = tilejson_response.json()
    warm = [request(client, links["tilejson"])[0] for _ in range(args.rounds)]
    results["tilejson_ms"] = {"cold": round(first), "warm_median": round(statistics.median(warm))}
    minzoom, maxzoom = tilejson["minzoom"], tilejson["maxzoom"]
    for zoom in range(minzoom, maxzoom + 1):
        client = TestClient(create_app(Settings(), catalog=OneItem(item)))
        tiles = tiles_inside(ring, zoom, args.tiles)
        cold, warm, ratios, decoded, levels = [], [], [], [], set()
        for tile in tiles:
            elapsed, response = request(client, tile_url(links["xyz"], tile))
            cold.append(elapsed)
            levels.update(response.headers[LEVELS_HEADER].split(","))
            ratios.append(int(response.headers[PIXELS_HEADER]) / (TILE_PIXELS * bands))
            decoded.append(int(response.headers[CHUNK_PIXELS_HEADER]) / (TILE_PIXELS * bands))
        for _ in range(args.rounds):
            for tile in tiles:
                warm.append(request(client, tile_url(links["xyz"], tile))[0])
        row = {
            "zoom": zoom,
            "tiles": len(tiles),
            "levels": sorted(level.rsplit("/", 1)[1] for level in levels),
            "cold_median_ms": round(statistics.median(cold)),
            "cold_p95_ms": round(p95(cold)),
            "warm_median_ms": round(statistics.median(warm)),
            "warm_p95_ms": round(p95(warm)),
            "read_per_returned_max": round(max(ratios), 2),
            "read_per_returned_median": round(statistics.median(ratios), 2),
            "decoded_per_returned_max": round(max(decoded), 2),
            "decoded_per_returned_median": round(statistics.median(decoded), 2),
        }
        print(json.dumps(row), flush=True)
        results["zooms"].append(row)

    client = TestClient(create_app(Settings(), catalog=OneItem(item)))
    thumbnail = item["assets"]["thumbnail"]["href"]
    cold_ms, response = request(client, thumbnail)
    warm = [request(client, thumbnail)[0] for _ in range(args.rounds)]
    results["thumbnail"] = {
        "cold_ms": round(cold_ms),
        "warm_median_ms": round(statistics.median(warm)),
        "levels": response.headers[LEVELS_HEADER],
        "bytes": len(response.content),
    }
    results["load_after"] = os.getloadavg()[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("data/bench/raster"))
    parser.add_argument("--tiles", type=int, default=8, help="tiles per zoom")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds over those tiles")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the product and store already under --out"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    results = sweep(args)
    print(json.dumps({k: v for k, v in results.items() if k != "zooms"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
