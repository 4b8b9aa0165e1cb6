"""The raster server reading a GeoZarr store from an S3 API on loopback (moto server).

No AWS endpoint is reachable here: a read that went through titiler-xarray's bucket-region
lookup would fail, so a PNG with imagery shows the configured endpoint is used directly.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_pipeline.catalog import open_catalog
from geozarr_pipeline.config import Settings
from tests.fixtures.s3 import S3Server
from tests.fixtures.visual import MapSetup, read_png

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


def upload_tree(s3: S3Server, bucket: str, folder: Path, prefix: str) -> None:
    client = s3.client()
    for path in folder.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), bucket, key)


def on_s3(item: dict[str, Any], local_store: str, s3_store: str) -> dict[str, Any]:
    moved = copy.deepcopy(item)
    for asset in moved["assets"].values():
        if asset["href"].startswith(local_store):
            asset["href"] = s3_store + asset["href"][len(local_store) :]
    return moved


@pytest.fixture(scope="module")
def s3_raster(
    map_setup: MapSetup, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("raster-s3")
    bucket = s3_server.create_bucket()
    s3_store = f"s3://{bucket}/geozarr/{map_setup.store.name}"
    upload_tree(s3_server, bucket, map_setup.store, f"geozarr/{map_setup.store.name}")
    settings = Settings(catalog_backend="static", catalog_root=work / "catalog")
    item = on_s3(map_setup.item, str(map_setup.store), s3_store)
    open_catalog(settings).put_item(item, mode="replace")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    process = ManagedProcess(
        name="raster-s3",
        command=[sys.executable, "-m", "geozarr_local.raster", "--port", str(port)],
        log_path=work / "raster.log",
        env={
            "GEOZARR_CATALOG_BACKEND": "static",
            "GEOZARR_CATALOG_ROOT": str(settings.catalog_root),
            **s3_server.settings_env(),
        },
    )
    with process.start():
        process.wait_ready(http_ready(f"{url}/healthz"), timeout=60)
        yield url, item


def test_tile_from_s3_has_imagery(s3_raster: tuple[str, dict[str, Any]]) -> None:
    url, item = s3_raster
    assert item["assets"]["reflectance"]["href"].startswith("s3://")
    (xyz,) = [link["href"] for link in item["links"] if link["rel"] == "xyz"]
    path_and_query = xyz.split("/collections/", 1)[1]
    ring = item["geometry"]["coordinates"][0][:-1]
    lon = sum(p[0] for p in ring) / len(ring)
    lat = sum(p[1] for p in ring) / len(ring)
    tile = WEB_MERCATOR.tile(lon, lat, 10)
    tile_url = (
        f"{url}/collections/{path_and_query}".replace("{z}", str(tile.z))
        .replace("{x}", str(tile.x))
        .replace("{y}", str(tile.y))
    )
    response = httpx.get(tile_url, timeout=60)
    assert response.status_code == 200, response.text
    pixels = read_png(response.content)
    assert (pixels[3] > 0).mean() > 0.05
    assert pixels[:3][:, pixels[3] > 0].std() > 1.0
