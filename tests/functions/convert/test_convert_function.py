"""The convert function over real HTTP: functions-framework serving the entrypoint."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_local.stack import function_command
from geozarr_pipeline.events import ConvertDone, EventType, Stage, reply_id
from tests.fixtures.sample import SampleServerInfo
from tests.functions.failures import problem_of


@dataclass(frozen=True)
class ConvertFunction:
    url: str
    output_root: Path


@pytest.fixture(scope="module")
def convert_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConvertFunction]:
    root = tmp_path_factory.mktemp("convert-function")
    port = free_port()
    process = ManagedProcess(
        name="geozarr-convert",
        command=function_command("geozarr_convert.main", port),
        log_path=root / "function.log",
        env={
            "GEOZARR_OUTPUT_ROOT": str(root / "geozarr"),
            "GEOZARR_WORK_DIR": str(root / "work"),
            "GEOZARR_ALLOW_PLAIN_HTTP": "true",
            "GEOZARR_ALLOW_PRIVATE_HOSTS": "true",
        },
    )
    url = f"http://{LOOPBACK}:{port}/"
    with process.start():
        process.wait_ready(http_ready(url), timeout=60)
        yield ConvertFunction(url, root / "geozarr")


def post(function: ConvertFunction, data: Any, event_id: str | None = None) -> httpx.Response:
    event = CloudEvent(
        {
            "type": EventType.CONVERT_REQUESTED.value,
            "source": "urn:test:convert-function",
            "id": event_id or str(uuid.uuid4()),
            "datacontenttype": "application/json",
        },
        data,
    )
    headers, body = to_binary(event)
    return httpx.post(function.url, headers=headers, content=body, timeout=600)


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_converts_and_replies_then_redelivery_is_the_same_reply(
    convert_function: ConvertFunction, sample_server: SampleServerInfo
) -> None:
    data = {
        "source_url": sample_server.l2a_item_url,
        "item_id": sample_server.l2a_id,
        "collection": sample_server.l2a.collection,
    }
    event_id = str(uuid.uuid4())
    first = post(convert_function, data, event_id)
    assert first.status_code == 200, first.text
    assert first.headers["ce-type"] == EventType.CONVERT_DONE.value
    assert first.headers["ce-subject"] == sample_server.l2a_id
    assert first.headers["ce-id"] == reply_id(Stage.CONVERT, "urn:test:convert-function", event_id)
    done = ConvertDone.model_validate_json(first.content)
    store = convert_function.output_root / data["collection"] / f"{data['item_id']}.zarr"
    assert Path(done.output_url) == store.resolve()
    assert (store / "zarr.json").is_file()

    started = time.monotonic()
    second = post(convert_function, data, event_id)
    assert time.monotonic() - started < 5
    assert second.status_code == 200
    assert second.headers["ce-id"] == first.headers["ce-id"]
    assert second.content == first.content


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"item_id": "../../escape"}, "item_id"),
        ({"item_id": "a/b"}, "item_id"),
        ({"item_id": "/etc/passwd"}, "item_id"),
        ({"collection": ".."}, "collection"),
        ({"collection": "c/../../x"}, "collection"),
    ],
)
def test_path_escaping_ids_are_refused_and_write_nothing(
    convert_function: ConvertFunction,
    sample_server: SampleServerInfo,
    change: dict[str, str],
    field: str,
) -> None:
    before = stored_files(convert_function.output_root.parent)
    data = {
        "source_url": sample_server.l2a_item_url,
        "item_id": "S2_SAFE",
        "collection": "sentinel-2-l2a",
        **change,
    }
    response = post(convert_function, data)
    body = problem_of(response)
    assert body["error"] == "invalid_input"
    assert field in body["message"]
    assert stored_files(convert_function.output_root.parent) == before


@pytest.mark.parametrize(
    ("source_url", "reason"),
    [
        ("file:///etc/passwd.zarr", "file://"),
        ("ftp://example.org/x.zarr", "scheme 'ftp'"),
        ("https://user:pw@example.org/x.zarr", "credentials"),
    ],
)
def test_refused_sources_are_a_clear_4xx(
    convert_function: ConvertFunction, source_url: str, reason: str
) -> None:
    response = post(convert_function, {"source_url": source_url, "collection": "c"})
    assert reason in problem_of(response)["message"]


def test_missing_item_is_not_retried(
    convert_function: ConvertFunction, sample_server: SampleServerInfo
) -> None:
    url = sample_server.item_url("sentinel-2-l2a", "S2X_DOES_NOT_EXIST")
    response = post(convert_function, {"source_url": url, "collection": "sentinel-2-l2a"})
    assert problem_of(response)["error"] == "source_not_found"


def test_two_concurrent_deliveries_leave_one_valid_store(
    convert_function: ConvertFunction, sample_server: SampleServerInfo
) -> None:
    data = {
        "source_url": sample_server.zarr_url(sample_server.l2a_id),
        "item_id": "S2_CONCURRENT",
        "collection": "sentinel-2-l2a",
    }
    event_id = str(uuid.uuid4())
    responses: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: responses.append(post(convert_function, data, event_id)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=600)
    statuses = sorted(r.status_code for r in responses)
    assert statuses in ([200, 200], [200, 409]), [r.text for r in responses]
    bodies = {r.content for r in responses if r.status_code == 200}
    assert len(bodies) == 1
    done = ConvertDone.model_validate_json(bodies.pop())
    store = Path(done.output_url)
    assert (store / "zarr.json").is_file()
    assert (store.parent / f"{store.name}.done.json").is_file()
    final = post(convert_function, data, event_id)
    assert final.status_code == 200
    assert ConvertDone.model_validate_json(final.content) == done
