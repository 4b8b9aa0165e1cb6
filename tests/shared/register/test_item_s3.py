"""Register reading a converted store from S3 (moto server): hrefs made public, s3 alternates."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from geozarr_pipeline.config import Settings
from geozarr_pipeline.output_store import output_for
from geozarr_pipeline.stac.validate import validation_errors
from geozarr_pipeline.stages.register import build_registered_item
from tests.fixtures.s3 import S3Server
from tests.fixtures.sample import LOCAL_SOURCES
from tests.fixtures.stac_api import ConvertedStore, completion_marker

PUBLIC = "https://data.example.org/geozarr"


def _upload(s3: S3Server, bucket: str, store: ConvertedStore, consolidated: bool) -> str:
    client = s3.client()
    prefix = f"geozarr/{store.collection}/{store.item_id}.zarr"
    for path in sorted(store.path.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(store.path).as_posix()
        body = path.read_bytes()
        if relative == "zarr.json" and not consolidated:
            root = json.loads(body)
            root.pop("consolidated_metadata", None)
            body = json.dumps(root).encode()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{relative}", Body=body)
    return f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize("consolidated", [True, False], ids=["consolidated", "walked"])
def test_store_on_s3(
    s3_server: S3Server, s3_bucket: str, converted_l2a: ConvertedStore, consolidated: bool
) -> None:
    url = _upload(s3_server, s3_bucket, converted_l2a, consolidated)
    settings = Settings(
        output_root=f"s3://{s3_bucket}/geozarr",
        public_base_url=PUBLIC,
        **LOCAL_SOURCES,
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=s3_server.region,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,  # type: ignore[arg-type]
    )
    event = converted_l2a.done().model_copy(update={"output_url": url})
    with output_for(settings, event.collection, event.item_id) as location:
        assert location.url == url
        location.write_marker(completion_marker(event))
    with httpx.Client(timeout=10) as client:
        item: dict[str, Any] = build_registered_item(
            event, settings, client, "http://catalog.invalid/collections/c"
        )
    assert validation_errors(item) == []
    assert (
        "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json"
        in item["stac_extensions"]
    )
    keys = set(s3_server.keys(s3_bucket))
    for name, asset in item["assets"].items():
        s3_href = asset["alternate"]["s3"]["href"]
        assert s3_href.startswith(url)
        assert asset["href"] == PUBLIC + s3_href[len(f"s3://{s3_bucket}/geozarr") :]
        key = s3_href[len(f"s3://{s3_bucket}/") :]
        assert f"{key}/zarr.json".lstrip("/") in keys, name
    assert len(item["assets"]["reflectance"]["bands"]) >= 10
