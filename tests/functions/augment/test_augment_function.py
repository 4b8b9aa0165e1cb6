"""The augment function over real HTTP (functions-framework) on an on-disk static catalog."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_local.stack import function_command
from geozarr_pipeline.catalog import open_catalog
from geozarr_pipeline.catalog.static import StaticCatalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import EventType, RegisterDone, Stage, reply_id
from geozarr_pipeline.stac.validate import validation_errors
from tests.fixtures.stac_api import ConvertedStore
from tests.fixtures.visual import map_settings, register
from tests.functions.failures import problem_of

RASTER = "https://raster.example.test/raster"
EVENT_SOURCE = "urn:test:augment"


@dataclass(frozen=True)
class AugmentFunction:
    url: str
    settings: Settings
    registered: RegisterDone

    def item_path(self) -> Path:
        catalog = StaticCatalog(self.settings.catalog_root)
        return catalog.item_path(self.registered.collection, self.registered.item_id)

    def stored(self) -> dict[str, Any]:
        return open_catalog(self.settings).get_item(
            self.registered.collection, self.registered.item_id
        )


@pytest.fixture(scope="module")
def augment_function(
    converted_l2a: ConvertedStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AugmentFunction]:
    work = tmp_path_factory.mktemp("augment-fn")
    settings = map_settings(work, converted_l2a, RASTER)
    registered = register(converted_l2a, settings)
    port = free_port()
    process = ManagedProcess(
        name="augment-function",
        command=function_command("geozarr_augment.main", port),
        log_path=work / "augment.log",
        env={
            "GEOZARR_CATALOG_BACKEND": "static",
            "GEOZARR_CATALOG_ROOT": str(settings.catalog_root),
            "GEOZARR_RASTER_API_URL": RASTER,
        },
    )
    with process.start():
        process.wait_ready(http_ready(f"http://{LOOPBACK}:{port}/"), timeout=60)
        yield AugmentFunction(f"http://{LOOPBACK}:{port}/", settings, registered)


def event(data: dict[str, Any], event_id: str, event_type: str = EventType.REGISTER_DONE) -> Any:
    return CloudEvent(
        {
            "type": str(event_type),
            "source": EVENT_SOURCE,
            "id": event_id,
            "subject": data.get("item_id", ""),
            "datacontenttype": "application/json",
        },
        data,
    )


def post(url: str, cloud_event: Any, mode: str = "binary") -> httpx.Response:
    headers, body = to_binary(cloud_event) if mode == "binary" else to_structured(cloud_event)
    return httpx.post(url, headers=headers, content=body, timeout=60)


def test_register_done_adds_the_map_links_and_replies(augment_function: AugmentFunction) -> None:
    registered = augment_function.registered
    before = augment_function.stored()
    assert not [link for link in before["links"] if link["rel"] in ("viewer", "xyz")]

    response = post(augment_function.url, event(registered.model_dump(), "evt-1"))
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == EventType.AUGMENT_DONE.value
    assert response.headers["ce-source"] == Stage.AUGMENT.event_source
    assert response.headers["ce-subject"] == registered.item_id
    assert response.headers["ce-id"] == reply_id(Stage.AUGMENT, EVENT_SOURCE, "evt-1")
    reply = response.json()
    root = f"{RASTER}/collections/{registered.collection}/items/{registered.item_id}"
    assert reply["viewer_url"] == f"{root}/viewer"
    assert reply["item_id"] == registered.item_id
    assert reply["item_url"] == registered.item_url

    stored = augment_function.stored()
    rels = [link["rel"] for link in stored["links"]]
    for rel in ("viewer", "xyz", "tilejson", "wmts"):
        assert rels.count(rel) == 1
    assert stored["assets"]["thumbnail"]["href"].startswith(f"{root}/preview.png?max_size=512&")
    assert "true-color" in stored["properties"]["renders"]
    assert stored["assets"]["reflectance"] == before["assets"]["reflectance"]
    assert validation_errors(stored) == []


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_redelivery_changes_nothing(augment_function: AugmentFunction, mode: str) -> None:
    registered = augment_function.registered
    first = post(augment_function.url, event(registered.model_dump(), "evt-2"), mode)
    assert first.status_code == 200, first.text
    path = augment_function.item_path()
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns

    again = post(augment_function.url, event(registered.model_dump(), "evt-2"), mode)
    assert again.status_code == 200, again.text
    assert again.headers["ce-id"] == first.headers["ce-id"]
    assert again.json() == first.json()
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime, "an unchanged item is not rewritten"
    stored = json.loads(content)
    assert [link["rel"] for link in stored["links"]].count("xyz") == 1


def test_unknown_item_is_a_permanent_error(augment_function: AugmentFunction) -> None:
    data = {**augment_function.registered.model_dump(), "item_id": f"missing-{uuid.uuid4().hex}"}
    response = post(augment_function.url, event(data, "evt-3"))
    body = problem_of(response)
    assert body["error"] == "source_not_found"
    assert data["item_id"] in body["message"]
    catalog = StaticCatalog(augment_function.settings.catalog_root)
    assert not catalog.item_path(data["collection"], data["item_id"]).exists()


def test_invalid_data_and_wrong_type_are_rejected(augment_function: AugmentFunction) -> None:
    data = {**augment_function.registered.model_dump(), "item_id": "../escape"}
    invalid = post(augment_function.url, event(data, "evt-4"))
    assert "item_id" in problem_of(invalid)["message"]

    wrong = post(
        augment_function.url,
        event(augment_function.registered.model_dump(), "evt-5", EventType.CONVERT_DONE),
    )
    assert EventType.CONVERT_DONE.value in problem_of(wrong)["message"]
