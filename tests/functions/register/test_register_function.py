"""The register function over real HTTP (functions-framework) against the real STAC API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_local.stack import function_command
from tests.fixtures.sample import LOCAL_SOURCES_ENV
from tests.fixtures.stac_api import ConvertedStore, FaultProxy, StacApiInfo, place_converted
from tests.functions.failures import problem_of


def _start(tmp: Path, env: dict[str, str]) -> ManagedProcess:
    port = free_port()
    process = ManagedProcess(
        name="register-function",
        command=function_command("geozarr_register.main", port),
        log_path=tmp / "register.log",
        env=env,
    ).start()
    process.wait_ready(http_ready(f"http://{LOOPBACK}:{port}/"), timeout=60)
    process.env = {**env, "URL": f"http://{LOOPBACK}:{port}/"}
    return process


@pytest.fixture(scope="module")
def proxy(stac_api: StacApiInfo) -> Iterator[FaultProxy]:
    fault = FaultProxy(stac_api.url)
    yield fault
    fault.close()


@pytest.fixture(scope="module")
def register_function(
    proxy: FaultProxy, converted_l2a: ConvertedStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("register-fn")
    process = _start(
        tmp,
        {
            "GEOZARR_CATALOG_BACKEND": "stac-api",
            "GEOZARR_STAC_API_URL": proxy.url,
            "GEOZARR_STAC_API_BACKOFF_SECONDS": "0.01",
            "GEOZARR_OUTPUT_ROOT": str(converted_l2a.root),
            "GEOZARR_REGISTER_MODE": "upsert",
            **LOCAL_SOURCES_ENV,
        },
    )
    try:
        yield process.env["URL"]
    finally:
        process.stop()


def _send(url: str, store: ConvertedStore, collection: str, event_id: str) -> httpx.Response:
    """Post the convert.done of `store` converted into `collection` (placed there first)."""
    data = place_converted(store, store.root, collection).model_dump(mode="json")
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "eopf.geozarr.convert.done",
        "ce-source": "urn:eopf-geozarr:convert",
        "ce-id": event_id,
        "ce-subject": store.item_id,
        "content-type": "application/json",
    }
    return httpx.post(url, headers=headers, content=json.dumps(data), timeout=60)


def test_convert_done_registers_and_redelivery_is_identical(
    register_function: str, converted_l2a: ConvertedStore, stac_api: StacApiInfo
) -> None:
    collection = f"fn-{uuid.uuid4().hex[:8]}"
    first = _send(register_function, converted_l2a, collection, "evt-1")
    assert first.status_code == 200, first.text
    assert first.headers["ce-type"] == "eopf.geozarr.register.done"
    assert first.headers["ce-subject"] == converted_l2a.item_id
    reply = first.json()
    assert reply["item_url"].endswith(f"/collections/{collection}/items/{converted_l2a.item_id}")
    stored = httpx.get(
        f"{stac_api.url}/collections/{collection}/items/{converted_l2a.item_id}"
    ).json()
    assert stored["assets"]["reflectance"]["type"].endswith("profile=multiscales")
    for asset in stored["assets"].values():
        assert (Path(asset["href"]) / "zarr.json").is_file()

    again = _send(register_function, converted_l2a, collection, "evt-1")
    assert again.status_code == 200
    assert again.headers["ce-id"] == first.headers["ce-id"]
    assert again.json() == reply
    stored_again = httpx.get(
        f"{stac_api.url}/collections/{collection}/items/{converted_l2a.item_id}"
    ).json()
    assert stored_again["assets"] == stored["assets"]
    assert stored_again["properties"] == stored["properties"]
    listed = httpx.get(f"{stac_api.url}/collections/{collection}/items").json()["features"]
    assert len(listed) == 1


def test_flaky_api_then_success(
    register_function: str, converted_l2a: ConvertedStore, proxy: FaultProxy
) -> None:
    proxy.failures = [("POST", 503), ("POST", 503)]
    response = _send(register_function, converted_l2a, f"fn-{uuid.uuid4().hex[:8]}", "evt-2")
    assert response.status_code == 200, response.text
    assert proxy.failures == []


def test_api_400_becomes_a_failure_reply(
    register_function: str, converted_l2a: ConvertedStore, proxy: FaultProxy
) -> None:
    collection = f"fn-{uuid.uuid4().hex[:8]}"
    proxy.failures = [("PUT", 400), ("POST", 400)]
    before = len(proxy.seen)
    response = _send(register_function, converted_l2a, collection, "evt-3")
    body = problem_of(response)
    assert body["error"] == "upstream_rejected"
    assert "injected 400" in body["message"]
    statuses = [s for _m, _p, s in proxy.seen[before:]]
    assert statuses.count(400) == 1, "a 400 is not retried"
    proxy.failures = []


def test_static_catalog_backend(
    converted_l2a: ConvertedStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("register-static")
    catalog_root = tmp / "catalog"
    process = _start(
        tmp,
        {
            "GEOZARR_CATALOG_BACKEND": "static",
            "GEOZARR_CATALOG_ROOT": str(catalog_root),
            "GEOZARR_OUTPUT_ROOT": str(converted_l2a.root),
            **LOCAL_SOURCES_ENV,
        },
    )
    try:
        first = _send(process.env["URL"], converted_l2a, converted_l2a.collection, "evt-s")
        again = _send(process.env["URL"], converted_l2a, converted_l2a.collection, "evt-s")
    finally:
        process.stop()
    assert first.status_code == 200, first.text
    assert again.json() == first.json()
    assert again.headers["ce-id"] == first.headers["ce-id"]
    item_path = (
        catalog_root
        / converted_l2a.collection
        / converted_l2a.item_id
        / f"{converted_l2a.item_id}.json"
    )
    assert first.json()["item_url"] == item_path.resolve().as_uri()
    item = json.loads(item_path.read_text())
    for asset in item["assets"].values():
        assert (Path(asset["href"]) / "zarr.json").is_file()
    assert (catalog_root / "catalog.json").is_file()
    assert (catalog_root / converted_l2a.collection / "collection.json").is_file()
